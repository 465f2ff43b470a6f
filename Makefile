# iotguard: `sudo make test` and `sudo make demo` are the two commands a newcomer needs.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST  := $(PY) -m pytest
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help provision ryu test unit integration demo bench clean

help:
	@echo "make provision   install Debian packages, start Open vSwitch, create $(VENV) (root)"
	@echo "make test        provision, then run every test: unit, Mininet integration, Ryu smoke (root)"
	@echo "make unit        unit tests only (no root, no switch)"
	@echo "make demo        controller + smart_home + a minute of benign traffic, then the device table (root)"
	@echo "make bench       flow-stats benchmark: os-ken's parse vs iotguard's stats path;"
	@echo "                 as root also alert -> rules confirmed on OVS (bench/response_bench.py)"

provision:
	bash vagrant/provision.sh

ryu: provision
	bash vagrant/install-ryu.sh

test: provision ryu
	$(PYTEST) -v -rs tests

unit:
	$(PYTEST) -q tests/unit

integration: provision ryu
	$(PYTEST) -v -rs tests/integration

demo: provision
	$(PY) -m topologies.demo

bench:
	$(PY) bench/stats_bench.py
	@if [ "$$(id -u)" = 0 ]; then $(PY) bench/response_bench.py; \
	else echo "bench/response_bench.py skipped: needs root and Open vSwitch"; fi

clean:
	rm -rf .pytest_cache build *.egg-info
