"""Precise tests of the snapshot backups as rendered (Redis and ZooKeeper sidecars, Consul's
CronJob) and of the snapshot agent's pure parts (checksums, log walking, choosing a snapshot).

No Consul server runs here (BUSL-1.1): its CronJob, token and policies are checked as rendered;
only a cluster proves a save with that token and its upload."""

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
from final_problem.renderers import backup_agent, program, snapshot_agent
from final_problem.renderers.backup_agent import BackupError

ENDPOINT = "http://s3.backups.svc.cluster.local:7070"


#: Consul renders on the Pis only where Envoy can run (a 48-bit address space: final_problem.profiles).
PI_CONSUL = {"pi_arm64_va_bits": 48}


def objects(component: str, profile: str = "pi", *, cluster: dict[str, Any] | None = None,
            **values: Any) -> list[dict[str, Any]]:
    cluster = {**(PI_CONSUL if component == "consul" and profile == "pi" else {}), **(cluster or {})}
    settings = config.from_mapping({"components": ["base", component], component: values, **cluster})
    return manifests.chart_objects(manifests.render(settings, profile)[component])


def named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def pod_spec(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return named(objs, "StatefulSet", name)["spec"]["template"]["spec"]


def container(objs: list[dict[str, Any]], statefulset: str, name: str) -> dict[str, Any]:
    return next(c for c in pod_spec(objs, statefulset)["containers"] if c["name"] == name)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def backup_pod(objs: list[dict[str, Any]], component: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod template that backs ``component`` up, and its container that talks to the target:
    the members' ``backup`` sidecar, or Consul's CronJob and its ``upload`` container."""
    if component == "consul":
        template = named(objs, "CronJob", "consul-snapshot")["spec"]["jobTemplate"]["spec"]["template"]
        name = "upload"
    else:
        template, name = named(objs, "StatefulSet", component)["spec"]["template"], "backup"
    return template, next(c for c in template["spec"]["containers"] if c["name"] == name)


def acl_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The spec the chart renders into Consul's ACL Job."""
    job = next(o for o in objs if o["kind"] == "Job" and o["metadata"]["name"].startswith("consul-acl-init"))
    return json.loads(env(job["spec"]["template"]["spec"]["containers"][0])["CONSUL_INIT_SPEC"])


@pytest.mark.parametrize("profile", ["eks", "pi"])
@pytest.mark.parametrize("component", ["redis", "zookeeper", "consul"])
def test_backups_off_no_backups(component: str, profile: str) -> None:
    objs = objects(component, profile, cluster={"backups": False})
    assert not [o for o in objs if "backup" in o["metadata"]["name"] or o["kind"] == "CronJob"]
    for o in objs:
        if o["kind"] == "StatefulSet":
            assert "backup" not in [c["name"] for c in o["spec"]["template"]["spec"]["containers"]]


@pytest.mark.parametrize("component", ["redis", "zookeeper", "consul"])
def test_the_programs_configmap_holds_the_agent_and_its_s3_client(component: str) -> None:
    configmap = named(objects(component, "eks", backup_endpoint=ENDPOINT), "ConfigMap", f"{component}-backup-scripts")
    assert "data" not in configmap and set(configmap["binaryData"]) == {"snapshot_agent.pyz"}
    assert program.sources(configmap["binaryData"]["snapshot_agent.pyz"]) == {
        "__main__.py": Path(snapshot_agent.__file__).read_text(), "backup_agent.py": Path(backup_agent.__file__).read_text()}


def test_each_redis_member_runs_the_sidecar_with_its_admin_user_on_its_data_volume() -> None:
    objs = objects("redis", backup_endpoint=ENDPOINT, backup_bucket="b1", backup_prefix="home",
                   backup_interval_minutes=30, backup_retention_days=14)
    agent = container(objs, "redis", "backup")
    assert agent["image"] == versions.PYTHON_IMAGE
    assert agent["command"] == ["python3", "/backup/snapshot_agent.pyz", "redis", "--data-dir", "/data", "--port", "6379",
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
    assert agent["command"] == ["python3", "/backup/snapshot_agent.pyz", "zookeeper", "--data-dir", "/data",
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
    name = {"consul": "consul-backup-target", "redis": "redis-target", "zookeeper": "zookeeper-backup-target"}[component]
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


SERVICE_ACCOUNTS = {"redis": "redis", "zookeeper": "zookeeper-backup", "consul": "consul-backup"}


@pytest.mark.parametrize("component", ["redis", "zookeeper", "consul"])
def test_on_the_pis_snapshots_go_to_the_in_cluster_server_by_default(component: str) -> None:
    objs = objects(component, "pi")
    template, agent = backup_pod(objs, component)
    values = env(agent)
    assert values["BACKUP_S3_ENDPOINT"] == "http://s3.backups.svc.cluster.local:7070"
    assert values["BACKUP_S3_KEY_PAIR_FROM"] == "backups/backup-target-root"
    assert "AWS_ACCESS_KEY_ID" not in values
    account = SERVICE_ACCOUNTS[component]
    assert template["spec"]["serviceAccountName"] == account and template["spec"]["automountServiceAccountToken"] is False
    # The S3 server admits the pods by this label.
    assert template["metadata"]["labels"]["final-problem.io/backup-client"] == "true"
    # The API token is in the backup container alone (for Consul, not in the save container).
    assert [c["name"] for c in template["spec"]["containers"] + template["spec"].get("initContainers", [])
            for m in c.get("volumeMounts", []) if m["name"] == "backup-token"] == [agent["name"]]
    binding = named(objs, "RoleBinding", f"{component}-{account}")
    assert binding["metadata"]["namespace"] == "backups"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": component}]
    assert [o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == account]


@pytest.mark.parametrize("component", ["redis", "zookeeper", "consul"])
def test_on_eks_snapshots_go_to_the_stack_bucket_through_pod_identity(component: str) -> None:
    objs = objects(component, "eks")
    template, agent = backup_pod(objs, component)
    values = env(agent)
    assert values["BACKUP_S3_BUCKET"] == "<BackupBucket output of the cluster stack>"
    assert not {"AWS_ACCESS_KEY_ID", "BACKUP_S3_KEY_PAIR_FROM"} & set(values)
    assert template["spec"]["serviceAccountName"] == SERVICE_ACCOUNTS[component]
    policy = named(objs, "NetworkPolicy", f"{SERVICE_ACCOUNTS[component]}-target")
    assert {"ports": [{"port": 443, "protocol": "TCP"}]} in policy["spec"]["egress"]
    # Pod Identity's credentials come from the agent on the node.
    assert {"to": [{"ipBlock": {"cidr": "169.254.170.23/32"}}, {"ipBlock": {"cidr": "fd00:ec2::23/128"}}],
            "ports": [{"port": 80, "protocol": "TCP"}]} in policy["spec"]["egress"]


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


@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_consul_snapshots_are_a_cronjob_by_default_with_a_token_of_acl_write_only(profile: str) -> None:
    objs = objects("consul", profile, backup_interval_minutes=120)
    job = named(objs, "CronJob", "consul-snapshot")
    assert job["spec"]["schedule"] == "0 */2 * * *" and job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (save,) = pod["initContainers"]
    assert save["image"] == versions.CONSUL_IMAGE
    assert save["command"][-1].endswith("consul snapshot save -token-file=/consul/token/token /work/consul.snap")
    assert save["command"][-1].startswith("date -u")  # the recovery point, before the save
    # The token as a file, from a volume of the Secret mounted in the save container alone.
    (token,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "consul-snapshot-token"]
    assert {"name": token["name"], "mountPath": "/consul/token", "readOnly": True} in save["volumeMounts"]
    assert token["name"] not in [m["name"] for c in pod["containers"] for m in c["volumeMounts"]]
    assert env(save)["CONSUL_HTTP_ADDR"] == "https://consul-server.consul.svc:8501"
    (upload,) = pod["containers"]
    assert upload["command"][:4] == ["python3", "/backup/snapshot_agent.pyz", "upload", "consul"]
    # The token: the one right a snapshot needs, made by the ACL Job, readable by it.
    assert consul_init.SNAPSHOT_RULES == 'acl = "write"\n'
    assert acl_spec(objs)["snapshot"] is True
    role = named(objs, "Role", "consul-init")
    assert any("consul-snapshot-token" in (r.get("resourceNames") or []) for r in role["rules"])
    # The servers admit the snapshot pods on HTTPS.
    server_policy = named(objs, "NetworkPolicy", "consul-server")
    admitted = [r for r in server_policy["spec"]["ingress"]
                if any(p.get("podSelector", {}).get("matchLabels") == consul_chart.SNAPSHOT_POD_LABELS
                       for p in r["from"])]
    assert admitted and admitted[0]["ports"] == [{"port": 8501, "protocol": "TCP"}]


def test_consul_snapshots_to_an_endpoint_use_the_users_secret() -> None:
    objs = objects("consul", "eks", backup_endpoint="http://minio.lan:9000", backup_bucket="b1", backup_prefix="home",
                   backup_region="eu-west-1")
    values = env(backup_pod(objs, "consul")[1])
    assert (values["BACKUP_S3_ENDPOINT"], values["BACKUP_S3_BUCKET"], values["BACKUP_S3_PREFIX"],
            values["BACKUP_S3_REGION"]) == ("http://minio.lan:9000", "b1", "home", "eu-west-1")
    assert values["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": "consul-backup-target", "key": "access-key-id"}
    assert values["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"] == {"name": "consul-backup-target",
                                                               "key": "secret-access-key"}
    assert "BACKUP_S3_KEY_PAIR_FROM" not in values


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    assert set(selector) <= {"matchLabels"}, selector  # no matchExpressions in this chart's policies
    return (selector.get("matchLabels") or {}).items() <= labels.items()


#: Egress rules every pod of the consul namespace has (RestrictedNamespace: cluster DNS).
DNS = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
               "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
       "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
SERVERS_HTTPS = {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "server",
                                                         "app.kubernetes.io/instance": "consul",
                                                         "app.kubernetes.io/name": "consul"}}}],
                 "ports": [{"port": 8501, "protocol": "TCP"}]}
