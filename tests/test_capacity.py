"""Capacity fit: the rendered workloads of each profile against its nodes."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from final_problem import capacity, config, manifests, sizes
from final_problem.errors import ConfigError
from tests.conftest import CDK_JSON, ROOT

# The components the figures below were computed for, whatever cdk.json enables.
# Figures below are for a fixed setting: three components on 3 x m7g.large, whatever cdk.json says,
# at the production size (the sizes they were computed for: final_problem/sizes.py).
DEFAULTS = {
    **{k: v for k, v in CDK_JSON.items() if k in config.setting_names()},
    "components": ["base", "redis", "zookeeper"], "node_instance_type": "m7g.large", "size": "production",
}


@lru_cache(maxsize=None)
def _objects(profile: str, items: tuple[tuple[str, Any], ...]) -> dict[str, list[dict[str, Any]]]:
    settings = config.from_mapping({**DEFAULTS, **dict(items)})
    return {name: manifests.chart_objects(c) for name, c in manifests.render(settings, profile).items()}


def check(profile: str, **overrides: Any) -> capacity.Fit:
    settings = config.from_mapping({**DEFAULTS, **overrides})
    return capacity.check(settings, profile, _objects(profile, tuple(sorted(overrides.items()))))


# --- the node table ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "max_pods", "cpu_m", "memory_mib"),
    [
        # maxPods from amazon-eks-ami's ENI table; reserved CPU 60+10 m (2 cores) or
        # 60+10+2*5+12*2.5 = 110 m (16 cores); memory: nominal less the 7.5% VM overhead,
        # less 11*maxPods + 255 MiB and 100 MiB eviction.
        ("m7g.large", 29, 2000 - 70, int(8192 * 0.925) - (11 * 29 + 255) - 100),
        ("m5.4xlarge", 234, 16000 - 110, int(65536 * 0.925) - (11 * 234 + 255) - 100),
        ("c6i.xlarge", 58, 4000 - 80, int(8192 * 0.925) - (11 * 58 + 255) - 100),
        ("t4g.large", 35, 2000 - 70, int(8192 * 0.925) - (11 * 35 + 255) - 100),
        ("r8i.large", 59, 2000 - 70, int(16384 * 0.925) - (11 * 59 + 255) - 100),
    ],
)
def test_allocatable_follows_the_eks_ami_formula(name: str, max_pods: int, cpu_m: int, memory_mib: int) -> None:
    t = capacity.INSTANCE_TYPES[name]
    assert (t.max_pods, t.allocatable_cpu_m, t.allocatable_memory_mib) == (max_pods, cpu_m, memory_mib)


def test_ebs_attachments_shared_with_enis_or_dedicated() -> None:
    # Shared (27): root volume + 1 reserved, and every ENI after the first.
    assert capacity.INSTANCE_TYPES["m7g.large"].max_volumes == 27 - 2 - 2
    assert capacity.INSTANCE_TYPES["m5.4xlarge"].max_volumes == 27 - 2 - 7
    # Dedicated (32) on the 7th-generation x86 and 8th-generation types.
    assert capacity.INSTANCE_TYPES["m8g.large"].max_volumes == 30


def test_table_covers_the_common_families() -> None:
    for family in ("m5", "m6i", "m6g", "m7i", "m7g", "m8g", "c5", "c6g", "c7g", "c8g", "r5", "r6g", "r7g", "r8g"):
        for size in ("large", "xlarge", "2xlarge", "4xlarge"):
            assert f"{family}.{size}" in capacity.INSTANCE_TYPES
    assert {t.arch for t in capacity.INSTANCE_TYPES.values()} == {"arm64", "x86_64"}
    assert capacity.INSTANCE_TYPES["c7g.large"].arch == "arm64"
    assert capacity.INSTANCE_TYPES["c7i.large"].arch == "x86_64"


def test_quantities() -> None:
    assert [capacity.cpu_m(v) for v in ("250m", "1", "0.5", 2)] == [250, 1000, 500, 2000]
    assert [capacity.memory_mib(v) for v in ("512Mi", "2Gi", "1G", "1048576Ki")] == [512, 2048, 954, 1024]
    with pytest.raises(ValueError, match="not a memory quantity"):
        capacity.memory_mib("2GB")


def test_node_shapes() -> None:
    settings = config.from_mapping({**DEFAULTS, "node_desired": 4})
    eks = capacity.node_shapes(settings, "eks")
    assert [n.zone for n in eks] == ["a", "b", "c", "a"]
    assert {n.kind for n in eks} == {"m7g.large"}
    pi = capacity.node_shapes(settings, "pi")
    assert len(pi) == 3 and pi[0].memory_mib == 4096 - 1539 - 256 - 100 and pi[0].cpu_m == 3600


def test_unknown_instance_type_names_close_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        check("eks", node_instance_type="m7gd.large")  # a real type, with local NVMe, not in the table
    message = str(info.value)
    assert message.startswith("node_instance_type = 'm7gd.large': not in the capacity table")
    assert "\n" not in message
    first, others = message.split("Fix: set node_instance_type=")[1].rstrip(")").split(" (or ")
    suggestions = [first, *others.split(", ")]
    # The nearest type that carries the default platform (README, "Capacity"): the same size.
    assert suggestions[0] == "m7g.large"
    # Each suggestion is itself a valid setting.
    for suggestion in suggestions:
        config.from_mapping({**DEFAULTS, "node_instance_type": suggestion})
        assert suggestion in capacity.INSTANCE_TYPES


# --- what the platform requests -------------------------------------------------------------


def test_workloads_count_long_running_pods_and_leave_jobs_out() -> None:
    objects = _objects("eks", ())
    found = {w.name: w for w in capacity.workloads(objects)}
    assert set(found) == {
        "StatefulSet/redis/redis", "StatefulSet/redis/redis-sentinel", "StatefulSet/zookeeper/zookeeper",
    }
    redis = found["StatefulSet/redis/redis"]
    # Redis 250m / 2048Mi plus its metrics sidecar 10m / 32Mi and its backup sidecar 10m / 32Mi.
    assert (redis.pods, redis.cpu_m, redis.memory_mib, redis.volumes, redis.one_per_node) == (3, 270, 2112, 1, True)
    assert found["StatefulSet/zookeeper/zookeeper"].volumes == 2
    assert not any(o["kind"] == "Job" and o["metadata"]["name"] in found for objs in objects.values() for o in objs)


def test_init_container_counts_when_larger_than_the_app_containers() -> None:
    pod = {"spec": {"replicas": 2, "template": {"spec": {
        "containers": [{"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
        "initContainers": [{"resources": {"requests": {"cpu": "1", "memory": "32Mi"}}}],
    }}}, "kind": "Deployment", "metadata": {"name": "x", "namespace": "y"}}
    (w,) = capacity.workloads({"x": [pod]})
    assert (w.cpu_m, w.memory_mib, w.pods) == (1000, 64, 2)


def test_native_sidecars_add_to_the_main_containers_as_the_scheduler_counts() -> None:
    # kube-scheduler (component-helpers PodRequests): sidecars (restartPolicy Always) add to
    # the main containers; a regular init container runs with the sidecars started before it;
    # the pod takes the larger, plus its overhead.
    def container(cpu: str, memory: str, **extra: str) -> dict[str, Any]:
        return {"resources": {"requests": {"cpu": cpu, "memory": memory}}, **extra}

    pod = {
        "containers": [container("100m", "64Mi")],
        "initContainers": [
            container("10m", "32Mi", restartPolicy="Always"),
            container("200m", "16Mi"),  # runs beside the first sidecar: 210m, 48Mi
            container("5m", "8Mi", restartPolicy="Always"),
        ],
        "overhead": {"cpu": "20m", "memory": "10Mi"},
    }
    # cpu: max(100 + 10 + 5, 200 + 10) + 20; memory: max(64 + 32 + 8, 16 + 32) + 10.
    assert capacity.pod_requests(pod) == (230, 114)
    # Without restartPolicy the same containers are ordinary init containers: the largest alone.
    plain = {**pod, "initContainers": [{k: v for k, v in c.items() if k != "restartPolicy"}
                                       for c in pod["initContainers"]]}
    assert capacity.pod_requests(plain) == (200 + 20, 64 + 10)


def test_k3s_runs_servicelb_per_load_balancer_service_and_no_traefik() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "envoy", "namespace": "edge"},
               "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}, {"name": "cadence-web", "port": 8088}]}}
    names = lambda objects: [f"{o['kind']}/{o['metadata']['name']}" for o in objects]  # noqa: E731
    base = ["Deployment/coredns", "Deployment/metrics-server", "Deployment/local-path-provisioner"]
    assert names(capacity.system_objects("pi")) == base  # Traefik is disabled (pi/inventory.py)
    with_lb = capacity.system_objects("pi", [service])
    assert names(with_lb) == base + ["DaemonSet/svclb-envoy"]
    pod = with_lb[-1]["spec"]["template"]["spec"]
    # One container per port, holding it as a host port on every node, without requests.
    assert [(c["name"], c["ports"]) for c in pod["containers"]] == [
        ("lb-tcp-80", [{"containerPort": 80, "hostPort": 80, "protocol": "TCP"}]),
        ("lb-tcp-8088", [{"containerPort": 8088, "hostPort": 8088, "protocol": "TCP"}]),
    ]
    assert all("resources" not in c for c in pod["containers"])
    # EKS's load balancers are NLBs outside the nodes: nothing more runs there.
    assert names(capacity.system_objects("eks", [service])) == names(capacity.system_objects("eks"))
    (svclb,) = [w for w in capacity.system_workloads("pi", {"envoy": [service]}) if "svclb" in w.name]
    assert (svclb.per_node, svclb.cpu_m, svclb.memory_mib) == (True, 0, 0)


def test_system_workloads_carry_the_add_ons_requests() -> None:
    by_name = {w.name: w for w in capacity.system_workloads("eks", {})}
    # aws-node: two 25m containers beside a 25m init container; EBS CSI 10m / 40Mi per container.
    assert (by_name["DaemonSet/kube-system/aws-node"].cpu_m, by_name["DaemonSet/kube-system/aws-node"].memory_mib) == (50, 0)
    assert (by_name["Deployment/kube-system/ebs-csi-controller"].pods,
            by_name["Deployment/kube-system/ebs-csi-controller"].memory_mib) == (2, 240)
    pi = {w.name: (w.pods, w.cpu_m, w.memory_mib) for w in capacity.system_workloads("pi", {})}
    assert pi == {"Deployment/kube-system/coredns": (1, 100, 70), "Deployment/kube-system/metrics-server": (1, 100, 70),
                  "Deployment/kube-system/local-path-provisioner": (1, 0, 0)}


def test_every_bundled_component_fits_by_the_schedulers_count() -> None:
    from tests.conftest import full_settings, rendered

    for profile in ("eks", "pi"):
        result = capacity.fit_of(full_settings(), profile, rendered(profile))
        assert result.fits, "\n".join(capacity.describe(result))
        # Native sidecars count: Redis's pods on eks carry them (mesh-register, consul-dataplane),
        # beside Redis at the default size, its metrics exporter and its backup sidecar.
        if profile == "eks":
            redis = next(w for w in result.workloads if w.name == "StatefulSet/redis/redis")
            assert redis.memory_mib == sizes.SIZES["redis"]["eks"].memory_request_mib + 32 + 32 + 32 + 128


# --- eks profile --------------------------------------------------------------------------------


def test_eks_default_fits() -> None:
    result = check("eks")
    assert result.fits
    memory = result.by_resource("memory")
    # Platform: 3 x (2112 + 32 + 2080) MiB (Redis and ZooKeeper with their 32 MiB backup
    # sidecars, a Sentinel); system: 3 x 120 + 2 x 70 + 2 x 240.
    assert memory.requested == 3 * (2112 + 32 + 2080) + 3 * 120 + 2 * 70 + 2 * 240
    assert memory.allocatable == 3 * capacity.INSTANCE_TYPES["m7g.large"].allocatable_memory_mib
    # ZooKeeper 2 per member, Redis 1 per member, Sentinel state 1 per Sentinel.
    assert result.by_resource("volumes").requested == 3 * 2 + 3 + 3


def test_eks_over_the_limit_fails_naming_consumers_and_valid_fixes() -> None:
    with pytest.raises(ConfigError) as info:
        check("eks", node_instance_type="c7g.large")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("node_instance_type = 'c7g.large' (profile eks): the platform requests 13,652 MiB memory")
    assert "over the 80% limit (biggest: StatefulSet/redis/redis 6,336, StatefulSet/zookeeper/zookeeper 6,240" in message
    assert message.endswith(
        "Fix: set node_instance_type=c7g.xlarge; or set node_desired=6; "
        "or lower redis.memory_mib, or disable a component"
    )
    # Both suggested settings fit.
    assert check("eks", node_instance_type="c7g.xlarge").fits
    assert check("eks", node_instance_type="c7g.large", node_desired=6).fits


def test_eks_custom_instance_type() -> None:
    result = check("eks", node_instance_type="r7g.xlarge", node_desired=4)
    assert result.fits
    assert [n.kind for n in result.nodes] == ["r7g.xlarge"] * 4
    t = capacity.INSTANCE_TYPES["r7g.xlarge"]
    assert result.by_resource("memory").allocatable == 4 * t.allocatable_memory_mib
    assert result.by_resource("pods").allocatable == 4 * 58
    assert "eks: 4 x r7g.xlarge: cpu" in result.summary()


def test_eks_one_member_per_node_needs_enough_nodes() -> None:
    with pytest.raises(ConfigError, match=(
        r"^node_desired = 3 \(profile eks\): StatefulSet/zookeeper/zookeeper places one pod per node "
        r"\(required hostname anti-affinity\) and has 5 replicas on 3 nodes\. "
        r"Fix: set node_desired=5, or lower the replicas of zookeeper$"
    )):
        check("eks", **{"zookeeper.replicas": 5})
    assert check("eks", node_desired=5, **{"zookeeper.replicas": 5}).fits


EDGE = ("base", "consul", "redis", "demo", "envoy")


def test_a_rollout_whose_surge_pod_no_node_may_take_is_refused() -> None:
    """Three edge proxies, one per node, on three nodes: maxSurge 1 starts a fourth that the
    anti-affinity keeps off every node, and the Deployment controller waits for it forever."""
    edge = check("eks", node_desired=3, components=EDGE).workloads
    envoy = next(w for w in edge if w.name == "Deployment/edge/envoy")
    assert (envoy.pods, envoy.surge, envoy.one_per_node) == (2, 1, True)
    with pytest.raises(ConfigError, match=(
        r"^node_desired = 3 \(profile eks\): a rolling update of Deployment/edge/envoy starts 1 pod\(s\) above "
        r"its 3 replicas before stopping one, with one pod per node \(required hostname anti-affinity\) on 3 "
        r"nodes: the new pod is never scheduled and the rollout stalls\. Fix: set node_desired=4, or lower the "
        r"replicas of envoy$"
    )):
        check("eks", node_desired=3, components=EDGE, **{"envoy.replicas": 3})
    assert check("eks", node_desired=4, components=EDGE, **{"envoy.replicas": 3}).fits


# --- pi profile ---------------------------------------------------------------------------------


def test_pi_default_fits() -> None:
    result = check("pi")
    assert result.fits
    assert [n.kind for n in result.nodes] == ["Raspberry Pi 4 Model B 4 GB"] * 3
    assert {u.resource for u in result.usage} == {"cpu", "memory", "pods"}  # local-path: no attach limit


def test_pi_over_the_limit_fails() -> None:
    with pytest.raises(ConfigError) as info:
        check("pi", **{"zookeeper.memory_mib": 1536})
    message = str(info.value)
    assert message.startswith("profiles = 'eks,pi' (profile pi): the platform requests 5,940 MiB memory of 6,603 (90%)")
    assert "biggest: StatefulSet/zookeeper/zookeeper 4,704" in message
    assert message.endswith(
        "Fix: lower zookeeper.memory_mib, or disable a component, or on 8 GB boards set pi_memory_gib=8, "
        "or set profiles=eks"
    )
    # The suggested board size carries the same objects.
    assert check("pi", pi_memory_gib=8, **{"zookeeper.memory_mib": 1536}).fits


def test_pi_custom_instance_type_does_not_change_the_pi_nodes() -> None:
    # The node type is an EKS setting: the Pi shape stays, and the same objects fit.
    result = check("pi", node_instance_type="c7g.large")
    assert result.fits
    assert result.nodes == tuple([capacity.PI4_4GB] * 3)


# --- hooks ----------------------------------------------------------------------------------------


def test_manifests_command_fails_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert manifests.main([
        "--out", str(tmp_path), "--context", str(ROOT / "cdk.json"),
        "-c", "profiles=pi", "-c", "components=base,redis,zookeeper", "-c", "zookeeper.memory_mib=1536",
    ]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: profiles = 'pi' (from -c, profile pi): the platform requests 5,940 MiB memory")
    assert err.count("\n") == 1
    assert not list(tmp_path.rglob("*.yaml"))


def test_synth_checks_every_profile(synth: Any) -> None:
    from final_problem import app

    fits = app.check_capacity(synth.stacks.settings, app.render_profiles(synth.stacks))
    assert [f.profile for f in fits] == list(synth.stacks.settings.profiles)
    assert all(f.fits for f in fits)


def test_app_fails_synthesis_when_a_profile_does_not_fit(tmp_path: Path) -> None:
    from tests.test_cli import run_app

    result = run_app(tmp_path, {"node_instance_type": "c7g.large", "components": ["base", "redis", "zookeeper"],
                                "size": "production"})
    assert result.returncode != 0
    assert result.stderr.startswith(
        "error: node_instance_type = 'c7g.large' (from -c, profile eks): the platform requests 13,652 MiB memory"
    )
    assert not (tmp_path / "dist").exists()
    assert not (tmp_path / "cdk.out" / "Cluster.template.json").exists()


def test_synth_report_prints_the_fit_and_the_cost(synth: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The report reads the fit back from cdk.out and dist/: the same as the in-memory check."""
    from final_problem import app, components, cost, report
    from final_problem.profiles import PROFILES

    assert report.main(str(synth.outdir), str(synth.dist)) == 0
    out = capsys.readouterr().out
    capacity_part = out.split("Capacity (requests of long-running pods; fails synth over 80%):\n")[1].split("Monthly cost:")[0]
    fits = app.check_capacity(synth.stacks.settings, app.render_profiles(synth.stacks))
    # Each profile's fit by the scheduler's count, then the line saying what it left out.
    left_out = {f.profile: components.left_out_line(synth.stacks.settings, PROFILES[f.profile]) for f in fits}
    assert capacity_part.splitlines() == [f"  {line}" for f in fits
                                          for line in capacity.describe(f) + [left_out[f.profile]] if line]
    assert capacity_part.startswith("  eks: 3 x m7g.large: cpu ")
    assert "  pi: 3 x Raspberry Pi 4 Model B 4 GB: cpu " in capacity_part
    assert "\n  pi: left out consul (its mesh sidecars embed Envoy), envoy (runs Envoy), demo (requires consul)" in capacity_part
    estimate = cost.from_cdk_out(synth.outdir)
    assert f"Monthly cost:\n  ${estimate.total:,.2f}/month at list price in us-east-1 (region unset, priced as us-east-1)\n" in out
    # And each size on the nodes it picks (tests/test_cost.py: equal to a synth of that size).
    assert (f"\n    by size (-c size=...): small (this synth) 3 x m7g.large ${estimate.total:,.2f}; "
            f"production 3 x m7g.xlarge ${estimate.on_nodes('m7g.xlarge').total:,.2f}\n") in out
    assert "    largest: EC2 $178.70, EKS $73.00, NAT $32.85" in out


def test_fits_within_is_the_raw_answer_and_fits_keeps_the_headroom() -> None:
    nodes = capacity.eks_shapes("m7g.large", 3)
    memory = sum(n.memory_mib for n in nodes)
    big = capacity.Workload(component="x", name="StatefulSet/x/x", pods=1, cpu_m=100, memory_mib=int(memory * 0.9))
    result = capacity.fit("eks", nodes, [big], system_pods=False)
    assert result.fits_within(1.0) and not result.fits
    assert result.by_resource("memory").fits_within(0.95) and not result.by_resource("memory").fits_within(0.85)
    # The add-ons count unless left out: with them the same workload no longer fits at all.
    nearly = dataclasses.replace(big, memory_mib=memory - 100)
    assert capacity.fit("eks", nodes, [nearly], system_pods=False).fits_within(1.0)
    assert not capacity.fit("eks", nodes, [nearly]).fits_within(1.0)
    # One member per node on too few nodes never fits, whatever the share.
    spread = dataclasses.replace(big, pods=4, memory_mib=10, one_per_node=True)
    assert not capacity.fit("eks", nodes, [spread], system_pods=False).fits_within(1.0)
