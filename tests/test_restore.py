"""Restore inside the cluster: ``<component>.restore_to`` renders a ``restore`` init container,
``restore_bucket`` lets the EKS role read an earlier deploy's bucket, and the init container's
program restores only an empty volume."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from cdk_nag import AwsSolutionsChecks

from final_problem import capacity, config, manifests, policy
from final_problem.changes import Effect
from final_problem.charts import postgres as postgres_chart
from final_problem.charts import redis as redis_chart
from final_problem.charts import zookeeper as zookeeper_chart
from final_problem.constructs import snapshot_backup
from final_problem.errors import ConfigError
from final_problem.renderers import postgres_backup, program, restore_init, snapshot_agent
from final_problem.renderers.backup_agent import BackupError
from final_problem.stacks.backups import BackupBucket
from tests.conftest import new_app
from tests.test_plan import lines, of, plan_of

COMPONENTS = ("postgres", "redis", "zookeeper")
#: The StatefulSet of each component whose pods restore.
SERVER = {"postgres": "postgres", "redis": "redis", "zookeeper": "zookeeper"}
OLD_BUCKET = "final-problem-cluster-backupsbucket-0123abcd"


def render(profile: str, **values: Any) -> dict[str, list[dict[str, Any]]]:
    settings = config.from_mapping({"components": ["base", *COMPONENTS], **values})
    return {name: manifests.chart_objects(c) for name, c in manifests.render(settings, profile).items()}


def pod_spec(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == name)["spec"]["template"]["spec"]


def restore_of(objs: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((c for c in pod_spec(objs, name).get("initContainers") or [] if c["name"] == "restore"), None)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def all_restoring(**values: Any) -> dict[str, Any]:
    return {c: {"restore_to": "latest"} for c in COMPONENTS} | values


# -- rendered ------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_no_restore_container_unless_restore_to_is_set(profile: str) -> None:
    objs = render(profile)
    for component in COMPONENTS:
        assert restore_of(objs[component], SERVER[component]) is None
    assert not [c for c in pod_spec(render(profile, **all_restoring())["redis"], "redis-sentinel").get(
        "initContainers") or [] if c["name"] == "restore"], "Sentinels keep no data to restore"


@pytest.mark.parametrize("profile", ["eks", "pi"])
@pytest.mark.parametrize("component, args", [
    ("postgres", ["--pgdata", postgres_chart.PGDATA, "--wal-dir", postgres_chart.RESTORE_WAL_DIR]),
    ("redis", ["--data-dir", redis_chart.DATA_DIR]),
    ("zookeeper", ["--data-dir", zookeeper_chart.DATA_DIR, "--log-dir", zookeeper_chart.DATA_LOG_DIR]),
])
def test_restore_to_runs_the_restore_program_from_the_scripts_configmap_first(profile: str, component: str,
                                                                             args: list[str]) -> None:
    objs = render(profile, **{component: {"restore_to": "2026-12-07T03:40:00Z"}})[component]
    spec = pod_spec(objs, SERVER[component])
    restore = restore_of(objs, SERVER[component])
    assert restore is not None and spec["initContainers"][0] is restore, "the restore runs before anything else"
    assert restore["command"] == ["python3", "/backup/restore_init.pyz", component, "--to", "2026-12-07T03:40:00Z",
                                  *args]
    # The program is the one in the scripts ConfigMap its sidecars mount.
    (configmap,) = [o for o in objs if o["kind"] == "ConfigMap" and "backup-scripts" in o["metadata"]["name"]]
    assert program.sources(configmap["binaryData"]["restore_init.pyz"])["__main__.py"] == \
        Path(restore_init.__file__).read_text()
    mounts = {m["mountPath"]: m for m in restore["volumeMounts"]}
    assert mounts["/backup"]["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mounts["/backup"]["name"])
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    # The data volumes, writable; the server's uid, which owns what it writes.
    data_paths = [a for a in args if a.startswith("/")]
    for path in data_paths:
        mount = next(m for p, m in mounts.items() if path.startswith(p) and p != "/backup")
        assert not mount.get("readOnly")
    server = spec["containers"][0]
    assert restore["securityContext"]["runAsUser"] == server["securityContext"]["runAsUser"]
    # Sized as the server: the pod reserves no more than before (max of init vs sum of containers).
    assert restore["resources"] == server["resources"]


@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_the_restoring_pods_pass_every_policy_check_and_reserve_nothing_more(profile: str) -> None:
    before = render(profile)
    after = render(profile, **all_restoring(), restore_bucket=OLD_BUCKET)
    objs = [o for chart in after.values() for o in chart]
    for check in (policy.check_restricted, policy.check_resources, policy.check_probes, policy.check_images,
                  policy.check_network_policies, policy.check_no_secret_values, policy.check_labels,
                  policy.check_quorum_sets):
        assert check(objs) == [], check.__name__
    for component in COMPONENTS:
        with_init, without = pod_spec(after[component], SERVER[component]), pod_spec(before[component], SERVER[component])
        assert with_init["initContainers"]
        assert capacity.pod_requests(with_init) == capacity.pod_requests(without), component


def test_the_restore_reads_the_earlier_bucket_on_eks_only() -> None:
    eks = render("eks", **all_restoring(), restore_bucket=OLD_BUCKET)
    for component in COMPONENTS:
        restore = restore_of(eks[component], SERVER[component])
        assert restore is not None
        assert env(restore)["BACKUP_S3_BUCKET"] == OLD_BUCKET
        # The sidecars keep writing to the new stack's bucket.
        sidecar = next(c for c in pod_spec(eks[component], SERVER[component])["containers"] if c["name"] == "backup")
        assert env(sidecar)["BACKUP_S3_BUCKET"] != OLD_BUCKET
        # Only the target's environment: no password of the server's.
        assert all(n.startswith(("BACKUP_S3_", "AWS_")) or n in ("PYTHONDONTWRITEBYTECODE", "POD_NAME")
                   for n in env(restore)), env(restore)
    pi = render("pi", **all_restoring(), restore_bucket=OLD_BUCKET)
    assert env(restore_of(pi["postgres"], "postgres"))["BACKUP_S3_BUCKET"] == "final-problem-backups"
    # A component's own endpoint is read as it is.
    own = render("eks", postgres={"restore_to": "latest", "backup_endpoint": "http://nas.lan:7070",
                                  "backup_bucket": "mine"}, restore_bucket=OLD_BUCKET)
    assert env(restore_of(own["postgres"], "postgres"))["BACKUP_S3_BUCKET"] == "mine"


@pytest.mark.parametrize("value, problem", [
    ("yesterday", "neither latest nor an ISO 8601 time"),
    ("2026-12-07T03:40:00", "neither latest nor an ISO 8601 time"),
])
@pytest.mark.parametrize("component", COMPONENTS)
def test_a_restore_time_that_is_not_one_is_refused_in_one_line(component: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"{component}.restore_to.*{problem}.*Fix: set {component}.restore_to=latest"
                       ) as raised:
        render("pi", **{component: {"restore_to": value}})
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("component", COMPONENTS)
def test_a_restore_without_backups_is_refused(component: str) -> None:
    with pytest.raises(ConfigError, match=f"{component}.restore_to.*backups=true"):
        render("pi", backups=False, **{component: {"restore_to": "latest"}})


@pytest.mark.parametrize("name", ["Upper-Case", "ab", "-starts-with-dash", "x" * 64])
def test_a_restore_bucket_that_is_no_bucket_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="restore_bucket.*not an S3 bucket name"):
        config.from_mapping({"restore_bucket": name})


# -- change rules ----------------------------------------------------------------------------------

@pytest.mark.parametrize("component, pods", [
    ("postgres", ["postgres-0"]), ("redis", ["redis-2", "redis-1", "redis-0"]),
    ("zookeeper", ["zookeeper-2", "zookeeper-1", "zookeeper-0"]),
])
def test_turning_restore_on_is_a_rolling_restart_never_refused(component: str, pods: list[str]) -> None:
    result = of(plan_of(component, "pi", after={component: {"restore_to": "latest"}}), component)
    assert result.effect == Effect.ROLLING, lines(result)
    (line,) = [t for t in lines(result) if t.startswith(f"{component}.restore_to")]
    assert "rolling restart" in line and "no volume that holds data is changed" in line
    assert [p for _, names in result.restarts for p in names if p.startswith(SERVER[component] + "-")] == pods


def test_naming_a_restore_bucket_changes_nothing_by_itself() -> None:
    cluster = of(plan_of("base", after={"restore_bucket": OLD_BUCKET}), "cluster")
    assert cluster.effect == Effect.NOTHING
    assert any(t.startswith("restore_bucket") and f"-> {OLD_BUCKET}: nothing" in t for t in lines(cluster)), lines(cluster)


# -- the EKS role ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def restore_stack() -> tuple[cdk.App, dict[str, Any]]:
    """The backup bucket construct alone, with a restore bucket named."""
    app = new_app()
    stack = cdk.Stack(app, "Probe", env=cdk.Environment(account="123456789012", region="eu-west-1"))
    settings = config.from_mapping({"components": ["base", *COMPONENTS], "restore_bucket": OLD_BUCKET})
    BackupBucket(stack, "Backups", cluster=types.SimpleNamespace(cluster_name="probe"), settings=settings)
    return app, app.synth().get_stack_by_name("Probe").template["Resources"]


def test_the_role_may_read_and_decrypt_the_restore_bucket_through_s3_only(restore_stack: tuple[cdk.App, dict]) -> None:
    _, resources = restore_stack
    (policy_doc,) = [r["Properties"]["PolicyDocument"] for r in resources.values() if r["Type"] == "AWS::IAM::Policy"]
    by_sid = {s.get("Sid"): s for s in policy_doc["Statement"]}
    arn = f"arn:aws:s3:::{OLD_BUCKET}"

    def text(value: Any) -> str:
        if isinstance(value, dict) and "Fn::Join" in value:
            return "".join(p if isinstance(p, str) else f"<{p.get('Ref')}>" for p in value["Fn::Join"][1])
        return value

    assert by_sid["RestoreList"]["Action"] == "s3:ListBucket" and text(by_sid["RestoreList"]["Resource"]).endswith(
        f":s3:::{OLD_BUCKET}")
    assert by_sid["RestoreRead"]["Action"] == "s3:GetObject" and text(by_sid["RestoreRead"]["Resource"]).endswith(
        f":s3:::{OLD_BUCKET}/*")
    decrypt = by_sid["RestoreDecrypt"]
    assert decrypt["Action"] == "kms:Decrypt"
    assert text(decrypt["Resource"]).endswith(":kms:eu-west-1:123456789012:key/*")
    assert decrypt["Condition"]["StringEquals"] == {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}
    context = [text(v) for v in decrypt["Condition"]["StringLike"]["kms:EncryptionContext:aws:s3:arn"]]
    assert [c.split(":s3:::", 1)[1] for c in context] == [OLD_BUCKET, f"{OLD_BUCKET}/*"]
    # Read only: nothing of the old bucket is written or deleted.
    for statement in policy_doc["Statement"]:
        if OLD_BUCKET in str(statement["Resource"]) or statement.get("Sid") == "RestoreDecrypt":
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert not [a for a in actions if a in ("s3:PutObject", "s3:DeleteObject", "kms:GenerateDataKey")]
    assert arn  # the partition is a token in the template


def test_cdk_nag_finds_nothing_unacknowledged_with_a_restore_bucket(restore_stack: tuple[cdk.App, dict]) -> None:
    app, _ = restore_stack
    report = AwsSolutionsChecks().validate_scope(app)
    assert [f"{v.rule_name} at {[r.resource_logical_id for r in v.violating_resources]}"
            for v in report.violations] == []


@pytest.mark.tools
def test_cfn_lint_finds_no_error_with_a_restore_bucket(restore_stack: tuple[cdk.App, dict], tmp_path: Path) -> None:
    import json

    _, resources = restore_stack
    template = tmp_path / "probe.template.json"
    template.write_text(json.dumps({"Resources": resources}))
    done = subprocess.run([sys.executable, "-m", "cfnlint", "--format", "json", str(template)],
                          capture_output=True, text=True, check=False)
    findings = json.loads(done.stdout or "[]")
    assert [f"{f['Rule']['Id']}: {f['Message']}" for f in findings if f["Level"] == "Error"] == []


# -- the program -----------------------------------------------------------------------------------

def test_the_snapshot_agent_ignores_the_restore_marker() -> None:
    assert snapshot_agent.RESTORE_MARKER == restore_init.RESTORING


def test_a_volume_that_holds_data_is_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "dump.rdb").write_bytes(b"live data")
    called: list[int] = []
    said = restore_init.restore_if_empty("redis", dirs=[str(data)], marker=str(data / restore_init.RESTORING),
                                         restore=lambda: called.append(1) or "restored")
    assert called == [] and "left alone" in said
    assert (data / "dump.rdb").read_bytes() == b"live data" and not (data / restore_init.RESTORING).exists()


@pytest.mark.parametrize("entries", [[], ["lost+found"]])
def test_an_empty_volume_is_restored(tmp_path: Path, entries: list[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for entry in entries:
        (data / entry).mkdir()
    marker = data / restore_init.RESTORING
    seen: list[bool] = []
    said = restore_init.restore_if_empty("redis", dirs=[str(data)], marker=str(marker),
                                         restore=lambda: seen.append(marker.exists()) or "restored it")
    assert said == "restored it" and seen == [True] and not marker.exists()


def test_an_interrupted_restore_is_cleared_and_run_again(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "datalog"
    for path in (data, log):
        path.mkdir()
        (path / "half-written").write_text("x")
    (data / "lost+found").mkdir()
    marker = data / restore_init.RESTORING
    marker.write_text("started\n")
    seen: list[list[str]] = []
    said = restore_init.restore_if_empty(
        "zookeeper", dirs=[str(data), str(log)], marker=str(marker),
        restore=lambda: seen.append(sorted(os.listdir(data)) + sorted(os.listdir(log))) or "restored")
    assert seen == [sorted(["lost+found", restore_init.RESTORING])] and said.startswith("after an interrupted restore")
    assert not marker.exists()


def test_a_refused_restore_fails_with_one_line_and_leaves_no_marker(tmp_path: Path) -> None:
    data = tmp_path / "data"

    def refuse() -> str:
        raise BackupError("restore: no redis snapshot under b/redis/snapshots/; take one first")

    with pytest.raises(BackupError):
        restore_init.restore_if_empty("redis", dirs=[str(data)], marker=str(data / restore_init.RESTORING),
                                      restore=refuse)
    assert not (data / restore_init.RESTORING).exists()
    # As the init container runs it: the agent's one line, exit status 2 (no target: refused).
    done = subprocess.run([sys.executable, str(Path(restore_init.__file__)), "redis", "--to", "latest", "--data-dir",
                           str(data)], capture_output=True, text=True, env={"POD_NAME": "redis-0", "PATH": "/usr/bin:/bin"},
                          cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("recovering", [True, False])
def test_the_fetched_wal_goes_once_the_server_has_recovered(tmp_path: Path, recovering: bool) -> None:
    pgdata, wal = tmp_path / "pgdata", tmp_path / "restore-wal"
    pgdata.mkdir()
    wal.mkdir()
    (pgdata / "PG_VERSION").write_text("17\n")
    (wal / "000000010000000000000003").write_bytes(b"wal")
    if recovering:
        (pgdata / "recovery.signal").touch()
    done = subprocess.run([sys.executable, str(Path(restore_init.__file__)), "postgres", "--to", "latest", "--pgdata",
                           str(pgdata), "--wal-dir", str(wal)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert done.returncode == 0 and "left alone" in done.stdout, done.stderr
    assert wal.exists() is recovering
    assert (pgdata / "PG_VERSION").read_text() == "17\n"


def test_only_redis_ordinal_zero_restores(tmp_path: Path) -> None:
    # No target in the environment: a member that tried to restore would be refused (status 2).
    base = {"PATH": "/usr/bin:/bin"}
    for pod, status in (("redis-1", 0), ("redis-2", 0), ("redis-0", 2)):
        done = subprocess.run([sys.executable, str(Path(restore_init.__file__)), "redis", "--to", "latest",
                               "--data-dir", str(tmp_path / pod)], capture_output=True, text=True,
                              env={**base, "POD_NAME": pod}, cwd=tmp_path)
        assert done.returncode == status, (pod, done.stdout, done.stderr)
        if status == 0:
            assert "only the member with ordinal 0 restores" in done.stdout


def test_the_program_runs_beside_the_agents_as_the_configmap_mounts_them(tmp_path: Path) -> None:
    """Run from a directory holding only the ConfigMap's files, it imports the agents there."""
    for name, content in snapshot_backup.scripts(restore=True).items():
        (tmp_path / name).write_bytes(content)
    data = tmp_path / "data"
    data.mkdir()
    (data / "appendonlydir").mkdir()
    done = subprocess.run([sys.executable, str(tmp_path / "restore_init.pyz"), "redis", "--to", "latest",
                           "--data-dir", str(data)], capture_output=True, text=True, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "POD_NAME": "redis-0", "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0 and "left alone" in done.stdout, done.stderr
    assert set(postgres_backup.programs(restore=True)) == {"backup_agent.pyz", "restore_init.pyz"}
    # Without restore_to the ConfigMaps stay as they were (no restart, no bigger template).
    assert "restore_init.pyz" not in snapshot_backup.scripts() and "restore_init.pyz" not in postgres_backup.programs()


# -- the first base backup after a restore -----------------------------------------------------------

@pytest.mark.parametrize("in_recovery, status, backed_up", [("t", 1, False), ("f", 0, True)])
def test_no_base_backup_while_the_restored_server_recovers(tmp_path: Path, in_recovery: str, status: int,
                                                           backed_up: bool) -> None:
    """base-backup.sh with stand-ins for the PostgreSQL tools: while pg_is_in_recovery() is
    true it takes none; once promoted it does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    stand_ins = {
        "psql": f'echo psql >> {calls}; echo {in_recovery}',
        "pg_isready": "exit 0",
        "pg_basebackup": f'echo pg_basebackup >> {calls}; while [ $# -gt 0 ]; do [ "$1" = -D ] && mkdir -p "$2" && '
                         f'touch "$2/backup_manifest"; shift; done',
        "pg_verifybackup": "exit 0",
    }
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "base-backup.sh"
    script.write_text(postgres_backup.BASE_BACKUP_SH)
    done = subprocess.run(["sh", str(script), str(tmp_path / "spool"), "24", "once"], capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PGPORT": "5432", "POSTGRES_PASSWORD": "p"},
                          timeout=30)
    assert done.returncode == status, done.stderr + done.stdout
    assert ("pg_basebackup" in calls.read_text()) is backed_up
    assert bool(list((tmp_path / "spool" / "base").glob("*.ready"))) is backed_up
