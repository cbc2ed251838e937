"""Fixtures that start real servers on loopback; every process is stopped in teardown."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest

from final_problem.local import limits, powercut, wait_for
from final_problem.local.postgres import LocalPostgres, LocalPostgresError
from final_problem.local.redis import HOST, LocalRedisSet, local_options
from final_problem.local.zookeeper import LocalEnsemble
from final_problem.local.zookeeper import missing_binaries as zookeeper_missing
from final_problem.config import Settings
from final_problem.local.kube import ControlPlaneError, KubePlatform, missing_binaries, platform
from tests.conftest import full_settings, require_binary

#: Sentinel timing of the local sets (final_problem.local.redis.local_options): the chart's
#: down-after, the shortest failover timeout the chart accepts with it, a 1 s first-boot wait.
REDIS_OPTIONS = local_options()
REDIS_DOWN_AFTER_MS = REDIS_OPTIONS.down_after_ms
REDIS_FAILOVER_TIMEOUT_MS = REDIS_OPTIONS.failover_timeout_ms
#: Set to replay a randomised test with the seed it printed.
SEED_VARIABLE = "FINAL_PROBLEM_TEST_SEED"


@pytest.fixture(scope="session", autouse=True)
def servers_run_under_their_limits() -> None:
    """Every real server here runs under its pod's CPU and memory limits (cgroups): without
    root or the controllers the tests fail, in one line, instead of running servers
    unbounded. Groups left by an interrupted earlier run are removed first."""
    try:
        limits.require()
    except limits.LimitsUnavailable as e:
        pytest.fail(str(e))
    limits.sweep()


@pytest.fixture(autouse=True)
def no_server_killed_for_memory(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: no server of any launcher was OOM-killed by the kernel under its
    limit (a heap OutOfMemoryError is each launcher's own check), unless the test is marked
    ``oom_expected``."""
    yield
    killed = [g for g in limits.created if g.oom_kills() and id(g) not in _REPORTED]
    _REPORTED.update(id(g) for g in killed)
    if request.node.get_closest_marker("oom_expected") is None:
        assert not killed, "OOM-killed under the pod's memory limit: " + "; ".join(
            f"{g.name} ({g.limits}): {g.oom_kills()}" for g in killed)


#: Groups whose OOM kills a test already reported (or expected).
_REPORTED: set[int] = set()


@pytest.fixture(scope="module")
def redis_binaries() -> None:
    for binary, package in (("redis-server", "redis-server"), ("redis-sentinel", "redis-sentinel"), ("redis-cli", "redis-tools")):
        require_binary(binary, package)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A random generator whose seed is printed (shown with a failure) and can be replayed
    with FINAL_PROBLEM_TEST_SEED=<seed>."""
    seed = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(2**32))
    print(f"{request.node.name}: seed {seed} (replay: {SEED_VARIABLE}={seed})")
    return random.Random(seed)


@pytest.fixture
def zookeeper_ensemble(tmp_path: Path) -> Iterator[LocalEnsemble]:
    """Three ZooKeeper members from the renderer's zoo.cfg, in quorum; killed afterwards."""
    if missing := zookeeper_missing():
        pytest.fail(f"missing {', '.join(missing)}")
    ensemble = LocalEnsemble(workdir=tmp_path / "zookeeper")
    try:
        ensemble.start_all()
        try:
            ensemble.wait_for_quorum(timeout=30)
        except Exception:
            logs = "\n".join(f"--- member {i}\n{ensemble.log(i)[-2000:]}" for i in ensemble.procs)
            pytest.fail(f"the ensemble did not form a quorum:\n{logs}")
        yield ensemble
        heap = [i for i in ensemble.procs if "OutOfMemoryError" in ensemble.log(i)]
        assert not heap, f"members {heap} ran out of heap under their limits"
    finally:
        ensemble.close()


def require_power_cut() -> None:
    """Fail (never skip) with one line when this host cannot run the power-cut harness."""
    problems = powercut.missing()
    if problems:
        pytest.fail(f"the power-cut harness needs {', '.join(problems)}: run the tests as root after `sudo make system-deps`")


