"""CDK stacks: the VPC, and the EKS cluster with the platform's charts applied."""

from final_problem.stacks.cluster import ClusterStack
from final_problem.stacks.network import NetworkStack
from final_problem.stacks.platform import Platform

__all__ = ["ClusterStack", "NetworkStack", "Platform"]
