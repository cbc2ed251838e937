"""Precise tests of PostgreSQL's backup configuration as rendered, and of the backup agent's
pure parts (its request signing, time and WAL-name parsing)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from final_problem import config, manifests, versions
from final_problem.charts import postgres as chart
from final_problem.errors import ConfigError
from final_problem.renderers import backup_agent, postgres_backup, program
from final_problem.renderers.backup_agent import S3, BackupError, parse_time, segment_position

ENDPOINT = "http://s3.backups.svc.cluster.local:7070"


def objects(profile: str = "pi", *, backups: bool = True, **postgres: Any) -> list[dict[str, Any]]:
    settings = config.from_mapping({"components": ["base", "postgres"], "backups": backups, "postgres": postgres})
    return manifests.chart_objects(manifests.render(settings, profile)["postgres"])


def statefulset(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == "StatefulSet")


def container(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(c for c in statefulset(objs)["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def server_settings(objs: list[dict[str, Any]]) -> dict[str, str]:
    args = container(objs, "postgres")["args"]
    return dict(a.split("=", 1) for a in args[2::2])


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_backups_off_no_backups(profile: str) -> None:
    objs = objects(profile, backups=False)
    assert "archive_mode" not in server_settings(objs)
    assert [c["name"] for c in statefulset(objs)["spec"]["template"]["spec"]["containers"]] == ["postgres", "metrics"]
    assert not [o for o in objs if o["metadata"]["name"].startswith("postgres-backup")]


def test_every_segment_is_archived_through_the_mounted_script_into_the_volume_spool() -> None:
    objs = objects(backup_endpoint=ENDPOINT, archive_timeout_s=90)
    settings = server_settings(objs)
    assert settings["archive_mode"] == "on" and settings["wal_level"] == "replica"
    assert settings["archive_timeout"] == "90s"
    assert settings["archive_command"] == (
        f"sh /backup/archive-wal.sh {chart.MOUNT}/backup-spool %p %f {chart.ARCHIVE_UPLOAD_WAIT_S}")
    mounts = {m["mountPath"]: m for m in container(objs, "postgres")["volumeMounts"]}
    assert mounts["/backup"]["readOnly"] is True and mounts["/backup"]["name"] == "backup-scripts"
    assert mounts[chart.MOUNT]["name"] == "data"  # the spool is on the server's volume


def test_the_scripts_configmap_holds_the_scripts_the_pod_runs() -> None:
    objs = objects(backup_endpoint=ENDPOINT)
    configmap = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "postgres-backup-scripts")
    assert configmap["data"] == postgres_backup.scripts()
    assert set(configmap["binaryData"]) == {"backup_agent.pyz"}
    assert program.sources(configmap["binaryData"]["backup_agent.pyz"]) == {
        "__main__.py": Path(backup_agent.__file__).read_text()}
    volumes = {v["name"]: v for v in statefulset(objs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["backup-scripts"]["configMap"]["name"] == "postgres-backup-scripts"


def test_the_archive_command_waits_for_the_upload_before_it_succeeds() -> None:
    script = postgres_backup.ARCHIVE_WAL_SH
    waiting = script.index('while [ ! -e "$spool/$name.done" ]')
    # exit 0 only at the end, after the wait; the early exit is the already-uploaded case.
    assert script.rstrip().endswith('rm -f "$spool/$name" "$spool/$name.done"')
    assert script.index('mv -f "$spool/$name.tmp" "$spool/$name"') < waiting
    assert "exit 1" in script[waiting:]


def test_base_backups_on_the_schedule_with_checksums_from_the_postgres_image() -> None:
    objs = objects(backup_endpoint=ENDPOINT, base_backup_hours=6)
    base = container(objs, "base-backup")
    assert base["image"] == versions.POSTGRES_IMAGE
    assert base["command"] == ["sh", "/backup/base-backup.sh", f"{chart.MOUNT}/backup-spool", "6"]
    assert env(base)["POSTGRES_PASSWORD"]["secretKeyRef"]["name"] == "postgres-superuser"
    assert "--manifest-checksums=SHA256" in postgres_backup.BASE_BACKUP_SH
    assert "pg_verifybackup" in postgres_backup.BASE_BACKUP_SH
    assert base["securityContext"]["runAsUser"] == chart.POSTGRES_UID


def test_the_agent_runs_in_the_python_image_with_the_target_and_retention() -> None:
    objs = objects(backup_endpoint=ENDPOINT, backup_bucket="b1", backup_prefix="home", backup_retention_days=14)
    agent = container(objs, "backup")
    assert agent["image"] == versions.PYTHON_IMAGE
    assert agent["command"] == ["python3", "/backup/backup_agent.pyz", "agent", "--spool", f"{chart.MOUNT}/backup-spool",
                                "--retention-days", "14", "--metrics-port", "9188"]
    values = env(agent)
    assert (values["BACKUP_S3_ENDPOINT"], values["BACKUP_S3_BUCKET"], values["BACKUP_S3_PREFIX"]) == (ENDPOINT, "b1", "home")
    assert values["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": chart.BACKUP_SECRET, "key": "access-key-id"}
    assert values["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"] == {"name": chart.BACKUP_SECRET, "key": "secret-access-key"}
    # The spool's files are the server's: the same uid.
    assert agent["securityContext"]["runAsUser"] == chart.POSTGRES_UID


@pytest.mark.parametrize("endpoint, port", [(ENDPOINT, 7070), ("https://s3.eu-west-1.amazonaws.com", 443),
                                            ("http://minio.lan", 80)])
def test_the_server_pods_may_reach_the_target_port_only(endpoint: str, port: int) -> None:
    objs = objects(backup_endpoint=endpoint)
    policy = next(o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "postgres-backup-target")
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert policy["spec"]["egress"] == [{"ports": [{"port": port, "protocol": "TCP"}]}]
    assert policy["spec"]["podSelector"] == statefulset(objs)["spec"]["selector"]


def test_a_script_change_restarts_the_server_pod() -> None:
    digest = lambda objs: statefulset(objs)["spec"]["template"]["metadata"]["annotations"]["final-problem.io/config-sha256"]  # noqa: E731
    assert digest(objects(backups=False)) != digest(objects(backup_endpoint=ENDPOINT))


def test_an_endpoint_that_is_not_a_url_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"postgres.backup_endpoint = 's3.lan:7070'.*: is not an http\(s\) URL. Fix: set"):
        objects(backup_endpoint="s3.lan:7070")


@pytest.mark.parametrize("name", ["base_backup_hours", "backup_retention_days", "archive_timeout_s", "backup_bucket"])
def test_every_backup_setting_has_a_change_rule(name: str) -> None:
    field = chart.PostgresProps.__dataclass_fields__[name]
    assert field.metadata["setting"]["change"] is not None


# -- the agent's pure parts ---------------------------------------------------------------------

def test_requests_are_signed_as_aws_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    # AWS docs, "Signature Calculations for the Authorization Header" (Amazon S3 API reference),
    # example "GET Object": bucket examplebucket, GET /test.txt, Range bytes=0-9, 20130524T000000Z.
    monkeypatch.setattr(backup_agent, "utcnow", lambda: dt.datetime(2013, 5, 24, tzinfo=dt.timezone.utc))
    s3 = S3(endpoint="https://examplebucket.s3.amazonaws.com", bucket="examplebucket", region="us-east-1",
            access_key="AKIAIOSFODNN7EXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    headers = {"Range": "bytes=0-9"}
    s3._sign("GET", "/test.txt", {}, headers,
             "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


@pytest.mark.parametrize("text, problem", [("2026-12-07T03:40:00", "no time zone"), ("yesterday", "not an ISO 8601")])
def test_a_target_time_without_a_zone_or_not_a_time_is_refused(text: str, problem: str) -> None:
    with pytest.raises(BackupError, match=problem):
        parse_time(text)


def test_target_times_are_read_in_utc() -> None:
    assert parse_time("2026-12-07T04:40:00+01:00") == dt.datetime(2026, 12, 7, 3, 40, tzinfo=dt.timezone.utc)
    assert parse_time("2026-12-07T03:40:00.5Z").microsecond == 500_000


def test_segments_follow_each_other_across_a_log_id() -> None:
    assert segment_position("0000000100000000000000FF") + 1 == segment_position("000000010000000100000000")
    # The timeline is not part of the position: a promoted server continues the sequence.
    assert segment_position("000000020000000000000005") == segment_position("000000010000000000000005")
    with pytest.raises(BackupError, match="not a segment name"):
        segment_position("00000002.history")


def test_a_target_that_is_not_a_url_is_refused() -> None:
    with pytest.raises(BackupError, match="not an http"):
        S3(endpoint="s3.lan", bucket="b", region="r", access_key="a", secret_key="s")


# -- the EKS bucket ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(synth) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return synth.templates["final-problem-cluster"]["Resources"]


def of_type(resources: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def backup_bucket(resources: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (match,) = [(n, r) for n, r in of_type(resources, "AWS::S3::Bucket").items() if n.startswith("Backups")]
    return match


def test_the_bucket_is_kms_encrypted_versioned_private_and_retained(cluster: dict[str, Any]) -> None:
    name, bucket = backup_bucket(cluster)
    props = bucket["Properties"]
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms" and rule["BucketKeyEnabled"] is True
    key_name = rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]["Fn::GetAtt"][0]
    key = cluster[key_name]
    assert key["Type"] == "AWS::KMS::Key" and key["Properties"]["EnableKeyRotation"] is True
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    for resource in (bucket, key):
        assert resource["DeletionPolicy"] == "Retain" and resource["UpdateReplacePolicy"] == "Retain"
    policy = next(p for p in of_type(cluster, "AWS::S3::BucketPolicy").values() if p["Properties"]["Bucket"] == {"Ref": name})
    (deny,) = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_replaced_and_deleted_versions_expire_after_the_setting(cluster: dict[str, Any], synth) -> None:  # type: ignore[no-untyped-def]
    _, bucket = backup_bucket(cluster)
    (rule,) = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": synth.stacks.settings.backup_version_days}
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert rule["ExpiredObjectDeleteMarker"] is True and rule["Status"] == "Enabled"


def test_the_pod_identity_role_reaches_its_bucket_and_key_only(cluster: dict[str, Any]) -> None:
    bucket_name, bucket = backup_bucket(cluster)
    key_name = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"]["KMSMasterKeyID"]["Fn::GetAtt"][0]
    associations = [a["Properties"] for a in of_type(cluster, "AWS::EKS::PodIdentityAssociation").values()]
    # One role, associated with each backing-up component's service account.
    assert sorted((p["Namespace"], p["ServiceAccount"]) for p in associations) == [
        ("consul", "consul-backup"), ("postgres", "postgres-backup"), ("redis", "redis"),
        ("zookeeper", "zookeeper-backup")]
    # Logical ids are the deployed associations' own (a new id would replace one): consul's is new.
    assert sorted(of_type(cluster, "AWS::EKS::PodIdentityAssociation")) == [
        "BackupsAssociation77D9207B", "BackupsAssociationConsul481FA82F", "BackupsAssociationRedisEA5E4E70",
        "BackupsAssociationZookeeper9F8901BD"]
    (role_name,) = {p["RoleArn"]["Fn::GetAtt"][0] for p in associations}
    trust = cluster[role_name]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [{"Action": ["sts:AssumeRole", "sts:TagSession"], "Effect": "Allow",
                      "Principal": {"Service": "pods.eks.amazonaws.com"}}]
    (policy,) = [p for p in of_type(cluster, "AWS::IAM::Policy").values()
                 if {"Ref": role_name} in p["Properties"]["Roles"]]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    actions = sorted(a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]))
    assert actions == ["kms:Decrypt", "kms:GenerateDataKey", "s3:AbortMultipartUpload", "s3:DeleteObject",
                       "s3:GetObject", "s3:ListBucket", "s3:PutObject"]
    for statement in statements:
        assert statement["Effect"] == "Allow"
        named = str(statement["Resource"])
        assert bucket_name in named or key_name in named, statement
