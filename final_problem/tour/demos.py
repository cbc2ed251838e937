"""The nine concepts, each a short narrated run against the platform.

Every demo is one part per component it shows, each taking a :class:`Context` (endpoints,
and on ``--local`` the processes it may disturb) and recording :class:`Step`s: what was
done, what was observed and whether that is what the concept predicts. A part whose
component was not given or does not answer (:func:`preflight`) is skipped with the reason,
so a demo runs for the components there are. Demos that need a fault (a killed leader, a lost primary) run
the fault only where the tour started the servers itself (``--local``); against a live
platform they show the same state without disturbing it, and say so.

``docs/CONCEPTS.md`` explains each one and names the test that proves it on real servers.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from final_problem.clients import DEFAULT_TIMEOUT_S, ClientError, short
from final_problem.tour.discovery import DiscoveryError, Endpoints


@dataclass
class Step:
    """One narrated observation."""

    action: str
    observed: str
    ok: bool = True
    #: Not run: its component was not given or did not answer (``observed`` says which).
    skipped: bool = False


@dataclass
class Report:
    concept: str
    component: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    @property
    def ran(self) -> bool:
        """Whether any part ran (not all were skipped)."""
        return any(not s.skipped for s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {"concept": self.concept, "component": self.component, "ok": self.ok,
                "steps": [asdict(s) for s in self.steps]}


@dataclass
class Context:
    endpoints: Endpoints
    #: The local servers (``--local``), which demos may kill and restart; None on a live platform.
    local: Any = None
    say: Callable[[str], None] = print
    #: Components the demos skip, with the reason (:func:`preflight`).
    unavailable: dict[str, str] = field(default_factory=dict)
    #: Seconds a request to a live platform may take (``--timeout``).
    timeout_s: float = DEFAULT_TIMEOUT_S

    def step(self, report: Report, action: str, observed: str, ok: bool = True) -> None:
        report.steps.append(Step(action=action, observed=observed, ok=ok))
        self.say(f"  {'✓' if ok else '✗'} {action}: {observed}")


Part = Callable[[Context, Report], None]


@dataclass(frozen=True)
class Demo:
    """One concept: a summary and the parts that show it, each on one component."""

    concept: str
    summary: str
    #: ``(component, part)`` in the order they run.
    parts: tuple[tuple[str, Part], ...]

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(component for component, _ in self.parts))

    @property
    def component(self) -> str:
        return ", ".join(self.components)


DEMOS: dict[str, Demo] = {}


def demo(concept: str, summary: str, *parts: tuple[str, Part]) -> None:
    DEMOS[concept] = Demo(concept=concept, summary=summary, parts=parts)


def run(concept: str, ctx: Context) -> Report:
    """Run every part of ``concept`` whose component is there; a part that fails is one
    ``✗`` step saying why, and the parts after it still run."""
    d = DEMOS[concept]
    report = Report(concept=concept, component=d.component)
    ctx.say(f"{concept} ({d.component}): {d.summary}")
    for component, part in d.parts:
        if component in ctx.unavailable:
            if not any(s.skipped and s.action == component for s in report.steps):
                report.steps.append(Step(action=component, observed=f"skipped: {ctx.unavailable[component]}", skipped=True))
                ctx.say(f"  - {component} skipped: {ctx.unavailable[component]}")
            continue
        try:
            part(ctx, report)
        except Exception as e:  # noqa: BLE001 - one part that cannot run is reported, the rest go on
            if isinstance(e, ModuleNotFoundError):
                raise  # a missing client library: one line for the whole command
            ctx.step(report, f"{component}: could not run", describe(e), False)
    ran = report.ran
    ctx.say(f"  -> {'as the concept predicts' if report.ok and ran else 'NOT as expected' if ran else 'skipped'}")
    return report


def describe(error: BaseException) -> str:
    """An error as one line: a client's own message, else the type and its first line."""
    return short(error) if isinstance(error, ClientError) else f"{type(error).__name__}: {short(error)}"


