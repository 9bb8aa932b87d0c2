"""`python -m hubctl.cli`: the `hubctl` command."""

from hubctl.cli.main import main

raise SystemExit(main())