@pytest.fixture
def power_strip(tmp_path: Path) -> Iterator[powercut.PowerStrip]:
    """An XFS store for node disks that lose power together (final_problem.local.powercut).
    Request it before the servers' fixtures: it is torn down after them, once nothing
    holds a disk, and unmounts and removes everything it made."""
    require_power_cut()
    with powercut.PowerStrip(tmp_path / "power") as strip:
        yield strip


@pytest.fixture
def postgres_server() -> Iterator[LocalPostgres]:
    """A fresh PostgreSQL (Debian's package) on a free loopback port; stopped and removed afterwards."""
    try:
        server = LocalPostgres()
    except LocalPostgresError as e:
        pytest.fail(str(e))
    with server:
        yield server


@contextmanager
def kube_platform(workdir: Path, settings: Settings, profile: str, **options: Any) -> Iterator[KubePlatform]:
    """:func:`final_problem.local.kube.platform`, failing the test (never skipping) with the
    servers' logs when the control plane cannot run here."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make kube-binaries` (Go 1.26 builds them)")
    require_binary("openssl", "openssl")
    with ExitStack() as stack:
        try:
            started = stack.enter_context(platform(workdir, settings, profile, **options))
        except ControlPlaneError as e:
            pytest.fail(f"the control plane did not start: {e}")
        yield started


@pytest.fixture(scope="session", params=["eks", "pi"])
def kube(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubePlatform]:
    """Every component of one profile applied to a real control plane, once per profile
    (pytest runs one profile's tests, then the other's: one control plane at a time)."""
    with kube_platform(tmp_path_factory.mktemp(f"kube-{request.param}"), full_settings(), request.param) as platform:
        platform.wait_for_pods(bound=True)
        yield platform


def assert_within_headroom(usage: Iterable[limits.Usage], container: str, *, charged: bool = False,
                           gc_pauses_ms: Iterable[float] = ()) -> None:
    """Each server of ``usage`` kept the headroom final_problem/sizes.py states for
    ``container`` below its memory limit at its peak (its resident set, or with ``charged``
    what its cgroup was charged: for servers whose processes share memory), no process was
    OOM-killed, and the JVM's GC pauses (when given) stay below the stated p99."""
    from final_problem import sizes

    usage = list(usage)
    assert usage, f"no {container} server ran"
    for u in usage:
        peak = u.peak_memory_mib if charged else u.peak_rss_mib
        bound = u.limits.memory_mib - sizes.headroom_mib(container, u.limits.memory_mib)
        assert u.oom_kills == 0, str(u)
        assert 0 < peak <= bound, f"{container}: peak {peak:.0f} MiB over {bound:.0f} (limit less headroom): {u}"
    pauses = sorted(gc_pauses_ms)
    if pauses:
        p99 = pauses[min(len(pauses) - 1, int(0.99 * len(pauses)))]
        assert p99 <= sizes.GC_PAUSE_P99_MS, f"{container}: GC pause p99 {p99:.0f} ms over {sizes.GC_PAUSE_P99_MS}"


