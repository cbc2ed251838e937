"""The VPC and EKS stacks: what cdk-nag cannot see on aws_eks_v2 is asserted here."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Template

from final_problem import app as platform_app
from final_problem.config import Settings
from final_problem.errors import ConfigError
from tests.conftest import new_app


@pytest.fixture(scope="module")
def cluster(synth) -> Template:  # type: ignore[no-untyped-def]
    return Template.from_json(synth.templates["final-problem-cluster"])


@pytest.fixture(scope="module")
def network(synth) -> Template:  # type: ignore[no-untyped-def]
    return Template.from_json(synth.templates["final-problem-network"])


def only(template: Template, kind: str) -> dict:
    found = template.find_resources(kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return next(iter(found.values()))


def test_cluster_sends_all_five_control_plane_log_types(cluster: Template) -> None:
    types = only(cluster, "AWS::EKS::Cluster")["Properties"]["Logging"]["ClusterLogging"]["EnabledTypes"]
    assert sorted(t["Type"] for t in types) == ["api", "audit", "authenticator", "controllerManager", "scheduler"]


def test_secrets_are_encrypted_with_a_rotating_customer_key(cluster: Template) -> None:
    props = only(cluster, "AWS::EKS::Cluster")["Properties"]
    (config,) = props["EncryptionConfig"]
    assert config["Resources"] == ["secrets"]
    key_id = config["Provider"]["KeyArn"]["Fn::GetAtt"][0]
    key = cluster.find_resources("AWS::KMS::Key")[key_id]
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["DeletionPolicy"] == "Retain"


def test_endpoint_is_private_only_by_default(cluster: Template) -> None:
    vpc_config = only(cluster, "AWS::EKS::Cluster")["Properties"]["ResourcesVpcConfig"]
    assert vpc_config["EndpointPrivateAccess"] is True
    assert vpc_config["EndpointPublicAccess"] is False


def test_public_endpoint_is_limited_to_the_given_cidrs() -> None:
    settings = Settings(endpoint_public_cidrs=("203.0.113.7/32",))
    stacks = platform_app.build(new_app(), settings)
    vpc_config = only(Template.from_stack(stacks.cluster), "AWS::EKS::Cluster")["Properties"]["ResourcesVpcConfig"]
    assert vpc_config["EndpointPublicAccess"] is True
    assert vpc_config["EndpointPrivateAccess"] is True
    assert vpc_config["PublicAccessCidrs"] == ["203.0.113.7/32"]


def test_cluster_runs_the_configured_kubernetes_version(cluster: Template) -> None:
    assert only(cluster, "AWS::EKS::Cluster")["Properties"]["Version"] == "1.36"


def test_nodes_are_graviton_in_private_subnets(cluster: Template) -> None:
    ng = only(cluster, "AWS::EKS::Nodegroup")["Properties"]
    assert ng["AmiType"] == "AL2023_ARM_64_STANDARD"
    assert ng["InstanceTypes"] == ["m7g.large"]
    assert ng["ScalingConfig"] == {"MinSize": 3, "DesiredSize": 3, "MaxSize": 6}
    assert ng["UpdateConfig"] == {"MaxUnavailable": 1}
    assert all("PrivateSubnet" in s["Fn::ImportValue"] for s in ng["Subnets"])


def test_x86_instance_types_get_the_x86_ami() -> None:
    stacks = platform_app.build(new_app(), Settings(node_instance_type="m7i.large"))
    ng = only(Template.from_stack(stacks.cluster), "AWS::EKS::Nodegroup")["Properties"]
    assert ng["AmiType"] == "AL2023_x86_64_STANDARD"


def test_ebs_csi_driver_uses_pod_identity(cluster: Template) -> None:
    addons = cluster.find_resources("AWS::EKS::Addon")
    names = sorted(a["Properties"]["AddonName"] for a in addons.values())
    assert names == ["aws-ebs-csi-driver", "eks-pod-identity-agent"]
    ebs = next(a for a in addons.values() if a["Properties"]["AddonName"] == "aws-ebs-csi-driver")
    (assoc,) = ebs["Properties"]["PodIdentityAssociations"]
    assert assoc["ServiceAccount"] == "ebs-csi-controller-sa"
    role = cluster.find_resources("AWS::IAM::Role")[assoc["RoleArn"]["Fn::GetAtt"][0]]
    statement = role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
    assert statement["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert sorted(statement["Action"]) == ["sts:AssumeRole", "sts:TagSession"]


def test_admin_role_gets_a_cluster_admin_access_entry() -> None:
    arn = "arn:aws:iam::123456789012:role/PlatformAdmin"
    stacks = platform_app.build(new_app(), Settings(admin_role_arn=arn))
    entries = Template.from_stack(stacks.cluster).find_resources("AWS::EKS::AccessEntry")
    (entry,) = [e for e in entries.values() if e["Properties"]["PrincipalArn"] == arn]
    (policy,) = entry["Properties"]["AccessPolicies"]
    assert policy["AccessScope"] == {"Type": "cluster"}
    arn_parts = policy["PolicyArn"]["Fn::Join"][1]
    assert arn_parts[-1].endswith(":cluster-access-policy/AmazonEKSClusterAdminPolicy")


def test_no_admin_access_entry_without_a_role(cluster: Template) -> None:
    entries = cluster.find_resources("AWS::EKS::AccessEntry")
    assert all(e["Properties"]["PrincipalArn"] != "arn:aws:iam::123456789012:role/PlatformAdmin" for e in entries.values())


def test_charts_are_applied_after_nodes_and_the_storage_driver(cluster: Template) -> None:
    manifests = cluster.find_resources("Custom::AWSCDK-EKS-KubernetesResource")
    assert manifests
    for body in manifests.values():
        assert "EbsCsiDriver" in body["DependsOn"]
        assert any(d.startswith("ClusterNodegroupWorkers") for d in body["DependsOn"])


def test_vpc_has_flow_logs_and_tagged_subnets(network: Template) -> None:
    network.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "ALL", "LogDestinationType": "cloud-watch-logs"})
    network.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": 90})
    subnets = network.find_resources("AWS::EC2::Subnet")
    for logical_id, body in subnets.items():
        tags = {t["Key"]: t["Value"] for t in body["Properties"]["Tags"]}
        expected = "kubernetes.io/role/elb" if "Public" in logical_id else "kubernetes.io/role/internal-elb"
        assert tags.get(expected) == "1", logical_id


def test_env_agnostic_synth_uses_two_zones_and_one_nat(network: Template) -> None:
    assert len(network.find_resources("AWS::EC2::Subnet")) == 4
    assert len(network.find_resources("AWS::EC2::NatGateway")) == 1


def test_three_zones_when_account_and_region_are_known() -> None:
    app = new_app(**{
        "availability-zones:account=123456789012:region=eu-west-1": ["eu-west-1a", "eu-west-1b", "eu-west-1c"],
    })
    stacks = platform_app.build(app, Settings(account="123456789012", region="eu-west-1", nat_gateways=3))
    network = Template.from_stack(stacks.network)
    assert len(network.find_resources("AWS::EC2::Subnet")) == 6
    assert len(network.find_resources("AWS::EC2::NatGateway")) == 3


def test_stacks_expose_what_other_apps_need(synth) -> None:  # type: ignore[no-untyped-def]
    assert synth.stacks.network.vpc is synth.stacks.cluster.cluster.vpc
    assert synth.stacks.cluster.platform.charts["base"].storage_class_name == "gp3-encrypted"


def test_missing_kubectl_layer_fails_with_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("final_problem.versions.SUPPORTED_KUBERNETES_VERSIONS", ("1.36", "1.99"))
    with pytest.raises(ConfigError, match=r"kubernetes_version = '1.99'.*pip install aws-cdk.lambda-layer-kubectl-v99"):
        platform_app.build(new_app(), Settings(kubernetes_version="1.99"))