TARGETS = {
    "eks": [{"ports": [{"port": 443, "protocol": "TCP"}]},
            {"to": [{"ipBlock": {"cidr": "169.254.170.23/32"}}, {"ipBlock": {"cidr": "fd00:ec2::23/128"}}],
             "ports": [{"port": 80, "protocol": "TCP"}]}],
    "pi": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "backups"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/component": "s3-server",
                                                    "app.kubernetes.io/instance": "base",
                                                    "app.kubernetes.io/name": "base"}}}],
            "ports": [{"port": 7070, "protocol": "TCP"}]},
           {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}],
}


@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_the_consul_snapshot_pods_reach_dns_the_servers_https_and_the_target_only(profile: str) -> None:
    """Every egress rule of every policy that selects the CronJob's pods (policies add up):
    DNS, the servers' HTTPS port, and the profile's target (Pis: the S3 server and the API
    server for its key pair; EKS: S3 over TLS and the Pod Identity agent)."""
    objs = objects("consul", profile)
    labels = backup_pod(objs, "consul")[0]["metadata"]["labels"]
    policies = [o for o in objs if o["kind"] == "NetworkPolicy" and _selects(o, labels)]
    assert all(o["metadata"]["namespace"] == "consul" for o in policies)
    egress = [rule for o in policies if "Egress" in o["spec"]["policyTypes"] for rule in o["spec"].get("egress", [])]
    def key(rule: dict[str, Any]) -> str:
        return json.dumps(rule, sort_keys=True)
    assert sorted(map(key, egress)) == sorted(map(key, [DNS, SERVERS_HTTPS, *TARGETS[profile]]))
    # A default-deny policy selects them too, so nothing else is allowed.
    assert any(o["spec"]["podSelector"] == {} and o["spec"]["policyTypes"] == ["Ingress", "Egress"]
               and not o["spec"].get("egress") for o in policies)