def preflight(endpoints: Endpoints, components: Iterable[str], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, str]:
    """The components of ``components`` a demo cannot reach, each with why: no address
    (not given, not deployed) or no address of it accepting a TCP connection within
    ``timeout_s``. All addresses are tried at once, so this takes at most one timeout."""
    unavailable: dict[str, str] = {}
    addresses: dict[str, list[str]] = {}
    for component in components:
        try:
            addresses[component] = [a.strip() for a in endpoints.get(component).split(",") if a.strip()]
        except DiscoveryError as e:
            unavailable[component] = str(e).removeprefix(f"{component}: ")

    def probe(address: str) -> str | None:
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s):
                return None
        except socket.timeout:
            return f"{address} no answer within {timeout_s:g} s"
        except (OSError, ValueError) as e:
            return f"{address} {getattr(e, 'strerror', None) or e}"

    every = [(c, a) for c, found in addresses.items() for a in found]
    with ThreadPoolExecutor(max_workers=max(1, len(every))) as pool:
        results = dict(zip(every, pool.map(lambda ca: probe(ca[1]), every), strict=True))
    for component, found in addresses.items():
        reasons = [results[(component, a)] for a in found]
        if found and all(reasons):
            unavailable[component] = f"nothing answers ({'; '.join(r for r in reasons if r)})"
        elif not found:
            unavailable[component] = "no address given"
    return unavailable


# --- helpers ------------------------------------------------------------------------------

#: ZooKeeper request timeout on the local servers: the demos there restart members and wait
#: for elections, which take longer than a request to a live ensemble (``--timeout``).
LOCAL_ZOOKEEPER_TIMEOUT_S = 10.0


def _zk(ctx: Context, hosts: str | None = None, timeout: float | None = None) -> Any:
    from final_problem.clients.zookeeper import ZooKeeperClient

    if timeout is None:
        timeout = LOCAL_ZOOKEEPER_TIMEOUT_S if ctx.local is not None else ctx.timeout_s
    return ZooKeeperClient(hosts=hosts or ctx.endpoints.get("zookeeper"), timeout=timeout).start()


def _members(ctx: Context) -> list[str]:
    return [h.strip() for h in ctx.endpoints.get("zookeeper").split(",") if h.strip()]


def _redis(ctx: Context) -> Any:
    from final_problem.clients.redis import RedisClient, RedisSettings

    env = {**__import__("os").environ, **ctx.endpoints.env, "REDIS_SENTINELS": ctx.endpoints.get("redis")}
    settings = RedisSettings.from_env(env)
    if ctx.local is None:
        settings = RedisSettings(**{**settings.__dict__, "connect_timeout_s": ctx.timeout_s})
    return RedisClient(settings=settings)


def _kafka(ctx: Context) -> Any:
    from final_problem.clients.kafka import KafkaSettings

    env = {**__import__("os").environ, **ctx.endpoints.env, "KAFKA_BOOTSTRAP_SERVERS": ctx.endpoints.get("kafka")}
    if ctx.local is None:
        return KafkaSettings.from_env(env, connect_timeout_s=ctx.timeout_s)
    return KafkaSettings.from_env(env)


def _kafka_topic(settings: Any, partitions: int) -> str:
    from final_problem.clients.kafka import admin
    from final_problem.clients.kafka_topics import TopicSpec, reconcile

    name = f"tour-{uuid.uuid4().hex[:8]}"
    a = admin(settings)
    try:
        reconcile(a, [TopicSpec(name=name, partitions=partitions, replication_factor=3)])
    finally:
        a.close()
    return name


def _mode(address: str) -> str | None:
    from final_problem.clients.zookeeper import server_mode

    host, _, port = address.rpartition(":")
    return server_mode(host=host, port=int(port))


# --- the parts of the nine concepts -----------------------------------------------------------

def _zookeeper_consistency(ctx: Context, report: Report) -> None:
    path, value = f"/final-problem/tour/consistency-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex.encode()
    with _zk(ctx) as writer:
        version = writer.put(path, value)
        ctx.step(report, f"write {path} through one session", f"acknowledged by a quorum (version {version})")
    for member in _members(ctx):
        with _zk(ctx, hosts=member) as reader:
            got = reader.get(path, linearizable=True)
        ctx.step(report, f"sync + read from member {member}", "same value" if got == value else f"different value {got!r}", got == value)


