# Two commands for a fresh machine (see README):
#   make demo   installs what it needs and runs the main job
#   make test   installs what it needs and runs ruff, mypy --strict and pytest
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
# Debian packages the tests and the demo need; installed only when missing.
# mosquitto: the real broker the MQTT tests start on a free loopback port;
# victoria-metrics: the InfluxDB-v2-write-API server the time-series tests start;
# systemd: systemd-analyze, to verify the unit file and score its hardening;
# libfaketime: the real-time service tests run `hubctl run` on a faked wall clock (LD_PRELOAD).
APT_PACKAGES := python3-venv mosquitto victoria-metrics systemd libfaketime chromium chromium-driver
SCENARIO ?= configs/scenarios/demo-park/scenario.yaml
DEMO_OUT ?= out/demo

.PHONY: demo demo-sim test lint typecheck pytest bench clean system-packages

$(BIN)/.installed: pyproject.toml
	@scripts/ensure-apt.sh $(APT_PACKAGES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

system-packages:
	@scripts/ensure-apt.sh $(APT_PACKAGES)

# the gateway service (`hubctl run`) against a simulated park over real Modbus TCP, a private
# mosquitto, a live view and a KPI table (4.5 minutes; `hubctl demo --help` for the options)
demo: $(BIN)/.installed
	$(BIN)/hubctl demo

# the same controller over the whole bundled park day in simulated time (about 15 s), with KPIs
demo-sim: $(BIN)/.installed
	$(BIN)/hubctl sim --scenario $(SCENARIO) --out $(DEMO_OUT) --progress

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy hubctl simulators tests bench

# the packages are checked on every run too (a dpkg query, no apt-get when all are there): a venv
# built before a package joined the list must not make its tests skip
pytest: $(BIN)/.installed system-packages
	HUBCTL_SHARED=$(abspath $(SHARED)) $(BIN)/pytest -q

test: lint typecheck pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/sim_speed.py
	$(BIN)/python bench/poll.py
	$(BIN)/python bench/influx.py
	$(BIN)/python bench/mqtt_latency.py
	$(BIN)/python bench/controller_days.py
	$(BIN)/python bench/gateway.py

clean:
	rm -rf $(VENV) out .mypy_cache .ruff_cache .pytest_cache .hypothesis
