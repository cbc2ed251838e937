"""``--local``: the platform's real servers on this machine, as the tests start them.

A three-member ZooKeeper ensemble and a Redis primary with two replicas and three
Sentinels (Debian's packages: ``sudo make system-deps``), and a Kafka cluster of three
combined broker-controllers, the Pi layout (the broker's jars: ``make kafka``), and Cadence's
four services on a PostgreSQL (Debian's; the server and tools: ``make cadence-tools``) with the
schema and domain set up by the Jobs' scripts, each from the configuration the charts render,
on loopback ports. Everything started is stopped on exit,
even on failure.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from final_problem.tour.discovery import DiscoveryError, Endpoints

#: Sentinel timeouts shortened so the demos' failover takes a second or two (their client
#: rides out a failover at the chart's own timing too: RedisSettings.retries).
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
#: The first boot of the empty set waits 1 s for a peer, as in the tests
#: (final_problem.local.redis.local_options): the members start before the Sentinels.
BOOTSTRAP_WAIT_S = 1


class LocalPlatform:
    """Start the local servers; ``endpoints`` and ``faults`` describe and disturb them."""

    def __init__(self, *, components: tuple[str, ...] = ("zookeeper", "redis", "kafka", "cadence")) -> None:
        self.components = components
        self._stack = ExitStack()
        self.workdir = Path(tempfile.mkdtemp(prefix="final-problem-local-"))
        self.zookeeper: Any = None
        self.redis: Any = None
        self.kafka: Any = None
        self.cadence: Any = None
        # The servers run under their Pi pods' limits where this host can set them (root,
        # cgroups); elsewhere, as they are: the tour shows behaviour, the tests hold the limits.
        from final_problem.local import limits

        self.limits = limits.problem() is None

    def __enter__(self) -> "LocalPlatform":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _start(self) -> None:
        # Each launcher picks free ports when it is created; a server binds its ports only once
        # it runs. Start each set and wait until it serves before the next picks its ports, and
        # the JVMs that bind late (Kafka, ZooKeeper) first and last with a wait between.
        if "kafka" in self.components:
            from final_problem.local.kafka import LocalKafkaCluster, missing_binaries as kafka_missing

            if missing := kafka_missing():
                raise DiscoveryError(f"--local needs the Kafka broker ({', '.join(missing)} missing): run `make kafka`")
            self.kafka = self._stack.enter_context(LocalKafkaCluster(workdir=self.workdir / "kafka", layout="combined",
                                                                    metrics=True, limits=self.limits))
            self.kafka.start_all()
            self.kafka.wait_healthy()
        if "cadence" in self.components:
            self._start_cadence()
        if "redis" in self.components:
            if not shutil.which("redis-server") or not shutil.which("redis-sentinel"):
                raise DiscoveryError("--local needs redis-server and redis-sentinel: run `sudo make system-deps`")
            from final_problem.charts.redis import RedisProps
            from final_problem.local.redis import LocalRedisSet
            from final_problem.profiles import PI

            options = RedisProps.for_profile(
                PI, down_after_ms=DOWN_AFTER_MS, failover_timeout_ms=FAILOVER_TIMEOUT_MS, bootstrap_wait_s=BOOTSTRAP_WAIT_S,
            ).config_options()
            self.redis = self._stack.enter_context(LocalRedisSet(workdir=self.workdir / "redis", options=options,
                                                                      limits=self.limits))
        if "zookeeper" in self.components:
            from final_problem.local.zookeeper import LocalEnsemble, missing_binaries

            if missing := missing_binaries():
                raise DiscoveryError(f"--local needs ZooKeeper from Maven Central ({', '.join(missing)} missing)")
            self.zookeeper = self._stack.enter_context(LocalEnsemble(workdir=self.workdir / "zookeeper", limits=self.limits))
            self.zookeeper.start_all()
        if self.zookeeper is not None:
            from final_problem.clients.zookeeper import ZooKeeperClient

            # Wait for a quorum before any demo runs.
            with ZooKeeperClient(hosts=self.zookeeper.hosts, timeout=30) as client:
                client.kazoo.sync("/")

    def _start_cadence(self) -> None:
        from final_problem.local import cadence as tools
        from final_problem.local.postgres import LocalPostgres, LocalPostgresError
        from final_problem.renderers.cadence import Database

        try:
            tools.require_binaries()
            postgres = self._stack.enter_context(LocalPostgres(limits=self.limits))
        except (tools.CadenceToolsMissing, LocalPostgresError) as e:
            raise DiscoveryError(f"--local needs Cadence and PostgreSQL: {e}") from None
        database = Database(host=postgres.host, port=postgres.port, user=postgres.user)
        schema = tools.run_schema_script("setup", database=database, password=postgres.password)
        if schema.returncode != 0:
            raise DiscoveryError(f"--local: the Cadence schema script failed: {schema.stderr.strip()[-500:]}")
        self.cadence = self._stack.enter_context(
            tools.LocalCadence(database=database, password=postgres.password, workdir=self.workdir / "cadence",
                               limits=self.limits))
        self.cadence.start_all()
        self.cadence.wait_ready()
        domain = self.cadence.register_domain()
        if domain.returncode != 0:
            raise DiscoveryError(f"--local: the Cadence domain script failed: {domain.stderr.strip()[-500:]}")

    def endpoints(self) -> Endpoints:
        endpoints = Endpoints(source="local servers")
        if self.zookeeper is not None:
            endpoints.addresses["zookeeper"] = self.zookeeper.hosts
        if self.redis is not None:
            env = self.redis.client_env()
            endpoints.addresses["redis"] = env["REDIS_SENTINELS"]
            endpoints.env.update(env)
            endpoints.env["REDIS_METRICS_PASSWORD"] = self.redis.passwords.metrics
        if self.kafka is not None:
            endpoints.addresses["kafka"] = self.kafka.bootstrap_servers
            endpoints.env.update({"KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
                                  "KAFKA_USERNAME": self.kafka.credentials.app_user,
                                  "KAFKA_PASSWORD": self.kafka.credentials.app})
        if self.cadence is not None:
            endpoints.addresses["cadence"] = self.cadence.frontend_address
            endpoints.env["CADENCE_DOMAIN"] = self.cadence.props.domain
        return endpoints