def _redis_consistency(ctx: Context, report: Report) -> None:
    client = _redis(ctx)
    try:
        key = f"final-problem:tour:{uuid.uuid4().hex[:8]}"
        client.primary.set(key, "v1")
        lagged = client.get(key)
        ctx.step(report, "Redis SET on the primary, GET at once from a replica",
                 f"replica answered {lagged!r} (asynchronous replication: it may lag; no error either way)")
        acknowledged = client.set_durable(key, "v2", replicas=1)
        seen = client.get(key)
        ctx.step(report, "SET + WAIT 1, then GET from a replica",
                 f"{acknowledged} replica(s) acknowledged; replica answered {seen!r}", acknowledged >= 1)
    finally:
        client.close()


def _redis_availability(ctx: Context, report: Report) -> None:
    client = _redis(ctx)
    try:
        key = "final-problem:tour:availability"
        client.set_durable(key, "before", replicas=1)
        primary = client.primary_address()
        ctx.step(report, "write through the primary", f"primary is {primary[0]}:{primary[1]}")
        if ctx.local is None:
            ctx.step(report, "read from a replica", f"{client.get(key)!r} (live platform: no fault injected)")
            return
        redis_set = ctx.local.redis
        index = redis_set.member_index(primary[1])
        redis_set.kill_member(index)
        started = time.monotonic()
        read = client.get(key)
        ctx.step(report, "primary killed; read from a replica at once", f"{read!r}", read == "before")
        client.set_durable(key, "after", replicas=1)
        ctx.step(report, "write again (the client asks the Sentinels for the new primary)",
                 f"accepted after {time.monotonic() - started:.1f} s by {client.primary_address()[1]}")
        redis_set.start_member(index)
        # Sentinel turns the restarted member into a replica of the new primary; wait for
        # every replica's link so the demos after this one start from a whole set.
        primary_port = redis_set.wait_settled()
        ctx.step(report, "restart the old primary",
                 f"it rejoined as a replica; {len(redis_set.members) - 1} replicas follow {primary_port}")
    finally:
        client.close()


def _sentinel_partition(ctx: Context, report: Report) -> None:
    """Two of the three Sentinels stopped (with --local): the one left is a minority, below
    the quorum of 2 that must agree the primary is down and the majority that must elect a
    leader to fail over, so it promotes nobody, even with the primary dead. With the others
    back, the majority fails over."""
    import redis

    def ckquorum(sentinel: Any) -> str:
        try:
            answer = sentinel.execute_command("SENTINEL", "CKQUORUM", name)
            return answer.decode() if isinstance(answer, bytes) else str(answer)
        except redis.ResponseError as e:
            return str(e)

    client = _redis(ctx)
    try:
        name = client.settings.master_name
        if ctx.local is None:
            verdict = ckquorum(client.sentinel.sentinels[0])
            ctx.step(report, "ask a Sentinel whether a failover could be authorised", verdict, verdict.startswith("OK"))
            ctx.step(report, "partition", "not injected on a live platform: run with --local to cut a minority off")
            return
        redis_set = ctx.local.redis
        old_port = client.primary_address()[1]
    finally:
        client.close()
    lone, *others = range(len(redis_set.sentinels))
    member = redis_set.member_index(old_port)
    for index in others:
        redis_set.kill_sentinel(index)
    redis_set.kill_member(member)
    # Long enough for a failover if one could happen: down-after, then an election. The
    # Sentinel left counts the others as usable until they too are down for down-after.
    wait_s = 4 * redis_set.options.down_after_ms / 1000
    time.sleep(wait_s)
    verdict = ckquorum(redis_set.sentinel_admin(lone))
    named = redis_set.primary_by_sentinel(lone)
    ctx.step(report, f"stop Sentinels {others}, then kill the primary ({old_port})",
             f"the Sentinel left says {verdict!r}; {wait_s:.0f} s later "
             f"it still names {named[1] if named else None}: no promotion on a minority",
             verdict.startswith("NOQUORUM") and named is not None and named[1] == old_port)
    for index in others:
        redis_set.spawn_sentinel(index)
    new_port, took = redis_set.wait_new_primary(old_port, timeout_s=60)
    ctx.step(report, "bring the Sentinels back", f"the majority promoted {new_port} in {took:.1f} s")
    # The old primary comes back as a replica, so later demos start from a whole set.
    redis_set.start_member(member)
    redis_set.wait_settled()
    for index in range(len(redis_set.sentinels)):
        redis_set.wait_sentinel_ready(index, timeout_s=60)


