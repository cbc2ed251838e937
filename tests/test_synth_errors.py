"""Bad settings through the real ``cdk synth``: one line, the setting, the value, where it
came from, and a fix that is itself valid.

Each case runs the pinned CDK CLI in a scratch project whose cdk.json is the project's
(with the case's change for cdk.json cases) and whose app is this project's app.py. The
suggested fix is then applied to the same context and must pass every check synthesis
runs (settings of every enabled component for every profile, the charts themselves).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from final_problem import capacity, components, config, manifests
from tests.conftest import CDK_JSON, ROOT

CDK = ROOT / "node_modules" / ".bin" / "cdk"
CLI_TAIL = re.compile(r"^\S+ (-O )?\S*app\.py: Subprocess exited with error 1$")

# (where, change, setting, shown value): "-c" cases pass KEY=VALUE on the command line;
# "cdk.json" cases change the context of cdk.json (a dict merged into it).
CASES: list[tuple[str, Any, str, str]] = [
    ("-c", "cluster_name=final_problem", "cluster_name", "'final_problem'"),
    ("-c", "cluster_name=-bad", "cluster_name", "'-bad'"),
    ("-c", "kubernetes_version=1.20", "kubernetes_version", "'1.20'"),
    ("-c", "account=12345", "account", "'12345'"),
    ("-c", "account=١٢٣٤٥٦٧٨٩٠١٢", "account", "'١٢٣٤٥٦٧٨٩٠١٢'"),
    ("-c", "region=mars-1", "region", "'mars-1'"),
    ("-c", "vpc_cidr=10.0.0.0/18", "vpc_cidr", "'10.0.0.0/18'"),
    ("-c", "vpc_cidr=10.0.64.0/18", "vpc_cidr", "'10.0.64.0/18'"),
    ("-c", "vpc_cidr=banana", "vpc_cidr", "'banana'"),
    ("-c", "az_count=1", "az_count", "1"),
    ("-c", "nat_gateways=0", "nat_gateways", "0"),
    ("-c", "nat_gateways=5", "nat_gateways", "5"),
    ("-c", "flow_log_retention_days=10", "flow_log_retention_days", "10"),
    ("-c", "node_instance_type=m7g.lage", "node_instance_type", "'m7g.lage'"),
    ("-c", "node_instance_type=large", "node_instance_type", "'large'"),
    ("-c", "node_min=2", "node_min", "2"),
    ("-c", "node_desired=9", "node_desired", "9"),
    ("-c", "node_max=99999999999999999999", "node_max", "99999999999999999999"),
    ("-c", "node_max=many", "node_max", "'many'"),
    ("-c", "endpoint_public_cidrs=300.1.1.1/32", "endpoint_public_cidrs", "'300.1.1.1/32'"),
    ("-c", "endpoint_public_cidrs=0.0.0.0/0", "endpoint_public_cidrs", "'0.0.0.0/0'"),
    # Environment-agnostic (no account and region): CDK makes 2 zones, so 2 NAT gateways at most.
    ("-c", "nat_gateways=3", "nat_gateways", "3"),
    ("-c", "endpoint_private_access=false", "endpoint_private_access", "False"),
    ("-c", "endpoint_private_access=maybe", "endpoint_private_access", "'maybe'"),
    ("-c", "admin_role_arn=arn:aws:iam::123:user/x", "admin_role_arn", "'arn:aws:iam::123:user/x'"),
    ("-c", "admin_role_arn=arn:aws:iam::123456789012:role/Ädmin", "admin_role_arn", "'arn:aws:iam::123456789012:role/Ädmin'"),
    ("-c", "components=base,base", "components", "('base', 'base')"),
    ("-c", "components=base,nosuch", "components", "'nosuch'"),
    ("-c", "components=redis", "components", "'redis'"),
    ("-c", "profiles=eks,docker", "profiles", "('eks', 'docker')"),
    ("-c", "nat_gatways=2", "nat_gatways", "'2'"),
    ("-c", "zookeeper_replicas=5", "zookeeper_replicas", "'5'"),
    ("-c", "zookeeper.replicas=4", "zookeeper.replicas", "4"),
    ("-c", "zookeeper.replica=5", "zookeeper.replica", "'5'"),
    ("-c", "zookeeper.heap_mib=2048", "zookeeper.heap_mib", "2048"),
    ("-c", "zookeeper.memory_mib=64", "zookeeper.memory_mib", "64"),
    ("-c", "zookeeper.client_port=80", "zookeeper.client_port", "80"),
    ("-c", "zookeeper.metrics_port=2181", "zookeeper.metrics_port", "2181"),
    ("-c", "zookeeper.sync_limit=20", "zookeeper.sync_limit", "20"),
    ("-c", "zookeeper.storage_gib=100000", "zookeeper.storage_gib", "100000"),
    ("-c", "zookeeper.hosts=pi1,pi2", "zookeeper.hosts", "'pi1,pi2'"),
    ("-c", "redis.replicas=3", "redis.replicas", "3"),
    ("-c", "redis.sentinels=4", "redis.sentinels", "4"),
    ("-c", "redis.quorum=1", "redis.quorum", "1"),
    ("-c", "redis.maxmemory_policy=lru", "redis.maxmemory_policy", "'lru'"),
    ("-c", "redis.maxmemory_mib=300", "redis.maxmemory_mib", "300"),
    ("cdk.json", {"size": "production", "redis": {"storage_gib": 2}}, "redis.storage_gib", "2"),
    ("-c", "size=huge", "size", "'huge'"),
    ("-c", "redis.down_after_ms=abc", "redis.down_after_ms", "'abc'"),
    ("-c", "consul.replicas=4", "consul.replicas", "4"),
    ("-c", "envoy.per_try_timeout_ms=60000", "envoy.per_try_timeout_ms", "60000"),
    ("-c", "envoy.routes=redis", "envoy.routes", "('redis',)"),
    ("cdk.json", {"consul": {"cert_days": 3000, "ca_days": 1000}}, "consul.cert_days", "3000"),
    ("-c", "postgres.shared_buffers_mib=4096", "postgres.shared_buffers_mib", "4096"),
    ("-c", "postgres.max_connections=5", "postgres.max_connections", "5"),
    ("-c", "cadence.num_history_shards=0", "cadence.num_history_shards", "0"),
    ("-c", "cadence.history_replicas=20", "cadence.history_replicas", "20"),
    ("-c", "cadence.retention_days=0", "cadence.retention_days", "0"),
    ("-c", "cadence.visibility_db=cadence", "cadence.visibility_db", "'cadence'"),
    ("-c", "cadence.cadence_db=cadence_visibility", "cadence.cadence_db", "'cadence_visibility'"),
    ("-c", "cadence.visibility_db=Bad", "cadence.visibility_db", "'Bad'"),
    ("cdk.json", {"zookeeper": {"replicas": 4}}, "zookeeper.replicas", "4"),
    ("cdk.json", {"zookeeper": {"replica": 3}}, "zookeeper.replica", "3"),
    ("cdk.json", {"redis": {"sentinels": 2}}, "redis.sentinels", "2"),
    ("cdk.json", {"redis": "big"}, "redis", "'big'"),
    ("cdk.json", {"nat_gateways": 7}, "nat_gateways", "7"),
    # The CDK CLI trims -c values, but a value in cdk.json keeps its trailing newline.
    ("cdk.json", {"region": "eu-west-1\n"}, "region", "'eu-west-1\\n'"),
    ("cdk.json", {"node_instance_type": "m7g.lage"}, "node_instance_type", "'m7g.lage'"),
    ("cdk.json", {"node_min": 2}, "node_min", "2"),
    # A number beyond a double: the CDK CLI hands it to the app as null; the error names it as written.
    ("cdk.json", {"node_max": "@number:1e400"}, "node_max", "1e400"),
    ("cdk.json", {"zookeeper": {"heap_mib": "@number:-1e999"}}, "zookeeper.heap_mib", "-1e999"),
]


def _case_id(case: tuple[str, Any, str, str]) -> str:
    where, change, _, _ = case
    text = change if isinstance(change, str) else json.dumps(change, ensure_ascii=False)
    return f"{where}:{text.strip()}"


def _project(tmp_path: Path, context: dict[str, Any]) -> Path:
    """A scratch CDK project running this project's app with ``context`` in its cdk.json."""
    project = tmp_path / "project"
    project.mkdir()
    cdk_json = json.loads((ROOT / "cdk.json").read_text())
    cdk_json["context"] = context
    cdk_json["app"] = f"{sys.executable} -O {ROOT / 'app.py'}"  # as this project's cdk.json runs it
    # "@number:TEXT" stands for the JSON number TEXT as written (one json.dumps cannot write, 1e400).
    text = re.sub(r'"@number:([^"]+)"', r"\1", json.dumps(cdk_json, ensure_ascii=False))
    (project / "cdk.json").write_text(text)
    return project


