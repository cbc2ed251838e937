"""Settings: defaults, overrides from context strings, and every invalid value."""

from __future__ import annotations

import dataclasses

import pytest

from final_problem import config, versions
from final_problem.config import Settings
from final_problem.errors import ConfigError
from tests.conftest import CDK_JSON


def test_defaults_match_the_documented_values() -> None:
    s = Settings()
    assert s.cluster_name == "final-problem"
    assert s.kubernetes_version == versions.KUBERNETES_VERSION == "1.36"
    assert (s.az_count, s.nat_gateways) == (3, 1)
    # The node type follows the size unless set: three of it carry every bundled component.
    assert s.size == "small" and s.node_instance_type == "m7g.large" and s.is_graviton
    assert Settings(size="production").node_instance_type == "m7g.xlarge"
    assert Settings(size="production", node_instance_type="r7g.large").node_instance_type == "r7g.large"
    assert (s.node_min, s.node_desired, s.node_max) == (3, 3, 6)
    assert s.endpoint_public_cidrs == () and s.endpoint_private_access is True
    assert s.admin_role_arn is None
    assert s.components == ("base",)
    assert s.profiles == ("eks", "pi")


def test_cdk_json_only_names_known_settings_or_cdk_flags() -> None:
    # "cli-telemetry" is read by the CDK CLI itself; feature flags carry a ":".
    cdk_keys = {"cli-telemetry"}
    unknown = [k for k in CDK_JSON if k not in config.setting_names() and ":" not in k and k not in cdk_keys]
    assert unknown == []


def test_cdk_json_values_parse_to_the_dataclass_defaults() -> None:
    from_json = config.from_mapping(CDK_JSON)
    defaults = Settings()
    for name in ("cluster_name", "kubernetes_version", "az_count", "nat_gateways", "node_instance_type",
                 "node_min", "node_desired", "node_max", "endpoint_public_cidrs", "endpoint_private_access"):
        assert getattr(from_json, name) == getattr(defaults, name), name


def test_command_line_strings_are_parsed_to_their_types() -> None:
    s = config.from_mapping({
        "nat_gateways": "3", "endpoint_public_cidrs": "203.0.113.7/32, 198.51.100.0/24",
        "endpoint_private_access": "false", "components": "base", "account": "123456789012",
        "region": "eu-west-1", "admin_role_arn": "arn:aws:iam::123456789012:role/Admin",
    })
    assert s.nat_gateways == 3
    assert s.endpoint_public_cidrs == ("203.0.113.7/32", "198.51.100.0/24")
    assert s.endpoint_private_access is False
    assert (s.account, s.region) == ("123456789012", "eu-west-1")
    assert s.admin_role_arn == "arn:aws:iam::123456789012:role/Admin"


def test_from_context_passes_only_set_keys() -> None:
    ctx = {"nat_gateways": 2}
    assert config.from_context(lambda: ctx) == dataclasses.replace(Settings(), nat_gateways=2)


def test_non_graviton_instance_type_is_detected() -> None:
    assert not Settings(node_instance_type="m7i.large").is_graviton
    assert Settings(node_instance_type="c7gn.xlarge").is_graviton