def _kafka_partition(ctx: Context, report: Report) -> None:
    """Two of the three Kafka nodes stopped (with --local: the Pi layout, each a voter and a
    broker): the survivor is a minority of the controller quorum and of each partition's
    replicas, and an acks=all write is not acknowledged; with the others back it is."""
    from kafka.errors import KafkaError

    from final_problem.clients.kafka import KafkaClientError, describe, produce

    settings = _kafka(ctx)
    if ctx.local is None:
        quorum = describe(settings)
        ctx.step(report, "ask the Kafka controller quorum for its voters",
                 f"voters {quorum['voters']}, leader {quorum['active_controller']}")
        ctx.step(report, "partition", "not injected on a live platform: run with --local to cut a minority off")
        return
    cluster = ctx.local.kafka
    topic = _kafka_topic(settings, partitions=1)
    down = cluster.broker_ids[1:]
    for node in down:
        cluster.kill(node)
    try:
        produce(settings, topic, [b"minority"], timeout_s=12, delivery_timeout_ms=8_000, request_timeout_ms=3_000)
        ctx.step(report, f"stop Kafka nodes {down}; acks=all write on the one left", "acknowledged (would diverge!)", False)
    except (KafkaClientError, KafkaError) as e:  # a send with no leader to take it times out
        ctx.step(report, f"stop Kafka nodes {down}; acks=all write on the one left",
                 f"not acknowledged within 12 s ({str(e).removeprefix(f'write to {topic} not acknowledged: ')[:120]})")
    finally:
        for node in down:
            cluster.start(node)
    cluster.wait_healthy([topic])
    produce(settings, topic, [b"healed"], timeout_s=60)
    ctx.step(report, "bring them back and write again", "acknowledged by all three replicas")


def _zookeeper_partition(ctx: Context, report: Report) -> None:
    from final_problem.clients.zookeeper import ZooKeeperUnavailable

    members = _members(ctx)
    if ctx.local is None:
        modes = {m: _mode(m) for m in members}
        ctx.step(report, "ask every member for its mode", ", ".join(f"{m}={v or 'not serving'}" for m, v in modes.items()),
                 all(modes.values()))
        ctx.step(report, "partition", "not injected on a live platform: run with --local to cut a minority off")
        return
    ensemble = ctx.local.zookeeper
    survivor = next(iter(ensemble.procs))
    others = [i for i in ensemble.procs if i != survivor]
    for myid in others:
        ensemble.kill(myid)
    address = ensemble.client_address(survivor)
    # The survivor notices at once when it followed a killed leader (the connection drops), and
    # a leader after syncLimit ticks without a quorum of followers: wait that long, and more.
    deadline = time.monotonic() + 10
    while (mode := _mode(address)) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    ctx.step(report, f"cut member {survivor} off from the other {len(others)}", f"its mode is now {mode!r}",
             mode is None)
    try:
        with _zk(ctx, hosts=address, timeout=3) as minority:
            minority.put("/final-problem/tour/partition", b"x")
        ctx.step(report, "write on the minority side", "accepted (would diverge!)", False)
    except ZooKeeperUnavailable as e:
        ctx.step(report, "write on the minority side", f"refused: {e}")
    for myid in others:
        ensemble.start(myid)
    with _zk(ctx, timeout=30) as healed:
        healed.put("/final-problem/tour/partition", b"healed")
    ctx.step(report, "heal the partition and write again", "accepted by the restored quorum")


def _redis_scalability(ctx: Context, report: Report) -> None:
    client = _redis(ctx)
    try:
        client.set_durable("final-problem:tour:scale", "x", replicas=1)
        n = 300
        started = time.perf_counter()
        for _ in range(n):
            client.get("final-problem:tour:scale")
        rate = n / (time.perf_counter() - started)
        replicas = len(client.sentinel.discover_slaves(client.settings.master_name))
        ctx.step(report, f"{n} reads through the replica pool", f"{rate:,.0f} reads/s from one client; {replicas} replicas share the load")
    finally:
        client.close()


