# mcache — see README.md. Everything runs as root on Debian bookworm.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV    := $(CURDIR)/.venv
BIN     := $(VENV)/bin
PY      := $(BIN)/python
HOSTS   ?= 3
INIT    ?= plain
BMC     ?=
LAB     := $(CURDIR)/lab/lab.sh
INV     := inventory/lab

# the venv's tools (ansible-*, ruff, pytest, mcache-agent) first
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: help setup test lint lab-up lab-down demo bench bench-quick clean

help:
	@echo "make setup            install system packages and the venv (idempotent)"
	@echo "make test             setup, lint, then pytest -q tests"
	@echo "make lint             ruff check . and ansible-lint"
	@echo "make lab-up HOSTS=N [INIT=systemd]  bring up the lab fleet (1..30 hosts, default 3)"
	@echo "make lab-down         tear the lab fleet down"
	@echo "make demo             a fresh lab fleet, canary deploy, fleet status"
	@echo "make bench            benchmarks (bench/run.py); bench-quick: a short run"
	@echo "make bench BMC=DIR    ... with round D, BMC the peer system, from DIR (built there"
	@echo "                      by /work/shared/peers/bmc/build.sh when missing); bench-quick too"
	@echo "make clean            remove the venv, caches and build output"

setup:
	@bash scripts/setup.sh

lint: setup
	$(BIN)/ruff check .
	@if find roles playbooks -name '*.yml' -o -name '*.yaml' 2>/dev/null | grep -q .; then \
		echo "$(BIN)/ansible-lint --offline"; \
		$(BIN)/ansible-lint --offline; \
	else \
		echo "ansible-lint: roles/ and playbooks/ are empty, nothing to lint"; \
	fi

test: setup lint
	@rc=0; $(BIN)/pytest -q tests || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

lab-up: setup
	@INIT=$(INIT) $(LAB) up $(HOSTS)

lab-down:
	@$(LAB) down

# A fresh lab every time: whatever an earlier run left on the hosts (other versions, another
# release) would make the demo about that instead.
demo: setup
	@$(LAB) down
	@INIT=$(INIT) $(LAB) up $(HOSTS)
	$(BIN)/ansible-playbook -i $(INV) playbooks/canary.yml
	$(BIN)/ansible-playbook -i $(INV) playbooks/status.yml
	@echo "--- mc-lab-1: a key set over TCP, read twice over UDP; the 2nd read served by the kernel:"
	@$(LAB) exec 1 -- /opt/mcache/venv/bin/mcache-agent probe --json
	@$(LAB) exec 1 -- /opt/mcache/venv/bin/mcache-agent status

# BMC=DIR: also round D, BMC the peer system (bench/run.py --peer-bmc DIR).
BENCH_PEER := $(if $(BMC), --peer-bmc $(BMC))

# The fleet part (bench/fleet.py) takes the lab fleet over: lab-down first and at the end.
bench: setup
	$(PY) bench/run.py --fleet$(BENCH_PEER)

bench-quick: setup
	$(PY) bench/run.py --quick$(BENCH_PEER)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
