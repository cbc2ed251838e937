"""Precise tests of the Redis chart: defaults, overrides and every validation error."""

from __future__ import annotations

import re
from typing import Any

import cdk8s
import pytest

from final_problem import config, manifests, versions
from final_problem.charts.base import BaseChart
from final_problem.charts.redis import SHUTDOWN_S, RedisChart, RedisProps
from final_problem.errors import ConfigError
from final_problem.profiles import EKS, PI, PROFILES

from tests.conftest import CDK_JSON, rendered


def redis_objects(profile: str) -> list[dict[str, Any]]:
    return rendered(profile)["redis"]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (match,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return match


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (match,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return match


def render_with(profile: str = "eks", **context: Any) -> list[dict[str, Any]]:
    """The chart's objects; a keyword ``redis_x`` stands for the ``-c`` key ``redis.x``."""
    context = {key.replace("redis_", "redis.", 1): value for key, value in context.items()}
    settings = config.from_mapping({**CDK_JSON, "components": ["base", "redis"], **context})
    charts = manifests.render(settings, profile)
    return manifests.chart_objects(charts["redis"])


def test_registered_with_its_contract() -> None:
    assert RedisChart.component == "redis"
    assert RedisChart.construct_id == "Redis"
    assert RedisChart.requires == ("base",)
    assert "redis" in CDK_JSON["components"]


@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_one_primary_two_replicas_and_three_sentinels(profile: str) -> None:
    objects = redis_objects(profile)
    assert find(objects, "StatefulSet", "redis")["spec"]["replicas"] == 3
    assert find(objects, "StatefulSet", "redis-sentinel")["spec"]["replicas"] == 3


@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_official_pinned_image_runs_as_999(profile: str) -> None:
    for name, c in (("redis", "redis"), ("redis-sentinel", "sentinel")):
        spec = container(find(redis_objects(profile), "StatefulSet", name), c)
        assert spec["image"] == versions.REDIS_IMAGE
        assert spec["securityContext"]["runAsUser"] == 999
    assert re.fullmatch(r"docker\.io/library/redis:\d+\.\d+\.\d+-\w+", versions.REDIS_IMAGE)


def test_credentials_are_generated_in_the_redis_namespace() -> None:
    objects = redis_objects("eks")
    job = next(o for o in objects if o["kind"] == "Job")
    assert job["metadata"]["namespace"] == "redis"
    spec = next(e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "GENERATOR_SPEC")
    assert '"name": "redis-auth"' in spec
    for key in RedisChart.SECRET_KEYS:
        assert key in spec
    assert not [o for o in objects if o["kind"] == "Secret"]


def test_passwords_come_only_from_the_secret() -> None:
    redis = container(find(redis_objects("eks"), "StatefulSet", "redis"), "redis")
    password_env = {e["name"]: e for e in redis["env"] if "PASSWORD" in e["name"]}
    assert set(password_env) == {
        "REDIS_ADMIN_PASSWORD", "REDIS_APP_PASSWORD", "REDIS_SENTINEL_PASSWORD", "REDIS_METRICS_PASSWORD"}
    for env in password_env.values():
        assert "value" not in env
        assert env["valueFrom"]["secretKeyRef"]["name"] == "redis-auth"


def test_config_map_renders_aof_everysec_and_no_password() -> None:
    data = find(redis_objects("eks"), "ConfigMap", "redis-config")["data"]
    assert "appendonly yes" in data["redis.conf"]
    assert "appendfsync everysec" in data["redis.conf"]
    assert "maxmemory 256mb" in data["redis.conf"]
    assert "requirepass" not in data["redis.conf"]
    assert "sentinel down-after-milliseconds platform 5000" in data["sentinel-master.conf"]
    assert "sentinel resolve-hostnames yes" in data["sentinel.conf"]


def test_data_on_retained_volumes_of_the_profile_storage_class() -> None:
    for profile, size in (("eks", "8Gi"), ("pi", "2Gi")):
        sts = find(redis_objects(profile), "StatefulSet", "redis")
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["resources"]["requests"]["storage"] == size
        assert claim["spec"]["storageClassName"] == PROFILES[profile].storage_class
        assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_pi_gets_less_memory_same_counts() -> None:
    eks = RedisProps.for_profile(EKS)
    pi = RedisProps.for_profile(PI)
    assert pi.maxmemory_mib < eks.maxmemory_mib
    assert pi.redis_sizing.memory_limit_mib < eks.redis_sizing.memory_limit_mib
    assert (pi.replicas, pi.sentinels, pi.quorum) == (eks.replicas, eks.sentinels, eks.quorum)
    data = find(redis_objects("pi"), "ConfigMap", "redis-config")["data"]
    assert "maxmemory 128mb" in data["redis.conf"]


def test_probes_authenticate_and_differ() -> None:
    redis = container(find(redis_objects("eks"), "StatefulSet", "redis"), "redis")
    assert redis["livenessProbe"]["exec"]["command"][-1] == "redis-live"
    assert redis["readinessProbe"]["exec"]["command"][-1] == "redis-ready"
    names = {e["name"] for e in redis["env"]}
    assert "REDIS_METRICS_PASSWORD" in names


def test_sentinels_spread_one_per_node_with_a_pdb() -> None:
    objects = redis_objects("eks")
    sts = find(objects, "StatefulSet", "redis-sentinel")
    terms = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["topologyKey"] == "kubernetes.io/hostname"
    pdb = find(objects, "PodDisruptionBudget", "redis-sentinel")
    assert pdb["spec"]["maxUnavailable"] == 1


def test_members_know_every_sentinel_and_member_and_only_redis_0_bootstraps() -> None:
    redis = container(find(redis_objects("eks"), "StatefulSet", "redis"), "redis")
    env = {e["name"]: e.get("value") for e in redis["env"]}
    assert env["REDIS_BOOTSTRAP_PRIMARY"] == "redis-0.redis-headless.redis.svc:6379"
    assert env["REDIS_BOOTSTRAP_WAIT_S"] == "30"
    assert env["REDIS_DATA_DIR"] == "/data"
    assert env["REDIS_MEMBERS"].split() == [f"redis-{i}.redis-headless.redis.svc:6379" for i in range(3)]
    assert env["REDIS_SENTINELS"].split() == [
        f"redis-sentinel-{i}.redis-sentinel-headless.redis.svc:26379" for i in range(3)]
    assert env["REDIS_ANNOUNCE_HOST"] == "$(POD_NAME).redis-headless.redis.svc"


@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_sentinel_state_on_a_retained_volume(profile: str) -> None:
    sts = find(redis_objects(profile), "StatefulSet", "redis-sentinel")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert claim["spec"]["storageClassName"] == PROFILES[profile].storage_class
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    sentinel = container(sts, "sentinel")
    assert {"name": "state", "mountPath": "/data"} in sentinel["volumeMounts"]
    env = {e["name"]: e.get("value") for e in sentinel["env"]}
    assert env["REDIS_SENTINEL_DIR"] == "/data"
    # No memory-backed runtime volume: the state must outlive the pod.
    assert [v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]] == ["config"]


def test_startup_probes_let_a_waiting_member_wait() -> None:
    objects = redis_objects("eks")
    for sts_name, name, check in (("redis", "redis", "redis-live"), ("redis-sentinel", "sentinel", "sentinel-live")):
        c = container(find(objects, "StatefulSet", sts_name), name)
        startup = c["startupProbe"]
        assert startup["exec"]["command"][-1] == check
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600
        assert "initialDelaySeconds" not in c["livenessProbe"]


def test_network_policy_admits_labelled_client_namespaces() -> None:
    objects = redis_objects("eks")
    for name, port in (("redis-server", 6379), ("redis-sentinel", 26379)):
        policy = find(objects, "NetworkPolicy", name)
        rule = policy["spec"]["ingress"][0]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
        assert {"namespaceSelector": {"matchLabels": {"final-problem.io/redis-client": "true"}}} in rule["from"]


def test_headless_services_publish_not_ready_members() -> None:
    objects = redis_objects("eks")
    for name in ("redis-headless", "redis-sentinel-headless"):
        service = find(objects, "Service", name)
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
    assert find(objects, "Service", "redis-sentinel")["spec"]["ports"][0]["port"] == 26379


def test_metrics_sidecar_uses_a_pinned_official_image() -> None:
    metrics = container(find(redis_objects("eks"), "StatefulSet", "redis"), "metrics")
    assert metrics["image"] == versions.PYTHON_IMAGE
    assert metrics["ports"][0]["containerPort"] == 9121


def test_settings_override_props() -> None:
    objects = render_with(
        redis_replicas=4, redis_sentinels=5, redis_quorum=3, redis_down_after_ms=10000,
        redis_failover_timeout_ms=120000, redis_maxmemory_mib=512, redis_maxmemory_policy="allkeys-lfu",
        redis_storage_gib=20, redis_memory_mib=1024,
    )
    assert find(objects, "StatefulSet", "redis")["spec"]["replicas"] == 5
    sentinel = find(objects, "StatefulSet", "redis-sentinel")
    assert sentinel["spec"]["replicas"] == 5
    assert {"name": "SENTINEL_QUORUM", "value": "3"} in container(sentinel, "sentinel")["env"]
    data = find(objects, "ConfigMap", "redis-config")["data"]
    assert "maxmemory 512mb\nmaxmemory-policy allkeys-lfu" in data["redis.conf"]
    assert "down-after-milliseconds platform 10000" in data["sentinel-master.conf"]
    assert "failover-timeout platform 120000" in data["sentinel-master.conf"]
    claim = find(objects, "StatefulSet", "redis")["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"


@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_appendfsync_defaults_to_everysec_and_reaches_redis_conf(profile: str) -> None:
    props = RedisProps.for_profile(PROFILES[profile])
    assert props.appendfsync == "everysec"
    assert props.config_options().appendfsync == "everysec"
    data = find(render_with(profile, redis_appendfsync="always"), "ConfigMap", "redis-config")["data"]
    assert "\nappendfsync always\n" in data["redis.conf"]
    assert "appendfsync everysec" not in data["redis.conf"]


def test_appendfsync_from_the_command_line() -> None:
    settings = config.from_mapping({"redis.appendfsync": "always"})
    assert settings.component(RedisProps, EKS).appendfsync == "always"
    with pytest.raises(ConfigError, match=r"redis.appendfsync = 'everysecond'"):
        config.from_mapping({"redis.appendfsync": "everysecond"}).component(RedisProps, EKS)


def test_settings_from_strings_like_cdk_c() -> None:
    settings = config.from_mapping({"redis.replicas": "4", "redis.maxmemory_policy": "noeviction"})
    props = settings.component(RedisProps, EKS)
    assert props.replicas == 4 and props.maxmemory_policy == "noeviction"
    assert props.sentinels == 3  # unset keeps the default


def test_bad_setting_fails_synthesis() -> None:
    with pytest.raises(ConfigError, match=r"redis.sentinels = 4: must be one of 3, 5, 7"):
        render_with(redis_sentinels=4)


def test_section_in_cdk_json_reaches_the_chart() -> None:
    app = cdk8s.App()
    settings = config.from_mapping({**CDK_JSON, "components": ["base", "redis"], "redis": {"replicas": 4}})
    base = BaseChart(app, "Base", settings=settings, profile=EKS, dependencies={})
    chart = RedisChart(app, "Redis", settings=settings, profile=EKS, dependencies={"base": base})
    sts = find(manifests.chart_objects(chart), "StatefulSet", "redis")
    assert sts["spec"]["replicas"] == 5
    assert chart.sentinel_service_dns == "redis-sentinel.redis.svc"
    assert chart.master_name == "platform"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"replicas": 1}, r"redis.replicas = 1: must be 2 to 6\. Fix: set redis.replicas=2$"),
        ({"replicas": 3}, r"redis.replicas = 3: must be even.*Fix: set redis.replicas=2$"),
        ({"sentinels": 1}, r"redis.sentinels = 1: must be one of 3, 5, 7"),
        ({"sentinels": 4}, r"redis.sentinels = 4: must be one of 3, 5, 7\. Fix: set redis.sentinels=3$"),
        ({"quorum": 1}, r"redis.quorum = 1: must be at least 2"),
        ({"quorum": 4}, r"redis.quorum = 4: must be a majority.*Fix: set redis.quorum=2$"),
        ({"sentinels": 5, "quorum": 2}, r"redis.quorum = 2: must be a majority of the 5 Sentinels \(3 to 5\)"),
        ({"down_after_ms": 999}, r"redis.down_after_ms = 999: must be 1000 to 600000"),
        ({"down_after_ms": 600_001, "failover_timeout_ms": 2_000_000}, r"redis.down_after_ms = 600001"),
        ({"down_after_ms": 10_000, "failover_timeout_ms": 15_000}, r"redis.failover_timeout_ms = 15000: must be at least twice.*Fix: set redis.failover_timeout_ms=60000$"),
        ({"maxmemory_policy": "lru"}, r"redis.maxmemory_policy = 'lru': must be one of noeviction"),
        ({"maxmemory_mib": 8}, r"redis.maxmemory_mib = 8: must be 16 to 131072"),
        ({"maxmemory_mib": 1500}, r"redis.maxmemory_mib = 1500: must be at most half of redis.memory_mib \(640\)"),
        ({"storage_gib": 2, "maxmemory_mib": 1024, "memory_mib": 2048}, r"redis.storage_gib = 2: must hold three times maxmemory \(1024 MiB\).*Fix: set redis.storage_gib=3$"),
        ({"bootstrap_wait_s": -1}, r"redis.bootstrap_wait_s = -1: must be 0 to 600"),
        ({"bootstrap_wait_s": 601}, r"redis.bootstrap_wait_s = 601: must be 0 to 600"),
        ({"appendfsync": "sometimes"}, r"redis.appendfsync = 'sometimes': must be one of always, everysec, no"),
    ],
)
def test_invalid_props_raise(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisProps(**changes)


def test_bigger_limit_allows_more_maxmemory() -> None:
    props = RedisProps(maxmemory_mib=3072, storage_gib=9, memory_mib=6144)
    assert props.maxmemory_mib == 3072


def test_pi_props_are_valid_and_validated() -> None:
    with pytest.raises(ConfigError, match=r"redis.maxmemory_mib = 256: must be at most half of redis.memory_mib \(256\)"):
        RedisProps.for_profile(PI, maxmemory_mib=256)


@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_primary_hands_over_in_a_prestop_hook_within_the_grace_period(profile: str) -> None:
    sts = find(redis_objects(profile), "StatefulSet", "redis")
    redis = container(sts, "redis")
    assert redis["lifecycle"]["preStop"]["exec"]["command"] == ["sh", "/opt/redis/config/prestop-redis.sh"]
    env = {e["name"]: e.get("value") for e in redis["env"]}
    handover = int(env["REDIS_HANDOVER_TIMEOUT_S"])
    # The kubelet counts the hook in the grace period: the hook's bound, then the shutdown.
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == handover + SHUTDOWN_S
    data = find(redis_objects(profile), "ConfigMap", "redis-config")["data"]
    assert "SENTINEL FAILOVER" in data["prestop-redis.sh"]
    # Sentinels hand nothing over: no hook.
    assert "lifecycle" not in container(find(redis_objects(profile), "StatefulSet", "redis-sentinel"), "sentinel")