def _zookeeper_scalability(ctx: Context, report: Report) -> None:
    with _zk(ctx) as zk:
        started = time.perf_counter()
        for i in range(50):
            zk.put("/final-problem/tour/scale", str(i).encode())
        writes = 50 / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(200):
            zk.get("/final-problem/tour/scale")
        reads = 200 / (time.perf_counter() - started)
    ctx.step(report, "ZooKeeper: 50 writes, 200 local reads",
             f"{writes:,.0f} writes/s (each through the leader and a quorum) vs {reads:,.0f} reads/s (served by the member)",
             reads > writes)


def _kafka_consensus(ctx: Context, report: Report) -> None:
    from final_problem.clients.kafka import describe

    settings = _kafka(ctx)
    quorum = describe(settings)
    ctx.step(report, "ask the Kafka controller quorum (KRaft) for its leader",
             f"controller {quorum['active_controller']} leads voters {quorum['voters']} "
             "(its failover is proven by tests/integration/test_kafka_cluster.py)",
             quorum["active_controller"] in quorum["voters"])
    name = _kafka_topic(settings, partitions=1)
    ctx.step(report, "change metadata through the quorum (create a topic)", f"{name} created")


def _zookeeper_consensus(ctx: Context, report: Report) -> None:
    modes = {m: _mode(m) for m in _members(ctx)}
    leaders = [m for m, v in modes.items() if v == "leader"]
    ctx.step(report, "ask every member for its mode", ", ".join(f"{m}={v or 'not serving'}" for m, v in modes.items()),
             len(leaders) == 1)
    if ctx.local is None or len(leaders) != 1:
        return
    ensemble = ctx.local.zookeeper
    old = next(i for i in ensemble.procs if ensemble.client_address(i) == leaders[0])
    ensemble.kill(old)
    started = time.monotonic()
    new: list[str] = []
    while time.monotonic() - started < 30 and not new:
        new = [ensemble.client_address(i) for i in ensemble.running() if _mode(ensemble.client_address(i)) == "leader"]
        time.sleep(0.1)
    ctx.step(report, f"kill the leader ({leaders[0]})",
             f"{new[0]} elected in {time.monotonic() - started:.1f} s" if new else "no new leader in 30 s", bool(new))
    ensemble.start(old)


def _kafka_group(ctx: Context, report: Report) -> None:
    from final_problem.clients.kafka import group_demo

    settings = _kafka(ctx)
    topic = _kafka_topic(settings, partitions=6)
    result = group_demo(settings, topic, consumers=3, records=300, group_id=f"tour-{topic}")
    owned = [set(p) for p in result.assignments.values()]
    disjoint = sum(len(p) for p in owned) == len(set().union(*owned)) == 6
    ctx.step(report, "3 consumers of one group read a 6-partition topic while 300 records are written",
             "partitions " + ", ".join(f"consumer {i}: {p}" for i, p in result.assignments.items())
             + f"; {sum(result.consumed.values())} of {result.produced} records processed",
             disjoint and sum(result.consumed.values()) >= result.produced)


def _lock_race(ctx: Context, report: Report) -> None:
    path = f"/final-problem/tour/counter-{uuid.uuid4().hex[:8]}"
    workers, rounds = 4, 5

    def race(locked: bool) -> int:
        with _zk(ctx) as setup:
            setup.put(path, b"0")

        def work(n: int) -> None:
            with _zk(ctx) as zk:
                for _ in range(rounds):
                    if locked:
                        with zk.lock(path + "-lock", identifier=f"worker-{n}"):
                            zk.put(path, str(int(zk.get(path)) + 1).encode())
                    else:
                        value = int(zk.get(path))
                        time.sleep(0.01)
                        zk.put(path, str(value + 1).encode())

        threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with _zk(ctx) as check:
            return int(check.get(path, linearizable=True))

    expected = workers * rounds
    unlocked = race(locked=False)
    ctx.step(report, f"{workers} workers x {rounds} increments, no lock", f"counter = {unlocked} of {expected} (lost updates)")
    locked = race(locked=True)
    ctx.step(report, "the same under a ZooKeeper lock", f"counter = {locked} of {expected}", locked == expected)


