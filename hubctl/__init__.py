"""hubctl: the controller that turns a business park into an energy hub."""

__version__ = "0.1.0"