INVALID = [
    ({"cluster_name": "-bad"}, "cluster_name", "'-bad'"),
    ({"kubernetes_version": "1.20"}, "kubernetes_version", "'1.20'"),
    ({"account": "12345"}, "account", "'12345'"),
    ({"region": "mars-1"}, "region", "'mars-1'"),
    ({"vpc_cidr": "10.0.0.0/24"}, "vpc_cidr", "'10.0.0.0/24'"),
    ({"vpc_cidr": "banana"}, "vpc_cidr", "'banana'"),
    ({"az_count": "1"}, "az_count", "1"),
    ({"nat_gateways": "0"}, "nat_gateways", "0"),
    ({"nat_gateways": "4"}, "nat_gateways", "4"),
    ({"flow_log_retention_days": "10"}, "flow_log_retention_days", "10"),
    ({"node_instance_type": "large"}, "node_instance_type", "'large'"),
    ({"node_min": "2", "node_desired": "2"}, "node_min", "2"),
    ({"node_max": "99999999999999999999"}, "node_max", "99999999999999999999"),
    ({"node_instance_type": "m7g.lage"}, "node_instance_type", "'m7g.lage'"),
    ({"cluster_name": "final_problem"}, "cluster_name", "'final_problem'"),
    ({"vpc_cidr": "10.0.0.0/18"}, "vpc_cidr", "'10.0.0.0/18'"),
    ({"region": "eu-west-1\n"}, "region", "'eu-west-1\\n'"),
    ({"account": "١٢٣٤٥٦٧٨٩٠١٢"}, "account", "'١٢٣٤٥٦٧٨٩٠١٢'"),
    ({"admin_role_arn": "arn:aws:iam::123456789012:role/Ädmin"}, "admin_role_arn", "'arn:aws:iam::123456789012:role/Ädmin'"),
    ({"zookeeper_replicas": "5"}, "zookeeper_replicas", "'5'"),
    ({"node_desired": "9"}, "node_desired", "9"),
    ({"endpoint_public_cidrs": "300.1.1.1/32"}, "endpoint_public_cidrs", "'300.1.1.1/32'"),
    ({"endpoint_private_access": "false"}, "endpoint_private_access", "False"),
    ({"endpoint_private_access": "maybe"}, "endpoint_private_access", "'maybe'"),
    ({"admin_role_arn": "arn:aws:iam::123:user/x"}, "admin_role_arn", "'arn:aws:iam::123:user/x'"),
    ({"components": ""}, "components", "()"),
    ({"components": "base,base"}, "components", "('base', 'base')"),
    ({"profiles": "eks,docker"}, "profiles", "('eks', 'docker')"),
    ({"node_max": "many"}, "node_max", "'many'"),
]