def _cadence_worker_kill(ctx: Context, report: Report) -> None:
    """The tour starts its own worker of the sample workflow and kills it (kill -9) while the
    workflow waits on its durable timer; a second worker finishes it from the server's
    history. The tour owns both workers, so this runs on a live platform too."""
    import asyncio
    import os
    import tempfile
    from pathlib import Path

    from cadence import Client

    from final_problem.clients import cadence as orders
    from final_problem.local import kill_group

    target = ctx.endpoints.get("cadence")
    domain = ctx.endpoints.env.get("CADENCE_DOMAIN") or os.environ.get("CADENCE_DOMAIN", "default")
    task_list = f"tour-{uuid.uuid4().hex[:8]}"
    log = Path(tempfile.mkdtemp(prefix="final-problem-tour-")) / "workers.log"

    async def scenario() -> tuple[Any, dict[str, Any], list[Any], float]:
        async with Client(target=target, domain=domain) as client:
            execution = await orders.start_order(client, items=2, pause_s=5, task_list=task_list)
            first = orders.spawn_worker(target=target, domain=domain, log=log, task_list=task_list)
            try:
                while "timer_started" not in [orders.event_kind(e) for e in await orders.history_events(client, execution)]:
                    await asyncio.sleep(0.2)
            finally:
                kill_group(first)
            killed = time.monotonic()
            second = orders.spawn_worker(target=target, domain=domain, log=log, task_list=task_list)
            try:
                result = await orders.wait_for_result(client, execution)
            finally:
                kill_group(second)
            return execution, result, await orders.history_events(client, execution), time.monotonic() - killed

    execution, result, events, seconds = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    ctx.step(report, f"start workflow {execution.workflow_id} on Cadence; a worker runs 'reserve' (retried by the "
             "server after two failures), then the workflow sleeps on a durable timer", "kill -9 the worker")
    reserves = sum(1 for e in events if orders.event_kind(e) == "activity_task_scheduled"
                   and e.activity_task_scheduled_event_attributes.activity_type.name == "reserve")
    expected = orders.expected_result(execution.workflow_id, 2)
    ctx.step(report, "start a new worker",
             f"it replayed the history and completed the workflow {seconds:.1f} s after the kill: {result}; "
             f"'reserve' scheduled {reserves} time(s) in all",
             result == expected and reserves == 1)


def _redis_failover(ctx: Context, report: Report) -> None:
    client = _redis(ctx)
    try:
        keys = [f"final-problem:tour:ft:{i}" for i in range(50)]
        for key in keys:
            client.set_durable(key, key, replicas=1)
        ctx.step(report, "50 writes, each acknowledged by a replica (WAIT 1)", f"primary {client.primary_address()}")
        if ctx.local is not None:
            redis_set = ctx.local.redis
            old = client.primary_address()
            index = redis_set.member_index(old[1])
            redis_set.kill_member(index)
            _, seconds = redis_set.wait_new_primary(old[1], timeout_s=30)
            ctx.step(report, "kill the primary", f"Sentinels promoted a replica in {seconds:.1f} s")
            redis_set.start_member(index)
        else:
            ctx.step(report, "fault", "not injected on a live platform: run with --local to kill the primary")
        missing = [k for k in keys if client.get(k, from_primary=True) != k]
        ctx.step(report, "read every acknowledged write from the primary", f"{len(keys) - len(missing)} of {len(keys)} present", not missing)
    finally:
        client.close()


def _scrape(port: int, timeout_s: float) -> str:
    """The Prometheus text a local server serves at ``/metrics`` on ``port``."""
    import urllib.request

    from final_problem.local import LOOPBACK

    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=timeout_s) as response:
        return response.read().decode()


def _kafka_metrics(ctx: Context, report: Report) -> None:
    """A Kafka node's Prometheus endpoint: the chart's JMX exporter agent and rules (port 9404
    in the chart, admitted from monitoring namespaces only, so read here only on the local
    servers)."""
    cluster = getattr(ctx.local, "kafka", None)
    if cluster is None or not cluster.metrics_ports:
        ctx.step(report, "Kafka metrics", "each node's JMX exporter agent serves Prometheus text, to namespaces "
                 "labelled final-problem.io/monitoring=true only: not read from here")
        return
    node = cluster.broker_ids[0]
    # Each series' value, summed per metric name over its labels.
    values: dict[str, float] = {}
    for line in _scrape(cluster.metrics_ports[node], timeout_s=30).splitlines():
        if line.startswith("kafka_"):
            series, _, value = line.rpartition(" ")
            name = series.split("{")[0]
            values[name] = values.get(name, 0.0) + float(value)
    wanted = ("kafka_server_replicamanager_underreplicatedpartitions", "kafka_controller_kafkacontroller_activecontrollercount",
              "kafka_raft_current_leader")
    ctx.step(report, f"Kafka node {node}'s Prometheus endpoint (the chart's JMX exporter rules)",
             f"{len(values)} kafka_ series; " + ", ".join(f"{w.removeprefix('kafka_')} {values[w]:g}" for w in wanted if w in values),
             all(w in values for w in wanted))