@pytest.mark.parametrize("target", ["eks", "pi-full"])
def test_only_the_snapshot_pods_get_the_snapshot_token(target: str) -> None:
    """The snapshot token (acl:write, as strong as a management token for ACLs) reaches the
    save container of the CronJob and no other container of the platform; only the ACL Job's
    account may read it through the API, and the CronJob's own account holds no right in the
    consul namespace."""
    from tests.conftest import rendered

    everything = [o for objs in rendered(target).values() for o in objs]
    holders = []
    for o in everything:
        spec = o.get("spec") or {}
        template = (spec.get("jobTemplate", {}).get("spec") or spec).get("template")
        if not template:
            continue
        pod = template["spec"]
        volumes = {v["name"] for v in pod.get("volumes", [])
                   if "consul-snapshot-token" in json.dumps(v)}
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            if "consul-snapshot-token" in json.dumps(c.get("env", []) + c.get("envFrom", [])) or volumes & {
                    m["name"] for m in c.get("volumeMounts", [])}:
                holders.append((o["kind"], o["metadata"]["name"], c["name"]))
    assert holders == [("CronJob", "consul-snapshot", "save")]
    readers = []
    for o in everything:
        if o["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in o.get("rules", []):
            if "secrets" in rule.get("resources", []) and {"get", "list", "watch", "*"} & set(rule["verbs"]) and (
                    not rule.get("resourceNames") or "consul-snapshot-token" in rule["resourceNames"]):
                if o["kind"] == "ClusterRole" or o["metadata"]["namespace"] == "consul":
                    readers.append(o["metadata"]["name"])
    assert readers == ["consul-init"]
    bound = [o["metadata"]["name"] for o in everything if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
             and {"kind": "ServiceAccount", "name": "consul-backup", "namespace": "consul"} in o.get("subjects", [])]
    assert all(o["metadata"]["namespace"] == "backups" for o in everything
               if o["kind"] == "RoleBinding" and o["metadata"]["name"] in bound)


def test_without_backups_the_acl_job_makes_no_snapshot_token() -> None:
    objs = objects("consul", "eks", cluster={"backups": False})
    assert "snapshot" not in acl_spec(objs)
    role = named(objs, "Role", "consul-init")
    assert not any("consul-snapshot-token" in (r.get("resourceNames") or []) for r in role["rules"])
    server_policy = named(objs, "NetworkPolicy", "consul-server")
    assert consul_chart.SNAPSHOT_POD_LABELS not in [p.get("podSelector", {}).get("matchLabels")
                                                     for r in server_policy["spec"]["ingress"] for p in r["from"]]


@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_turning_consul_snapshots_on_or_off_leaves_the_servers_as_they_are(profile: str) -> None:
    def servers(objs: list[dict[str, Any]]) -> dict[str, Any]:
        return named(objs, "StatefulSet", "consul-server")
    assert servers(objects("consul", profile)) == servers(objects("consul", profile, cluster={"backups": False}))


@pytest.mark.parametrize("minutes, schedule", [(15, "*/15 * * * *"), (60, "0 * * * *"), (360, "0 */6 * * *"),
                                               (1440, "0 0 * * *"), (2880, "0 0 */2 * *"), (90, None), (25, None)])
def test_cron_schedules_keep_an_even_interval(minutes: int, schedule: str | None) -> None:
    assert consul_chart.cron_schedule(minutes) == schedule


@pytest.mark.parametrize("values", [{}, {"backup_endpoint": ENDPOINT}])
def test_an_interval_no_cronjob_keeps_is_refused_in_one_line(values: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"consul.backup_interval_minutes = 90.*not a schedule a CronJob can keep") as e:
        objects("consul", "eks", backup_interval_minutes=90, **values)
    assert "\n" not in str(e.value)


def test_consul_interval_longer_than_crontab_day_steps_keep_is_refused_by_range() -> None:
    with pytest.raises(ConfigError, match=r"consul.backup_interval_minutes = 43200.*must be 5 to 40320"):
        objects("consul", "eks", backup_interval_minutes=30 * 1440)


@pytest.mark.parametrize("component", ["redis", "zookeeper", "consul"])
def test_an_endpoint_that_is_not_a_url_is_refused_in_one_line(component: str) -> None:
    with pytest.raises(ConfigError, match=rf"{component}.backup_endpoint = 's3.lan:7070'.*is not an http\(s\) URL"):
        objects(component, "eks", backup_endpoint="s3.lan:7070")


@pytest.mark.parametrize("name", [i.name for i in snapshot_backup.SnapshotBackupSettings.infos()])
def test_every_backup_setting_has_a_change_rule(name: str) -> None:
    for props in (redis_chart.RedisProps, zookeeper_chart.ZooKeeperProps, consul_chart.ConsulProps):
        assert next(i for i in props.infos() if i.name == name).change is not None


def test_consul_declares_its_backup_settings_once_and_says_what_they_mean_for_a_cronjob() -> None:
    from final_problem.changes import Effect

    shared = {i.name: i for i in snapshot_backup.SnapshotBackupSettings.infos()}
    consul = {i.name: i for i in consul_chart.ConsulProps.infos()}
    # The fields are the shared class's (one declaration, one default).
    for name in shared:
        assert consul_chart.ConsulProps.__dataclass_fields__[name] is snapshot_backup.SnapshotBackupSettings.__dataclass_fields__[name]
    # A CronJob restarts no pod that runs: what the sidecars roll, Consul's change does not.
    for name in ("backup_endpoint", "backup_region", "backup_interval_minutes", "backup_retention_days"):
        assert shared[name].change.effect == Effect.ROLLING and consul[name].change.effect == Effect.NOTHING
    assert "CronJob" in consul["backup_interval_minutes"].doc and "Redis" not in consul["backup_interval_minutes"].doc
    assert "Redis" not in shared["backup_interval_minutes"].doc
    # Redis and ZooKeeper keep the shared meaning.
    assert {i.name: i for i in redis_chart.RedisProps.infos()}["backup_region"] == shared["backup_region"]


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
