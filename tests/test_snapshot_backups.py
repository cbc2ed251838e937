"""Precise tests of the snapshot backups as rendered (Redis and ZooKeeper sidecars, Consul's
CronJob) and of the snapshot agent's pure parts (checksums, log walking, choosing a snapshot)."""

from __future__ import annotations

import datetime as dt
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from final_problem import config, manifests, versions
from final_problem.charts import consul as consul_chart
from final_problem.charts import redis as redis_chart
from final_problem.charts import zookeeper as zookeeper_chart
from final_problem.clients import consul_init
from final_problem.constructs import snapshot_backup
from final_problem.errors import ConfigError
from final_problem.profiles import PI
from final_problem.renderers import backup_agent, snapshot_agent
from final_problem.renderers.backup_agent import BackupError

ENDPOINT = "http://s3.backups.svc.cluster.local:7070"


def objects(component: str, profile: str = "pi", *, cluster: dict[str, Any] | None = None,
            **values: Any) -> list[dict[str, Any]]:
    settings = config.from_mapping({"components": ["base", component], component: values, **(cluster or {})})
    return manifests.chart_objects(manifests.render(settings, profile)[component])


def named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def pod_spec(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return named(objs, "StatefulSet", name)["spec"]["template"]["spec"]


def container(objs: list[dict[str, Any]], statefulset: str, name: str) -> dict[str, Any]:
    return next(c for c in pod_spec(objs, statefulset)["containers"] if c["name"] == name)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


@pytest.mark.parametrize("component, cluster", [("redis", {"backups": False}), ("zookeeper", {"backups": False}),
                                                ("consul", {})])
def test_backups_off_or_consul_without_a_target_no_backups(component: str, cluster: dict[str, Any]) -> None:
    objs = objects(component, "eks", cluster=cluster)
    assert not [o for o in objs if "backup" in o["metadata"]["name"] or o["kind"] == "CronJob"]
    for o in objs:
        if o["kind"] == "StatefulSet":
            assert "backup" not in [c["name"] for c in o["spec"]["template"]["spec"]["containers"]]


@pytest.mark.parametrize("component", ["redis", "zookeeper", "consul"])
def test_the_programs_configmap_holds_the_agent_and_its_s3_client(component: str) -> None:
    configmap = named(objects(component, "eks", backup_endpoint=ENDPOINT), "ConfigMap", f"{component}-backup-scripts")
    assert configmap["data"] == {"backup_agent.py": Path(backup_agent.__file__).read_text(),
                                 "snapshot_agent.py": Path(snapshot_agent.__file__).read_text()}


def test_each_redis_member_runs_the_sidecar_with_its_admin_user_on_its_data_volume() -> None:
    objs = objects("redis", backup_endpoint=ENDPOINT, backup_bucket="b1", backup_prefix="home",
                   backup_interval_minutes=30, backup_retention_days=14)
    agent = container(objs, "redis", "backup")
    assert agent["image"] == versions.PYTHON_IMAGE
    assert agent["command"] == ["python3", "/backup/snapshot_agent.py", "redis", "--data-dir", "/data", "--port", "6379",
                                "--interval-minutes", "30", "--retention-days", "14", "--metrics-port", "9188"]
    values = env(agent)
    assert values["REDIS_ADMIN_PASSWORD"]["secretKeyRef"] == {"name": "redis-auth", "key": "admin-password"}
    assert values["POD_NAME"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert (values["BACKUP_S3_ENDPOINT"], values["BACKUP_S3_BUCKET"], values["BACKUP_S3_PREFIX"]) == (ENDPOINT, "b1", "home")
    assert values["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": "redis-backup-target", "key": "access-key-id"}
    # The hard link beside dump.rdb: the same volume, writable, the server's uid.
    assert {"mountPath": "/data", "name": "data"} in agent["volumeMounts"]
    assert agent["securityContext"]["runAsUser"] == redis_chart.REDIS_UID


def test_each_zookeeper_member_runs_the_sidecar_reading_its_volumes() -> None:
    objs = objects("zookeeper", backup_endpoint=ENDPOINT)
    agent = container(objs, "zookeeper", "backup")
    assert agent["command"] == ["python3", "/backup/snapshot_agent.py", "zookeeper", "--data-dir", "/data",
                                "--log-dir", "/datalog", "--spool", "/backup-spool", "--port", "2181",
                                "--interval-minutes", "60", "--retention-days", "7", "--metrics-port", "9188"]
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/data"]["readOnly"] is True and mounts["/datalog"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod_spec(objs, "zookeeper")["volumes"]}
    assert "emptyDir" in volumes[mounts["/backup-spool"]["name"]]
    assert agent["securityContext"]["runAsUser"] == zookeeper_chart.ZOOKEEPER_UID
    # The agent asks its member's mode and zxid with srvr.
    assert "srvr" in zookeeper_chart.FOUR_LETTER_WORDS


@pytest.mark.parametrize("component, endpoint, port", [("redis", ENDPOINT, 7070), ("zookeeper", "https://s3.amazonaws.com", 443),
                                                       ("consul", "http://minio.lan", 80)])
def test_the_backup_pods_may_reach_the_target_port_only(component: str, endpoint: str, port: int) -> None:
    objs = objects(component, "eks", backup_endpoint=endpoint)
    name = {"consul": "consul-snapshot", "redis": "redis-target", "zookeeper": "zookeeper-backup-target"}[component]
    policy = named(objs, "NetworkPolicy", name)
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert {"ports": [{"port": port, "protocol": "TCP"}]} in policy["spec"]["egress"]


@pytest.mark.parametrize("component", ["redis", "zookeeper"])
def test_a_program_change_restarts_the_members(component: str) -> None:
    def digest(objs: list[dict[str, Any]]) -> dict[str, str]:
        annotations = named(objs, "StatefulSet", component)["spec"]["template"]["metadata"]["annotations"]
        return {k: v for k, v in annotations.items() if "config" in k}
    assert digest(objects(component, cluster={"backups": False})) != digest(objects(component))


@pytest.mark.parametrize("component", ["redis", "zookeeper"])
def test_the_freshness_metrics_are_annotated_for_scraping_and_admitted_from_monitoring_only(component: str) -> None:
    objs = objects(component, backup_metrics_port=9300)
    agent = container(objs, component, "backup")
    assert agent["command"][-2:] == ["--metrics-port", "9300"]
    assert agent["ports"] == [{"containerPort": 9300, "name": "backup-metrics"}]
    service = named(objs, "Service", f"{component}-backup-metrics")
    assert service["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "9300",
                                                  "prometheus.io/path": "/metrics"}
    # Every member: the selector of the StatefulSet's pods, to the sidecar's named port.
    assert service["spec"]["selector"] == named(objs, "StatefulSet", component)["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "backup-metrics", "port": 9300, "targetPort": "backup-metrics"}]
    policy = named(objs, "NetworkPolicy", f"{component}-backup-metrics")
    assert policy["spec"]["podSelector"] == named(objs, "StatefulSet", component)["spec"]["selector"]
    assert policy["spec"]["ingress"] == [{"from": [{"namespaceSelector": {"matchLabels": {
        "final-problem.io/monitoring": "true"}}}], "ports": [{"port": 9300, "protocol": "TCP"}]}]


@pytest.mark.parametrize("component", ["redis", "zookeeper"])
def test_the_freshness_port_defaults_to_postgres_own(component: str) -> None:
    from final_problem.charts.postgres import PostgresProps

    agent = container(objects(component), component, "backup")
    assert agent["ports"] == [{"containerPort": PostgresProps.for_profile(PI).backup_metrics_port,
                               "name": "backup-metrics"}]


def test_consul_has_no_freshness_port_its_cronjob_serves_nothing() -> None:
    assert "backup_metrics_port" not in {i.name for i in consul_chart.ConsulProps.infos()}
    assert "backup_metrics_port" in {i.name for i in redis_chart.RedisProps.infos()}
    assert "backup_metrics_port" in {i.name for i in zookeeper_chart.ZooKeeperProps.infos()}


@pytest.mark.parametrize("component, port, taken_by", [
    ("redis", 6379, "the Redis port"), ("redis", 9121, "the metrics exporter"),
    ("zookeeper", 2181, "zookeeper.client_port"), ("zookeeper", 7000, "zookeeper.metrics_port"),
    ("zookeeper", 3888, "zookeeper.election_port"),
])
def test_a_freshness_port_another_listener_of_the_pod_has_is_refused_in_one_line(component: str, port: int,
                                                                                 taken_by: str) -> None:
    with pytest.raises(ConfigError) as refused:
        objects(component, backup_metrics_port=port)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{component}.backup_metrics_port = {port}")
    assert f"the same port as {taken_by} in each member's pod" in message
    assert f"Fix: set {component}.backup_metrics_port={port + 1}" in message


SERVICE_ACCOUNTS = {"redis": "redis", "zookeeper": "zookeeper-backup"}


@pytest.mark.parametrize("component", ["redis", "zookeeper"])
def test_on_the_pis_snapshots_go_to_the_in_cluster_server_by_default(component: str) -> None:
    objs = objects(component, "pi")
    agent = container(objs, component, "backup")
    values = env(agent)
    assert values["BACKUP_S3_ENDPOINT"] == "http://s3.backups.svc.cluster.local:7070"
    assert values["BACKUP_S3_KEY_PAIR_FROM"] == "backups/backup-target-root"
    assert "AWS_ACCESS_KEY_ID" not in values
    template = named(objs, "StatefulSet", component)["spec"]["template"]
    account = SERVICE_ACCOUNTS[component]
    assert template["spec"]["serviceAccountName"] == account and template["spec"]["automountServiceAccountToken"] is False
    # The S3 server admits the pods by this label.
    assert template["metadata"]["labels"]["final-problem.io/backup-client"] == "true"
    # The API token is in the backup container alone.
    assert [c["name"] for c in template["spec"]["containers"]
            for m in c.get("volumeMounts", []) if m["name"] == "backup-token"] == ["backup"]
    binding = named(objs, "RoleBinding", f"{component}-{account}")
    assert binding["metadata"]["namespace"] == "backups"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": component}]
    assert [o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == account]


@pytest.mark.parametrize("component", ["redis", "zookeeper"])
def test_on_eks_snapshots_go_to_the_stack_bucket_through_pod_identity(component: str) -> None:
    objs = objects(component, "eks")
    values = env(container(objs, component, "backup"))
    assert values["BACKUP_S3_BUCKET"] == "<BackupBucket output of the cluster stack>"
    assert not {"AWS_ACCESS_KEY_ID", "BACKUP_S3_KEY_PAIR_FROM"} & set(values)
    assert pod_spec(objs, component)["serviceAccountName"] == SERVICE_ACCOUNTS[component]
    policy = named(objs, "NetworkPolicy", f"{SERVICE_ACCOUNTS[component]}-target")
    assert {"ports": [{"port": 443, "protocol": "TCP"}]} in policy["spec"]["egress"]


def test_in_the_mesh_redis_backs_up_as_the_mesh_service_account() -> None:
    settings = config.from_mapping({"components": ["base", "consul", "redis"], "pi_arm64_va_bits": 48})
    objs = manifests.chart_objects(manifests.render(settings, "pi")["redis"])
    # A pod has one service account: the mesh's, which the Role lets read the key pair.
    assert pod_spec(objs, "redis")["serviceAccountName"] == "redis"
    assert len([o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "redis"]) == 1
    assert named(objs, "RoleBinding", "redis-redis")["subjects"][0]["name"] == "redis"


@pytest.mark.parametrize("component", ["redis", "zookeeper"])
def test_a_target_while_backups_are_off_is_refused_in_one_line(component: str) -> None:
    with pytest.raises(ConfigError, match=rf"{component}.backup_endpoint = .*names a backup target while the "
                                          "cluster setting backups is false"):
        objects(component, "eks", cluster={"backups": False}, backup_endpoint=ENDPOINT)


def test_consul_snapshots_are_a_cronjob_with_a_token_of_acl_write_only() -> None:
    objs = objects("consul", "eks", backup_endpoint=ENDPOINT, backup_interval_minutes=120)
    job = named(objs, "CronJob", "consul-snapshot")
    assert job["spec"]["schedule"] == "0 */2 * * *" and job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (save,) = pod["initContainers"]
    assert save["image"] == versions.CONSUL_IMAGE
    assert save["command"][-1].endswith("consul snapshot save /work/consul.snap")
    assert save["command"][-1].startswith("date -u")  # the recovery point, before the save
    assert env(save)["CONSUL_HTTP_TOKEN"]["secretKeyRef"] == {"name": "consul-snapshot-token", "key": "token"}
    assert env(save)["CONSUL_HTTP_ADDR"] == "https://consul-server.consul.svc:8501"
    (upload,) = pod["containers"]
    assert upload["command"][:4] == ["python3", "/backup/snapshot_agent.py", "upload", "consul"]
    # The token: the one right a snapshot needs, made by the ACL Job, readable by it.
    assert consul_init.SNAPSHOT_RULES == 'acl = "write"\n'
    acl_job = next(o for o in objs if o["kind"] == "Job" and o["metadata"]["name"].startswith("consul-acl-init"))
    spec = json.loads(env(acl_job["spec"]["template"]["spec"]["containers"][0])["CONSUL_INIT_SPEC"])
    assert spec["snapshot"] is True
    role = named(objs, "Role", "consul-init")
    assert any("consul-snapshot-token" in (r.get("resourceNames") or []) for r in role["rules"])
    # The servers admit the snapshot pods on HTTPS.
    server_policy = named(objs, "NetworkPolicy", "consul-server")
    admitted = [r for r in server_policy["spec"]["ingress"]
                if any(p.get("podSelector", {}).get("matchLabels") == consul_chart.SNAPSHOT_POD_LABELS
                       for p in r["from"])]
    assert admitted and admitted[0]["ports"] == [{"port": 8501, "protocol": "TCP"}]


def test_without_backups_the_acl_job_makes_no_snapshot_token() -> None:
    objs = objects("consul", "eks")
    acl_job = next(o for o in objs if o["kind"] == "Job" and o["metadata"]["name"].startswith("consul-acl-init"))
    assert "snapshot" not in json.loads(env(acl_job["spec"]["template"]["spec"]["containers"][0])["CONSUL_INIT_SPEC"])


@pytest.mark.parametrize("minutes, schedule", [(15, "*/15 * * * *"), (60, "0 * * * *"), (360, "0 */6 * * *"),
                                               (1440, "0 0 * * *"), (2880, "0 0 */2 * *"), (90, None), (25, None)])
def test_cron_schedules_keep_an_even_interval(minutes: int, schedule: str | None) -> None:
    assert consul_chart.cron_schedule(minutes) == schedule


def test_an_interval_no_cronjob_keeps_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"consul.backup_interval_minutes = 90.*not a schedule a CronJob can keep"):
        objects("consul", "eks", backup_endpoint=ENDPOINT, backup_interval_minutes=90)


@pytest.mark.parametrize("component", ["redis", "zookeeper", "consul"])
def test_an_endpoint_that_is_not_a_url_is_refused_in_one_line(component: str) -> None:
    with pytest.raises(ConfigError, match=rf"{component}.backup_endpoint = 's3.lan:7070'.*is not an http\(s\) URL"):
        objects(component, "eks", backup_endpoint="s3.lan:7070")


@pytest.mark.parametrize("name", [i.name for i in snapshot_backup.SnapshotBackupSettings.infos()])
def test_every_backup_setting_has_a_change_rule(name: str) -> None:
    for props in (redis_chart.RedisProps, zookeeper_chart.ZooKeeperProps, consul_chart.ConsulProps):
        assert props.__dataclass_fields__[name].metadata["setting"]["change"] is not None


# -- the agent's pure parts ---------------------------------------------------------------------

def test_a_restored_redis_member_is_told_to_start_as_the_primary_as_the_start_script_reads_it() -> None:
    from final_problem.renderers import redis as redis_renderer

    assert snapshot_agent.FORCE_PRIMARY_FILE == redis_renderer.FORCE_PRIMARY_FILE
    assert f'"$REDIS_DATA_DIR/{redis_renderer.FORCE_PRIMARY_FILE}"' in redis_renderer.config_files(
        redis_chart.RedisProps.for_profile(PI).config_options())["start-redis.sh"]


def test_crc64_is_redis_jones_crc() -> None:
    # Redis's crc64.c test vector.
    assert snapshot_agent.crc64(b"123456789") == 0xE9C6D914C4B8D9CA


def rdb(body: bytes) -> bytes:
    data = b"REDIS0010" + body + b"\xff"
    return data + struct.pack("<Q", snapshot_agent.crc64(data))


def test_an_rdb_is_checked_by_its_own_crc64_without_redis_check_rdb(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_agent.shutil, "which", lambda name: None)
    good = tmp_path / "good.rdb"
    good.write_bytes(rdb(b"\xfe\x00somekeys"))
    assert snapshot_agent.check_rdb(str(good)) == "its CRC-64"
    bad = tmp_path / "bad.rdb"
    data = bytearray(rdb(b"\xfe\x00somekeys"))
    data[12] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(BackupError, match="fails its CRC-64"):
        snapshot_agent.check_rdb(str(bad))


def txn(zxid: int, payload: bytes = b"x" * 10) -> bytes:
    body = struct.pack(">qiqqi", 7, 1, zxid, 0, 1) + payload
    return struct.pack(">qi", zlib.adler32(body), len(body)) + body + b"\x42"


def test_a_transaction_log_is_walked_to_its_last_whole_record() -> None:
    header = b"ZKLG" + struct.pack(">iq", 2, 0)
    log = header + txn(0x100000001) + txn(0x100000002)
    assert snapshot_agent.log_records(log + b"\x00" * 64) == (len(log), 0x100000001, 0x100000002)
    # Mid-append: the last record cut short is not counted.
    assert snapshot_agent.log_records(log + txn(0x100000003)[:-4]) == (len(log), 0x100000001, 0x100000002)
    damaged = bytearray(log)
    damaged[-3] ^= 0xFF
    assert snapshot_agent.log_records(bytes(damaged))[2] == 0x100000001


def test_a_snapshot_is_whole_only_with_its_adler32_seal(tmp_path: Path) -> None:
    body = b"ZKSN" + struct.pack(">iq", 2, 0) + b"sessions and the data tree"
    path = tmp_path / "snapshot.1"
    path.write_bytes(body + struct.pack(">q", zlib.adler32(body)) + snapshot_agent.SNAP_SEAL)
    assert snapshot_agent.snapshot_valid(str(path))
    path.write_bytes(body + struct.pack(">q", zlib.adler32(body) ^ 1) + snapshot_agent.SNAP_SEAL)
    assert not snapshot_agent.snapshot_valid(str(path))
    path.write_bytes(body)  # still being written
    assert not snapshot_agent.snapshot_valid(str(path))


class FakeS3:
    """Listings only: what :meth:`Snapshots.choose` reads."""

    bucket = "b"

    def __init__(self, listings: dict[str, dict]) -> None:
        self.objects = {k: json.dumps(v).encode() for k, v in listings.items()}

    def list(self, prefix: str) -> dict[str, int]:
        return {k: len(v) for k, v in self.objects.items() if k.startswith(prefix)}

    def get(self, key: str) -> tuple[dict, bytes] | None:
        return ({}, self.objects[key]) if key in self.objects else None


def listing(snapshot_id: str, at: str) -> dict:
    return {"format": 1, "id": snapshot_id, "recovery_point": at, "ended": at, "files": [{"name": "dump.rdb"}]}


def test_the_newest_snapshot_before_the_target_is_chosen() -> None:
    store = snapshot_agent.Snapshots(FakeS3({  # type: ignore[arg-type]
        "redis/snapshots/a/snapshot.json": listing("a", "2026-12-07T01:00:00Z"),
        "redis/snapshots/b/snapshot.json": listing("b", "2026-12-07T02:00:00Z"),
    }), "", "redis")
    assert store.choose(None)["id"] == "b"
    assert store.choose(dt.datetime(2026, 12, 7, 1, 30, tzinfo=dt.timezone.utc))["id"] == "a"
    with pytest.raises(BackupError, match="no redis snapshot with a recovery point before"):
        store.choose(dt.datetime(2026, 12, 7, 0, 30, tzinfo=dt.timezone.utc))


def test_an_unreadable_listing_is_refused_in_one_line() -> None:
    store = snapshot_agent.Snapshots(FakeS3({"zookeeper/snapshots/a/snapshot.json": {"format": 99}}),  # type: ignore[arg-type]
                                     "", "zookeeper")
    with pytest.raises(BackupError, match="snapshot listing zookeeper/snapshots/a/snapshot.json: unreadable"):
        store.listings()


# -- the freshness metrics ------------------------------------------------------------------------

SNAPSHOT_AGE = 'final_problem_backup_age_seconds{component="redis",kind="snapshot"}'


def samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_every_member_reports_the_newest_listed_snapshot_as_the_sets_freshness() -> None:
    store = snapshot_agent.Snapshots(FakeS3({  # type: ignore[arg-type]
        "redis/snapshots/a/snapshot.json": listing("a", "2026-12-07T01:00:00Z"),
        "redis/snapshots/b/snapshot.json": listing("b", "2026-12-07T02:00:00Z"),
    }), "", "redis")
    metrics = backup_agent.Metrics("redis", kinds=(snapshot_agent.SNAPSHOT_KIND,))
    age = snapshot_agent.newest_listed(store, metrics)
    now = dt.datetime(2026, 12, 7, 2, 30, tzinfo=dt.timezone.utc)
    assert age is not None and age > 0
    got = samples(metrics.render(now=now))
    assert got[SNAPSHOT_AGE] == 30 * 60
    # Read from the bucket, not uploaded here: no upload counted.
    assert got['final_problem_backup_uploads_total{component="redis",kind="snapshot",result="success"}'] == 0


def test_no_snapshot_listed_no_age_and_no_postgres_kinds() -> None:
    metrics = backup_agent.Metrics("zookeeper", kinds=(snapshot_agent.SNAPSHOT_KIND,))
    assert snapshot_agent.newest_listed(snapshot_agent.Snapshots(FakeS3({}), "", "zookeeper"),  # type: ignore[arg-type]
                                        metrics) is None
    assert samples(metrics.render()) == {
        'final_problem_backup_uploads_total{component="zookeeper",kind="snapshot",result="success"}': 0,
        'final_problem_backup_uploads_total{component="zookeeper",kind="snapshot",result="failure"}': 0}


class Taker:
    def __init__(self, outcome: dict | BackupError | None) -> None:
        self.outcome = outcome

    def take(self) -> dict | None:
        if isinstance(self.outcome, BackupError):
            raise self.outcome
        return self.outcome


def test_a_turn_counts_its_upload_or_its_failure_and_a_declined_turn_neither() -> None:
    metrics = backup_agent.Metrics("redis", kinds=(snapshot_agent.SNAPSHOT_KIND,))
    assert snapshot_agent.take_counted(Taker(None), metrics) is None  # type: ignore[arg-type]
    assert snapshot_agent.take_counted(Taker({"id": "a"}), metrics) == {"id": "a"}  # type: ignore[arg-type]
    with pytest.raises(BackupError, match="BGSAVE failed"):
        snapshot_agent.take_counted(Taker(BackupError("redis snapshot on redis-1: BGSAVE failed")), metrics)  # type: ignore[arg-type]
    got = samples(metrics.render())
    assert got['final_problem_backup_uploads_total{component="redis",kind="snapshot",result="success"}'] == 1
    assert got['final_problem_backup_uploads_total{component="redis",kind="snapshot",result="failure"}'] == 1
    assert got[SNAPSHOT_AGE] < 5