def _cadence_metrics(ctx: Context, report: Report) -> None:
    """Each Cadence service's Prometheus endpoint (the chart's port 9090, admitted from
    monitoring namespaces only, so read here only on the local servers)."""
    cadence = getattr(ctx.local, "cadence", None)
    if cadence is None:
        ctx.step(report, "Cadence metrics", "each server pod serves Prometheus text on port 9090, to namespaces "
                 "labelled final-problem.io/monitoring=true only: not read from here")
        return
    seen = []
    for instance in (cadence.of("frontend")[0], cadence.of("history")[0]):
        text = _scrape(cadence.ports[instance].metrics, timeout_s=10)
        families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
        requests = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("persistence_requests{"))
        seen.append((instance, len(families), requests))
    ctx.step(report, "Cadence's Prometheus endpoints (frontend, history)",
             "; ".join(f"{i}: {n} metric families, {r:.0f} database requests" for i, n, r in seen),
             all(n > 0 for _, n, _ in seen))


def _zookeeper_metrics(ctx: Context, report: Report) -> None:
    from final_problem.clients.zookeeper import four_letter_word

    host, _, port = _members(ctx)[0].rpartition(":")
    mntr = dict(line.split("\t", 1) for line in four_letter_word(host=host, port=int(port), word="mntr").splitlines() if "\t" in line)
    ctx.step(report, "ZooKeeper mntr (the same figures its Prometheus endpoint serves)",
             f"state {mntr.get('zk_server_state')}, {mntr.get('zk_znode_count')} znodes, avg latency {mntr.get('zk_avg_latency')} ms",
             "zk_server_state" in mntr)


def _redis_metrics(ctx: Context, report: Report) -> None:
    from final_problem.clients.redis_exporter import read_info, to_prometheus

    client = _redis(ctx)
    try:
        host, port = client.primary_address()
    finally:
        client.close()
    password = ctx.endpoints.env.get("REDIS_METRICS_PASSWORD")
    if password is None:
        from final_problem.tour.discovery import secret_value

        password = secret_value(ctx.endpoints.kubeconfig, "redis", "redis-auth", "metrics-password")
    text = to_prometheus(read_info(host=host, port=port, password=password))
    lines = [line for line in text.splitlines() if line.startswith(("redis_up", "redis_role_primary", "redis_connected_slaves"))]
    ctx.step(report, "Redis INFO as Prometheus text, as the metrics user (the exporter sidecar's view)",
             "; ".join(lines), "redis_up 1" in lines)


def _redis_security(ctx: Context, report: Report) -> None:
    import redis

    from final_problem.clients.redis import _parse_sentinels

    # retry=None: redis-py retries a refused login with a backoff (about 4 s); one refusal says it.
    client = _redis(ctx)
    try:
        host, port = client.primary_address()
    finally:
        client.close()
    anonymous = redis.Redis(host=host, port=port, socket_timeout=3, retry=None)
    try:
        anonymous.ping()
        ctx.step(report, "Redis PING without a password", "answered (authentication is off!)", False)
    except redis.AuthenticationError as e:
        ctx.step(report, "Redis PING without a password", f"refused: {e}")
    except redis.ResponseError as e:
        ctx.step(report, "Redis PING without a password", f"refused: {e}", "NOAUTH" in str(e) or "auth" in str(e).lower())
    wrong = redis.Redis(host=host, port=port, username="app", password="wrong-password", socket_timeout=3, retry=None)
    try:
        wrong.ping()
        ctx.step(report, "Redis login with a wrong password", "accepted!", False)
    except redis.AuthenticationError as e:
        ctx.step(report, "Redis login with a wrong password", f"refused: {e}")
    client = _redis(ctx)
    try:
        client.primary.execute_command("FLUSHALL")
        ctx.step(report, "app user runs FLUSHALL (@dangerous)", "allowed!", False)
    except redis.exceptions.NoPermissionError as e:
        ctx.step(report, "app user runs FLUSHALL (@dangerous)", f"refused: {e}")
    finally:
        client.close()
    sentinel_host, sentinel_port = _parse_sentinels(ctx.endpoints.get("redis"))[0]
    try:
        redis.Redis(host=sentinel_host, port=sentinel_port, socket_timeout=3, retry=None).execute_command("SENTINEL", "MASTERS")
        ctx.step(report, "Sentinel command without a password", "answered!", False)
    except (redis.AuthenticationError, redis.ResponseError) as e:
        ctx.step(report, "Sentinel command without a password", f"refused: {e}")