def fill_to_maxmemory(cluster: LocalRedisSet, port: int, maxmemory_mib: int) -> None:
    """bench/sizes.py's Redis load: the primary filled with 1 KiB values until writes fail at
    maxmemory (``volatile-lru`` evicts no key without a TTL), replicas following, then an AOF
    rewrite forked at full memory: the peak its limit of twice maxmemory is for."""
    # Random keys out of twice as many as fit: about 86% distinct, more than maxmemory holds.
    keys = 2 * maxmemory_mib * 1024 * 1024 // 1100
    subprocess.run([shutil.which("redis-benchmark") or "redis-benchmark", "-h", HOST, "-p", str(port), "--user", "app",
                    "-a", cluster.passwords.app, "-t", "set", "-n", str(keys), "-r", str(keys), "-d", "1024", "-P", "32",
                    "-q"], capture_output=True, timeout=300, check=False)
    admin = cluster.admin(cluster.member_index(port))
    used = int(admin.info("memory")["used_memory"]) / 2**20
    assert used > maxmemory_mib * 0.9, f"filled only {used:.0f} of {maxmemory_mib} MiB"
    if not admin.info("persistence")["aof_rewrite_in_progress"]:
        admin.bgrewriteaof()
    wait_for("the AOF rewrite", lambda: not admin.info("persistence")["aof_rewrite_in_progress"]
             and not admin.info("persistence")["aof_rewrite_scheduled"], timeout_s=120, interval_s=0.5)
    # Every connected replica holds the whole set too (a full sync loads it beside the old one).
    def replicas_online() -> bool:
        info = admin.info("replication")
        replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return bool(replicas) and all(r.get("state") == "online" and r.get("offset") == info["master_repl_offset"]
                                      for r in replicas)
    wait_for("the replicas to catch up", replicas_online, timeout_s=120, interval_s=0.5)


def snapshot_metric(component: str, name: str, **labels: str) -> str:
    """A snapshot sidecar's metric series as it is scraped: ``name`` with the component's labels."""
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return f'final_problem_backup_{name}{{component="{component}",kind="snapshot"{extra}}}'


def assert_set_wide_freshness(client: Any, component: str, scraped: dict[str, dict[str, float]]) -> None:
    """The member that took the snapshot counted its upload, and one that declined (it uploaded
    nothing) reports the same newest snapshot, read from the bucket: the set's freshness."""
    from final_problem.renderers.backup_agent import parse_time

    age, last = snapshot_metric(component, "age_seconds"), snapshot_metric(component, "last_success_timestamp_seconds")
    uploaded, failed = (snapshot_metric(component, "uploads_total", result=r) for r in ("success", "failure"))
    (listing_key,) = [k for k in client.list(f"{component}/snapshots/") if k.endswith("/snapshot.json")]
    ended = parse_time(json.loads(client.get(listing_key)[1])["ended"]).timestamp()
    taker, decliner = scraped["taker"], scraped["decliner"]
    # The taker's age was scraped just after its upload, so it is small.
    assert (taker[uploaded], taker[failed]) == (1, 0), taker
    assert taker[age] < 10 and abs(taker[last] - ended) < 1, taker
    assert (decliner[uploaded], decliner[failed]) == (0, 0), decliner
    assert age in decliner and decliner[age] < 10, decliner
    assert decliner[last] == pytest.approx(ended, abs=0.001), decliner


def chown_tree(path: Path, user: str) -> None:
    """``path`` and everything under it owned by ``user`` (the server's user, as a pod's fsGroup
    would make its volume)."""
    import pwd

    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.chown(name, entry.pw_uid, entry.pw_gid)


def archiving_postgres(stack: ExitStack, prefix: str) -> tuple[Any, Path, Path, Any, LocalPostgres]:
    """A real S3 server (versitygw) and PostgreSQL on a volume of its own, archiving to it through
    the chart's backup sidecar: ``(s3, work, volume, backups, server)``, all closed by ``stack``.
    ``work``, named from ``prefix``, lies outside pytest's temporary directory (root's only), so
    the server's user reaches it."""
    import tempfile

    from final_problem.local.backup import LocalPostgresBackups
    from final_problem.local.s3 import LocalS3, LocalS3Error

    try:
        s3 = stack.enter_context(LocalS3())
    except LocalS3Error as e:
        pytest.fail(str(e))
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(work, 0o755)
    stack.callback(shutil.rmtree, work, True)
    volume = work / "volume"
    volume.mkdir()
    backups = LocalPostgresBackups(s3=s3, volume=volume, workdir=work)
    server = LocalPostgres(data_dir=backups.pgdata, overrides=backups.server_overrides())
    stack.callback(server.close)
    if server.run_as:
        chown_tree(volume, server.run_as)
    server.init()
    server.start()
    backups.start_agent(server)
    stack.callback(backups.close)
    return s3, work, volume, backups, server