@pytest.mark.parametrize(("values", "setting", "shown"), INVALID, ids=[i[1] + ":" + str(list(i[0].values())[-1]) for i in INVALID])
def test_invalid_setting_names_setting_value_and_fix(values: dict, setting: str, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.from_mapping(values)
    message = str(info.value)
    assert info.value.setting == setting
    assert message.startswith(f"{setting} = {shown}:"), message
    assert "Fix: " in message and len(info.value.fix) > 5


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_an_address_alone_is_kept_as_its_network() -> None:
    s = config.from_mapping({"endpoint_public_cidrs": "203.0.113.7, 198.51.100.0/24"})
    assert s.endpoint_public_cidrs == ("203.0.113.7/32", "198.51.100.0/24")


def test_the_whole_internet_needs_its_own_setting() -> None:
    with pytest.raises(ConfigError, match=r"^endpoint_public_cidrs = '0.0.0.0/0': opens the public API endpoint "
                                          r"to the whole internet\. Fix: .*set endpoint_public_anywhere=true"):
        config.from_mapping({"endpoint_public_cidrs": "0.0.0.0/0"})
    s = config.from_mapping({"endpoint_public_cidrs": "0.0.0.0/0", "endpoint_public_anywhere": "true"})
    assert s.endpoint_public_cidrs == ("0.0.0.0/0",)


def test_nat_gateways_beyond_two_zones_need_account_and_region() -> None:
    with pytest.raises(ConfigError, match=r"^nat_gateways = 3: without account and region .* 2 zones.*Fix: set nat_gateways=2"):
        config.from_mapping({"nat_gateways": "3", "region": "eu-west-1"})
    assert config.from_mapping({"nat_gateways": "3", "account": "123456789012", "region": "eu-west-1"}).nat_gateways == 3


def test_a_number_beyond_a_double_is_named_as_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The CDK CLI hands the app null for 1e400 in cdk.json; the error names 1e400, not None."""
    (tmp_path / "cdk.json").write_text('{"context": {"node_max": 1e400, "zookeeper": {"heap_mib": 1' + "0" * 400 + '}}}')
    context = config.restore_written_numbers({"node_max": None, "zookeeper": {"heap_mib": None}}, tmp_path)
    assert (repr(context["node_max"]), str(context["zookeeper"]["heap_mib"])) == ("1e400", "1" + "0" * 400)
    with pytest.raises(ConfigError, match=r"^node_max = 1e400 \(from cdk\.json\): beyond what a JSON number holds"):
        config.load(context, config.context_origins(context, tmp_path))


def test_a_default_per_size_is_its_profiles_own_unless_the_size_has_one() -> None:
    from final_problem.profiles import EKS, PI
    from final_problem.settings import per_profile

    default = per_profile(eks=512, eks_production=2048, pi=320)
    assert [default.for_profile(p) for p in (EKS, EKS.sized("production"), PI, PI.sized("production"))] == [
        512, 2048, 320, 320]  # the Pi has no production size: its own
    assert per_profile(eks=1, pi=2).for_profile(EKS.sized("production")) == 1
    assert default.describe() == "eks 512 (production 2048), pi 320"
    with pytest.raises(TypeError, match="no profile or size pi_production"):
        per_profile(eks=1, pi=2, pi_production=3)


def test_the_size_setting_moves_every_component_default_and_the_node_type() -> None:
    from final_problem.charts.zookeeper import ZooKeeperProps
    from final_problem.profiles import PROFILES

    small, production = config.from_mapping({}), config.from_mapping({"size": "production"})
    assert small.component(ZooKeeperProps, PROFILES["eks"]).memory_mib == 512
    assert production.component(ZooKeeperProps, PROFILES["eks"]).memory_mib == 2048
    assert production.component(ZooKeeperProps, PROFILES["pi"]).memory_mib == 320
    # A component's own setting still wins.
    given = config.from_mapping({"size": "production", "zookeeper": {"memory_mib": 1024}})
    assert given.component(ZooKeeperProps, PROFILES["eks"]).memory_mib == 1024
    assert (small.node_types_by_size(), production.node_types_by_size()) == (
        {"small": "m7g.large", "production": "m7g.xlarge"},) * 2
    assert config.from_mapping({"node_instance_type": "r7g.large"}).node_types_by_size() == {
        "small": "r7g.large", "production": "r7g.large"}
    with pytest.raises(ConfigError, match=r"^size = 'huge': must be one of small, production\. Fix: set size=small$"):
        config.from_mapping({"size": "huge"})


# --- a shared settings class, read differently by one component ------------------------------

def test_a_component_overrides_an_inherited_settings_doc_range_and_rule_not_its_field() -> None:
    from final_problem.changes import nothing, rolling
    from final_problem.settings import ComponentSettings, setting

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Shared(ComponentSettings):
        interval: int = setting(60, minimum=5, maximum=100, doc="Shared.", change=rolling("sidecars"))

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Own(Shared):
        section = "own"
        setting_overrides = {"interval": {"doc": "Own.", "maximum": 80, "change": nothing("a CronJob")}}

    (shared,), (own,) = Shared.infos(), Own.infos()
    assert (shared.doc, shared.maximum, shared.change.reason) == ("Shared.", 100, "sidecars")
    assert (own.doc, own.maximum, own.change.reason, own.default) == ("Own.", 80, "a CronJob", 60)
    with pytest.raises(ConfigError, match=r"own.interval = 90.*must be 5 to 80"):
        Own(interval=90)


@pytest.mark.parametrize("overrides, message", [
    ({"intervl": {"doc": "x"}}, "no setting intervl to override"),
    ({"interval": {"default": 5}}, "default cannot be overridden"),
])
def test_an_override_of_no_setting_or_of_its_default_fails_when_read(overrides: dict, message: str) -> None:
    from final_problem.settings import ComponentSettings, setting

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Wrong(ComponentSettings):
        interval: int = setting(60, doc="x")
        setting_overrides = overrides

    with pytest.raises(TypeError, match=message):
        Wrong.infos()