def _kafka_security(ctx: Context, report: Report) -> None:
    from final_problem.clients.kafka import KafkaSettings, admin, describe

    kafka = _kafka(ctx)
    marker = "invalid credentials with SASL mechanism SCRAM-SHA-512"
    logged = sum(ctx.local.kafka.log(n).count(marker) for n in ctx.local.kafka.broker_ids) if ctx.local else 0
    try:
        admin(KafkaSettings(bootstrap_servers=kafka.bootstrap_servers, username=kafka.username,
                            password="wrong-password", request_timeout_s=10), bootstrap_timeout_ms=5000).close()
        ctx.step(report, "Kafka login with a wrong password (SCRAM-SHA-512)", "accepted!", False)
    except Exception as e:  # noqa: BLE001 - kafka-python retries a failed login until the bootstrap times out
        # The same client with the real password gets in: the refusal was the password.
        brokers = describe(kafka)["brokers"]
        seen = ""
        if ctx.local is not None:
            now = sum(ctx.local.kafka.log(n).count(marker) for n in ctx.local.kafka.broker_ids)
            seen = f"; the broker logged '{marker}'" if now > logged else "; no refusal in the broker log"
        ctx.step(report, "Kafka login with a wrong password (SCRAM-SHA-512)",
                 f"refused: no session ({type(e).__name__}), while the real password reaches brokers {brokers}{seen}",
                 bool(brokers) and "no refusal" not in seen)


def _zookeeper_security(ctx: Context, report: Report) -> None:
    from final_problem.clients.zookeeper import four_letter_word

    zk_host, _, zk_port = _members(ctx)[0].rpartition(":")
    answer = four_letter_word(host=zk_host, port=int(zk_port), word="conf")
    ctx.step(report, "ZooKeeper 'conf' four-letter word (not on the allowlist)",
             answer.strip().splitlines()[0] if answer.strip() else "connection closed", "not in the whitelist" in answer or not answer)


# --- the nine concepts, in the order `demo all` runs them ------------------------------------

demo("consistency", "linearizable ZooKeeper writes vs asynchronous Redis replicas",
     ("zookeeper", _zookeeper_consistency), ("redis", _redis_consistency))
demo("availability", "reads stay available from replicas; writes need the primary",
     ("redis", _redis_availability))
demo("partition-tolerance", "a minority side refuses writes (or a failover) rather than diverge",
     ("zookeeper", _zookeeper_partition), ("kafka", _kafka_partition), ("redis", _sentinel_partition))
demo("scalability", "reads scale out over replicas and followers; writes go through one leader",
     ("redis", _redis_scalability), ("zookeeper", _zookeeper_scalability))
demo("consensus", "one leader, agreed by a majority; a new one after it fails",
     ("zookeeper", _zookeeper_consensus), ("kafka", _kafka_consensus))
demo("concurrency",
     "a distributed lock turns racing read-modify-writes into no lost updates; a consumer group shares partitions",
     ("zookeeper", _lock_race), ("kafka", _kafka_group))
demo("fault-tolerance", "a failover keeps every acknowledged write; a workflow outlives the worker running it",
     ("redis", _redis_failover), ("cadence", _cadence_worker_kill))
demo("observability", "every component reports its own state as metrics",
     ("zookeeper", _zookeeper_metrics), ("redis", _redis_metrics), ("kafka", _kafka_metrics),
     ("cadence", _cadence_metrics))
demo("security", "unauthenticated and unauthorised requests are refused",
     ("redis", _redis_security), ("kafka", _kafka_security), ("zookeeper", _zookeeper_security))

CONCEPTS = tuple(DEMOS)