def run_cdk_synth(project: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "CDK_DISABLE_VERSION_CHECK": "true", "CDK_DISABLE_CLI_TELEMETRY": "true",
        "JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION": "1", "AWS_EC2_METADATA_DISABLED": "true",
    }
    env.pop("FINAL_PROBLEM_TRACEBACK", None)
    return subprocess.run(
        [str(CDK), "synth", "--quiet", "--no-notices", "-o", str(project / "cdk.out"),
         "-c", f"dist_dir={project / 'dist'}", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )


def apply_fix(context: dict[str, Any], fix: str) -> dict[str, Any] | None:
    """The context with the fix's first ``set KEY=VALUE`` applied (or, without one, its
    ``leave KEY unset``), or ``None`` when the fix names no value to try."""
    fixed = copy.deepcopy(context)
    sets = re.findall(r"\bset ([A-Za-z_][\w.]*)=(\S+?)(?=,? |,?$)", fix)
    if sets:
        key, value = sets[0]
        if "." in key and key.split(".")[0] in fixed and isinstance(fixed[key.split(".")[0]], dict):
            section, sub = key.split(".", 1)
            fixed[section] = {k: v for k, v in fixed[section].items() if k != sub}
        fixed[key] = value
        return fixed
    unsets = re.findall(r"\bleave ([\w.]+) unset\b", fix)
    if unsets:
        for key in unsets:
            fixed.pop(key, None)
        return fixed
    return None


def fix_is_valid(context: dict[str, Any]) -> None:
    """Everything synthesis checks before writing: settings, every component's settings in
    every profile, the charts of both profiles, and that their pods fit the nodes."""
    settings = config.from_mapping(context)
    components.check_settings(settings)
    for profile, objects in manifests.profile_objects(settings):
        capacity.check(settings, profile, objects)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_setting_fails_cdk_synth_with_one_line(tmp_path: Path, case: tuple[str, Any, str, str]) -> None:
    where, change, setting, shown = case
    context = dict(CDK_JSON)
    args: list[str] = []
    if where == "cdk.json":
        context.update(change)
    else:
        args = ["-c", change]
    result = run_cdk_synth(_project(tmp_path, context), args)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.strip() and not CLI_TAIL.match(line)]
    assert len(ours) == 1, result.stderr
    line = ours[0]
    assert line.startswith(f"error: {setting} = {shown}"), line
    assert f"from {where}" in line, line
    assert "Traceback" not in result.stderr
    fix = line.split(". Fix: ", 1)[1]
    # Apply the fix to the context as the user would have it.
    given = dict(context)
    if where == "-c":
        key, _, value = change.partition("=")
        given[key] = value
    if fix.startswith("did you mean "):
        names = re.findall(r"([\w.]+)(?: or |\?)", fix[len("did you mean "):])
        known = set(config.setting_names()) | {
            f"{n}.{i.name}" for n, cls in components.COMPONENTS.items() if cls.settings_class for i in cls.settings_class.infos()
        }
        assert names and set(names) <= known, fix
        return
    fixed = apply_fix(given, fix)
    if fixed is None:
        assert setting.split(".")[0] in fix or "cdk.json" in fix or "unset" in fix, fix
        return
    fix_is_valid(fixed)


def test_traceback_on_request(tmp_path: Path) -> None:
    project = _project(tmp_path, dict(CDK_JSON))
    os.environ["FINAL_PROBLEM_TRACEBACK"] = "1"
    try:
        env_result = subprocess.run(
            [str(CDK), "synth", "--quiet", "--no-notices", "-o", str(project / "cdk.out"), "-c", "nat_gateways=9"],
            cwd=project, capture_output=True, text=True, timeout=300,
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        )
    finally:
        del os.environ["FINAL_PROBLEM_TRACEBACK"]
    assert env_result.returncode != 0
    assert "Traceback (most recent call last)" in env_result.stderr
    assert "final_problem.errors.ConfigError: nat_gateways = 9" in env_result.stderr
