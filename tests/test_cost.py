"""The monthly cost estimate, from synthesized apps, against figures computed by hand."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import lru_cache
from typing import Any

import pytest

from final_problem import app as platform_app
from final_problem import config, cost
from final_problem.errors import ConfigError
from final_problem.prices import PRICES
from tests.conftest import CDK_JSON, ROOT, new_app

HOURS = 730
US = PRICES["us-east-1"]
EU = PRICES["eu-west-1"]
ACCOUNT = "123456789012"
# The components the figures below were computed for, whatever cdk.json enables.
# Figures below are for a fixed setting: three components on 3 x m7g.large, whatever cdk.json says.
DEFAULTS = {
    **{k: v for k, v in CDK_JSON.items() if k in config.setting_names()},
    "components": ["base", "redis", "zookeeper"], "node_instance_type": "m7g.large",
}


@lru_cache(maxsize=None)
def _estimate(items: tuple[tuple[str, Any], ...]) -> cost.Estimate:
    overrides = dict(items)
    context: dict[str, Any] = {}
    if "region" in overrides:
        # The zones CDK would look up for a known environment, so synth stays offline.
        region = overrides["region"]
        context[f"availability-zones:account={ACCOUNT}:region={region}"] = [f"{region}{z}" for z in "abc"]
    app = new_app(**context)
    settings = config.from_mapping({**DEFAULTS, **overrides})
    platform_app.build(app, settings)
    return cost.from_assembly(app.synth())


def estimate(**overrides: Any) -> cost.Estimate:
    return _estimate(tuple(sorted(overrides.items())))


def test_default_equals_the_hand_computed_figure() -> None:
    result = estimate()
    expected = (
        0.10 * HOURS                      # EKS control plane
        + 3 * 0.0816 * HOURS              # 3 x m7g.large
        + 3 * 20 * 0.08                   # their 20 GiB gp3 root volumes
        + 0.045 * HOURS                   # 1 NAT gateway
        + 0.005 * HOURS                   # its Elastic IP
        + (3 * 2 * 10 + 3 * 8 + 3 * 1) * 0.08  # ZooKeeper 2 x 10 GiB, Redis 8 GiB, Sentinel 1 GiB, 3 each, gp3
        + 3 * 1.00                        # KMS: flow logs key, secrets key, backup bucket key
        + 5 * 1.0 * 0.50                  # 5 control-plane log types x 1 GB (assumed)
        + 5.0 * 0.50                      # 5 GB of flow logs (assumed)
    )
    assert result.total == pytest.approx(expected)
    assert round(result.total, 2) == 307.96
    assert (result.region, result.region_source) == ("us-east-1", "region unset, priced as us-east-1")


def test_a_second_combination_equals_the_hand_computed_figure() -> None:
    # eu-west-1, three zones with one NAT each, 4 x m6g.xlarge, ZooKeeper volumes of 20 GiB.
    result = estimate(account=ACCOUNT, region="eu-west-1", nat_gateways=3, node_instance_type="m6g.xlarge",
                      node_desired=4, **{"zookeeper.storage_gib": 20})
    expected = (
        0.10 * HOURS
        + 4 * (2 * 0.086) * HOURS         # m6g.xlarge = 2 x m6g.large
        + 4 * 20 * 0.088
        + 3 * 0.048 * HOURS               # 3 NAT gateways
        + 3 * 0.005 * HOURS               # their 3 Elastic IPs
        + (3 * 2 * 20 + 3 * 8 + 3 * 1) * 0.088
        + 3 * 1.00
        + 5 * 1.0 * 0.57
        + 5.0 * 0.57
    )
    assert result.total == pytest.approx(expected)
    assert (result.region, result.region_source) == ("eu-west-1", "from the settings")


@pytest.mark.parametrize(
    ("overrides", "delta"),
    [
        ({"node_instance_type": "m7g.xlarge"}, 3 * 0.0816 * HOURS),            # each node doubles
        ({"node_desired": 4}, 0.0816 * HOURS + 20 * 0.08),                     # one more node + root volume
        ({"nat_gateways": 2}, 0.045 * HOURS + 0.005 * HOURS),                  # one more NAT + its address
        ({"zookeeper.storage_gib": 15}, 3 * 2 * 5 * 0.08),                     # 3 members x 2 volumes x 5 GiB
        ({"redis.storage_gib": 10}, 3 * 2 * 0.08),                             # 3 members x 2 GiB
    ],
    ids=["node-type", "node-count", "nat-count", "zookeeper-volume", "redis-volume"],
)
def test_a_setting_moves_the_figure_by_the_expected_amount(overrides: dict[str, Any], delta: float) -> None:
    assert estimate(**overrides).total - estimate().total == pytest.approx(delta)


def test_cdk_out_and_the_in_memory_assembly_agree(synth: Any) -> None:
    from_disk, in_memory = cost.from_cdk_out(synth.outdir), cost.from_assembly(synth.app.synth())
    assert from_disk.total == pytest.approx(in_memory.total)
    assert [line.item for line in from_disk.lines] == [line.item for line in in_memory.lines]


def test_command_prints_the_breakdown_and_json(synth: Any) -> None:
    run = [sys.executable, "-m", "final_problem.cost", "--cdk-out", str(synth.outdir)]
    text = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout
    assert "3 x m7g.large" in text and "total (USD, 730 hours a month)" in text and "Assumptions:" in text
    data = json.loads(subprocess.run(run + ["--json", "--flow-log-gb", "0"], cwd=ROOT, capture_output=True,
                                      text=True, check=True, timeout=120).stdout)
    assert data["total_monthly"] == round(cost.from_cdk_out(synth.outdir).total - 5.0 * 0.50, 2)
    assert data["assumptions"]["flow_log_gb"] == 0


# --- templates written here, to price what the platform does not create yet ----------------------


def _stack(region: str | None = None, objects: list[dict[str, Any]] | Any = (), **resources: Any) -> cost.StackTemplate:
    body: dict[str, Any] = {lid: {"Type": t, "Properties": p} for lid, (t, p) in resources.items()}
    manifest = objects if isinstance(objects, dict) else json.dumps(list(objects))
    body["Manifest"] = {"Type": "Custom::AWSCDK-EKS-KubernetesResource", "Properties": {"Manifest": manifest}}
    return cost.StackTemplate("test", {"Resources": body}, region)


def test_load_balancer_services_become_nlbs_with_public_addresses() -> None:
    public_subnet = ("AWS::EC2::Subnet", {"MapPublicIpOnLaunch": True})
    service = {"kind": "Service", "metadata": {"name": "edge", "namespace": "envoy"}, "spec": {"type": "LoadBalancer"}}
    internal = {"kind": "Service", "metadata": {"name": "db", "namespace": "x", "annotations": {
        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}}, "spec": {"type": "LoadBalancer"}}
    result = cost.estimate([_stack(objects=[service, internal], A=public_subnet, B=public_subnet)])
    assert result.total == pytest.approx(2 * (0.0225 + 0.006) * HOURS + 2 * 0.005 * HOURS)


def test_bare_claims_priced_by_their_storage_class() -> None:
    objects = [
        {"kind": "StorageClass", "metadata": {"name": "fast"}, "provisioner": "ebs.csi.aws.com", "parameters": {"type": "io2"}},
        {"kind": "StorageClass", "metadata": {"name": "plain", "annotations": {
            "storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "ebs.csi.aws.com"},
        {"kind": "PersistentVolumeClaim", "metadata": {"name": "a", "namespace": "n"},
         "spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "100Gi"}}}},
        {"kind": "PersistentVolumeClaim", "metadata": {"name": "b", "namespace": "n"},
         "spec": {"resources": {"requests": {"storage": "50Gi"}}}},
    ]
    result = cost.estimate([_stack(objects=objects)])
    assert result.total == pytest.approx(100 * 0.125 + 50 * 0.08)


def test_manifest_joined_with_tokens_is_read() -> None:
    text = json.dumps([{"kind": "PersistentVolumeClaim", "metadata": {"name": "TOKEN"},
                        "spec": {"resources": {"requests": {"storage": "10Gi"}}}}])
    before, after = text.split("TOKEN")
    joined = {"Fn::Join": ["", [before, {"Ref": "Something"}, after]]}
    assert cost.estimate([_stack(objects=joined)]).total == pytest.approx(10 * 0.08)


def test_unknown_region_fails_with_one_line() -> None:
    with pytest.raises(ConfigError, match=(
        r"^region = 'ap-south-2': no price table for this region "
        r"\(final_problem/prices.py has us-east-1, us-west-2, eu-west-1, eu-central-1\)\. "
        r"Fix: set region=us-east-1 to price it there, or add the region's prices"
    )):
        cost.estimate([_stack(region="ap-south-2")])


def test_unpriced_instance_type_fails_naming_priced_ones() -> None:
    nodegroup = ("AWS::EKS::Nodegroup", {"InstanceTypes": ["m8g.large"], "ScalingConfig": {"DesiredSize": 3}})
    with pytest.raises(ConfigError) as info:
        cost.estimate([_stack(region="eu-west-1", N=nodegroup)])
    message = str(info.value)
    assert message.startswith("node_instance_type = 'm8g.large': no list price for it in eu-west-1")
    first, others = message.split("Fix: set node_instance_type=")[1].split("), or add")[0].split(" (or ")
    suggestions = [first, *others.split(", ")]
    assert suggestions and all(EU.instance_hour(s) is not None for s in suggestions)
    assert all(s.endswith(".large") for s in suggestions)


def test_every_capacity_type_is_priced_in_us_east_1() -> None:
    from final_problem.capacity import INSTANCE_TYPES

    unpriced = [name for name in INSTANCE_TYPES if US.instance_hour(name) is None]
    # The 8th-generation Intel and AMD families are newer than the price table.
    assert {name.split(".")[0] for name in unpriced} <= {"m8i", "m8a", "c8i", "c8a", "r8i", "r8a"}


def test_an_unpriced_region_fails_the_command_and_is_one_line_in_the_synth_report(
    tmp_path: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    from final_problem import report

    region = "ap-south-2"
    app = new_app(outdir=tmp_path / "cdk.out", **{
        f"availability-zones:account={ACCOUNT}:region={region}": [f"{region}{z}" for z in "abc"],
    })
    platform_app.build(app, config.from_mapping({**DEFAULTS, "account": ACCOUNT, "region": region}))
    app.synth()
    (tmp_path / "dist").mkdir()
    command = [sys.executable, "-m", "final_problem.cost", "--cdk-out", str(tmp_path / "cdk.out")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: region = 'ap-south-2': no price table for this region")
    assert result.stderr.count("\n") == 1
    # The templates are valid: make synth still succeeds and says why there is no figure.
    assert report.main(str(tmp_path / "cdk.out"), str(tmp_path / "dist")) == 0
    out = capsys.readouterr().out
    assert "Monthly cost:\n  not estimated: region = 'ap-south-2': no price table for this region" in out


#: Rows of the README's cost table (us-east-1, every component cdk.json enables) and their settings.
README_ROWS = {
    "**default**": {},
    "production sizes": {"size": "production"},
    "cheapest HA that fits every component on nodes that do not throttle": {"node_instance_type": "m6g.large"},
    "zone-independent": {"account": ACCOUNT, "region": "us-east-1", "nat_gateways": 3},
    "ZooKeeper and Redis only": {"components": ["base", "redis", "zookeeper"], "node_instance_type": "m7g.large"},
}


def test_the_readme_cost_table_is_what_the_estimate_says() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    platform = {k: v for k, v in CDK_JSON.items() if k in config.setting_names()}
    for label, overrides in README_ROWS.items():
        row = next(line for line in readme if line.startswith(f"| {label}"))
        shown = float(re.findall(r"\$([\d,]+\.\d\d)", row)[-1].replace(",", ""))
        context = {}
        if "region" in overrides:
            region = overrides["region"]
            context[f"availability-zones:account={ACCOUNT}:region={region}"] = [f"{region}{z}" for z in "abc"]
        app = new_app(**context)
        platform_app.build(app, config.from_mapping({**platform, **overrides}))
        assert round(cost.from_assembly(app.synth()).total, 2) == shown, label


def test_each_size_costs_what_a_synth_of_it_costs() -> None:
    """The report's line per size prices the synth on the other size's nodes: the same figure
    as synthesizing that size (the sizes differ in requests and limits only, not in what is
    priced)."""
    small, production = estimate(), estimate(size="production", node_instance_type="m7g.xlarge")
    assert small.on_nodes("m7g.xlarge").total == pytest.approx(production.total)
    assert production.on_nodes("m7g.large").total == pytest.approx(small.total)
    assert [line.item for line in small.on_nodes("m7g.xlarge").lines] == [line.item for line in production.lines]
