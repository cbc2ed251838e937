"""The backup target of each profile as rendered: the Pis' in-cluster S3 server, the EKS bucket
reached through Pod Identity, backups on by default and the setting that turns them off."""

from __future__ import annotations

import json
from typing import Any

import pytest

from final_problem import config, manifests, versions
from final_problem.charts import postgres as chart
from final_problem.constructs import backup_target
from final_problem.errors import ConfigError


def render(profile: str, **values: Any) -> dict[str, list[dict[str, Any]]]:
    settings = config.from_mapping({"components": ["base", "postgres"], **values})
    return {name: manifests.chart_objects(c) for name, c in manifests.render(settings, profile).items()}


def find(objs: list[dict[str, Any]], kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name
                and (namespace is None or o["metadata"].get("namespace") == namespace))


def pod(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objs, "StatefulSet", "postgres")["spec"]["template"]


def container(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(c for c in pod(objs)["spec"]["containers"] if c["name"] == name)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


# -- Pi: the in-cluster server ---------------------------------------------------------------------

def test_the_pis_run_a_restricted_s3_server_with_a_volume_and_health_probes() -> None:
    base = render("pi")["base"]
    namespace = find(base, "Namespace", backup_target.NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    server = find(base, "StatefulSet", backup_target.NAME, backup_target.NAMESPACE)
    spec = server["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["image"] == versions.VERSITYGW_IMAGE
    assert c["args"] == ["--port", ":7070", "--health", "/health", "--quiet", "posix", "/data/buckets"]
    assert c["readinessProbe"]["httpGet"]["path"] == c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["resources"]["limits"] == {"cpu": "500m", "memory": "128Mi"}
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    (claim,) = server["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "16Gi"
    assert claim["spec"]["storageClassName"] == "local-path-retain"
    assert env(c)["ROOT_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": "backup-target-root", "key": "access-key-id"}
    assert env(c)["ROOT_SECRET_ACCESS_KEY"]["secretKeyRef"] == {"name": "backup-target-root", "key": "secret-access-key"}


def test_the_root_key_pair_is_generated_in_the_cluster_once() -> None:
    base = render("pi")["base"]
    job = next(o for o in base if o["kind"] == "Job" and o["metadata"]["namespace"] == backup_target.NAMESPACE)
    spec = json.loads(env(job["spec"]["template"]["spec"]["containers"][0])["GENERATOR_SPEC"])
    assert spec == [{"name": "backup-target-root", "keys": ["access-key-id", "secret-access-key"], "bytes": 32,
                     "labels": {}}]
    assert not [o for o in base if o["kind"] == "Secret"]  # no value in any manifest


def test_only_backup_clients_reach_the_s3_server() -> None:
    policy = find(render("pi")["base"], "NetworkPolicy", "s3-from-backup-clients", backup_target.NAMESPACE)
    assert policy["spec"]["ingress"] == [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {
        "final-problem.io/backup-client": "true"}}}], "ports": [{"port": 7070, "protocol": "TCP"}]}]
    assert pod(render("pi")["postgres"])["metadata"]["labels"]["final-problem.io/backup-client"] == "true"


def test_on_the_pis_postgres_backs_up_to_the_in_cluster_server_by_default() -> None:
    objs = render("pi")["postgres"]
    values = env(container(objs, "backup"))
    assert values["BACKUP_S3_ENDPOINT"] == "http://s3.backups.svc.cluster.local:7070"
    assert values["BACKUP_S3_KEY_PAIR_FROM"] == "backups/backup-target-root"
    assert "AWS_ACCESS_KEY_ID" not in values
    # The API token is projected into the backup container alone; the pod has no default token.
    spec = pod(objs)["spec"]
    assert spec["automountServiceAccountToken"] is False and spec["serviceAccountName"] == "postgres-backup"
    token_mounts = [c["name"] for c in spec["containers"] for m in c.get("volumeMounts", []) if m["name"] == "backup-token"]
    assert token_mounts == ["backup"]
    role = find(objs, "Role", "postgres-postgres-backup", backup_target.NAMESPACE)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["backup-target-root"],
                              "verbs": ["get"]}]
    binding = find(objs, "RoleBinding", "postgres-postgres-backup", backup_target.NAMESPACE)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "postgres-backup", "namespace": "postgres"}]


def test_the_pis_backup_egress_reaches_the_server_and_the_api_only() -> None:
    policy = find(render("pi")["postgres"], "NetworkPolicy", "postgres-backup-target", "postgres")
    assert policy["spec"]["egress"] == [
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "backups"}},
                 "podSelector": {"matchLabels": backup_target.server_selector()}}],
         "ports": [{"port": 7070, "protocol": "TCP"}]},
        {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]},
    ]


# -- EKS: the stack's bucket -----------------------------------------------------------------------

def test_eks_runs_no_s3_server() -> None:
    assert not [o for o in render("eks")["base"] if o["metadata"].get("namespace") == backup_target.NAMESPACE]


def test_on_eks_postgres_backs_up_to_the_stack_bucket_through_pod_identity() -> None:
    objs = render("eks")["postgres"]
    values = env(container(objs, "backup"))
    # Rendered without the stack: placeholders that say where each value comes from.
    assert values["BACKUP_S3_BUCKET"] == "<BackupBucket output of the cluster stack>"
    assert not {"AWS_ACCESS_KEY_ID", "BACKUP_S3_KEY_PAIR_FROM"} & set(values)
    assert pod(objs)["spec"]["serviceAccountName"] == "postgres-backup"
    policy = find(objs, "NetworkPolicy", "postgres-backup-target", "postgres")
    assert policy["spec"]["egress"][1] == {
        "to": [{"ipBlock": {"cidr": "169.254.170.23/32"}}, {"ipBlock": {"cidr": "fd00:ec2::23/128"}}],
        "ports": [{"port": 80, "protocol": "TCP"}]}


def test_the_stack_hands_its_bucket_and_region_to_the_chart(synth) -> None:  # type: ignore[no-untyped-def]
    resources = synth.templates["final-problem-cluster"]["Resources"]
    (bucket,) = [n for n, r in resources.items() if r["Type"] == "AWS::S3::Bucket" and n.startswith("Backups")]
    manifest = next(r for r in resources.values() if r["Type"] == "Custom::AWSCDK-EKS-KubernetesResource"
                    and "postgres-backup" in json.dumps(r["Properties"]["Manifest"]))
    parts = manifest["Properties"]["Manifest"]["Fn::Join"][1]
    text = "".join(p if isinstance(p, str) else f"<{p['Ref']}>" for p in parts)
    assert '{"name":"BACKUP_S3_BUCKET","value":"<%s>"}' % bucket in text
    assert '{"name":"BACKUP_S3_ENDPOINT","value":"https://s3.<AWS::Region>.<AWS::URLSuffix>"}' in text
    assert '{"name":"BACKUP_S3_REGION","value":"<AWS::Region>"}' in text
    # An association names the pod's service account.
    associations = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::EKS::PodIdentityAssociation"]
    assert ("postgres", chart.BACKUP_SERVICE_ACCOUNT) in {(a["Namespace"], a["ServiceAccount"]) for a in associations}
    # dist/eks/ carries the placeholders, not CloudFormation tokens.
    dist = json.dumps(synth.stacks.cluster.platform.objects["postgres"])
    assert "${Token" not in dist and "<BackupBucket output of the cluster stack>" in dist


# -- on by default, off by a setting ---------------------------------------------------------------

@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_backups_run_by_default(profile: str) -> None:
    objs = render(profile)["postgres"]
    assert {"base-backup", "backup"} <= {c["name"] for c in pod(objs)["spec"]["containers"]}


def test_backups_off_leaves_out_the_server_and_the_service_account() -> None:
    rendered = render("pi", backups=False)
    assert not [o for o in rendered["base"] if o["metadata"].get("namespace") == backup_target.NAMESPACE]
    assert "serviceAccountName" not in pod(rendered["postgres"])["spec"]
    assert "final-problem.io/backup-client" not in pod(rendered["postgres"])["metadata"]["labels"]


def test_a_target_while_backups_are_off_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"postgres.backup_endpoint = 'http://nas.lan:9000'.*names a backup target "
                                          r"while the cluster setting backups is false.*Fix: set backups=true"):
        render("pi", backups=False, postgres={"backup_endpoint": "http://nas.lan:9000"})


@pytest.mark.parametrize("name", ["backups", "backup_server_storage_gib"])
def test_the_target_settings_have_change_rules(name: str) -> None:
    assert config.Settings.__dataclass_fields__[name].metadata["setting"]["change"] is not None


# -- freshness ------------------------------------------------------------------------------------

def test_the_freshness_metrics_are_annotated_for_scraping_and_admitted_from_monitoring() -> None:
    objs = render("pi")["postgres"]
    service = find(objs, "Service", "postgres-backup-metrics", "postgres")
    assert service["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "9188",
                                                  "prometheus.io/path": "/metrics"}
    assert service["spec"]["selector"] == find(objs, "StatefulSet", "postgres")["spec"]["selector"]["matchLabels"]
    agent = container(objs, "backup")
    assert agent["command"][-2:] == ["--metrics-port", "9188"]
    assert agent["ports"] == [{"containerPort": 9188, "name": "backup-metrics"}]
    metrics_policy = find(objs, "NetworkPolicy", "postgres-metrics", "postgres")
    assert {"port": 9188, "protocol": "TCP"} in metrics_policy["spec"]["ingress"][0]["ports"]


def test_the_backup_sidecars_never_take_the_server_out_of_its_service() -> None:
    objs = render("pi")["postgres"]
    assert container(objs, "base-backup")["readinessProbe"]["exec"]["command"] == ["true"]
    assert "tcpSocket" in container(objs, "backup")["readinessProbe"]
