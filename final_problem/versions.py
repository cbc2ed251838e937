"""Every version and image reference the platform pins, each with its source.

Images are official, multi-arch (linux/amd64 and linux/arm64) and pinned to exact tags:
EKS nodes default to Graviton (arm64), the same architecture as a Raspberry Pi 4/5.
"""

from __future__ import annotations

# Kubernetes: the newest version that both ``aws_eks_v2.KubernetesVersion`` (V1_36 in
# aws-cdk-lib 2.275) and a published kubectl layer package (aws-cdk.lambda-layer-kubectl-v36
# on PyPI) support. The layer package is chosen from this value in
# final_problem/stacks/cluster.py.
KUBERNETES_VERSION = "1.36"
SUPPORTED_KUBERNETES_VERSIONS = ("1.33", "1.34", "1.35", "1.36")

# Python runtime for in-cluster helper Jobs (secret generation).
# Source: docker-library/official-images, library/python: "3.13.9-slim-trixie",
# Architectures: amd64, arm32v5, arm32v7, arm64v8, i386, ppc64le, riscv64, s390x.
PYTHON_IMAGE = "docker.io/library/python:3.13.9-slim-trixie"

# The platform's own version, the app.kubernetes.io/version of platform-wide objects.
PLATFORM_VERSION = "0.1.0"

# Redis: the official image, Debian trixie variant.
# Source: docker-library/official-images, library/redis (Aug 2026):
# "Tags: 8.10.1, 8.10, 8, 8.10.1-trixie, ...", Architectures: amd64, arm32v5, arm32v7,
# arm64v8, i386, riscv64, ppc64le, s390x. The image's redis user is uid/gid 999.
# The rendered configuration uses only directives Redis 7.0 (Debian 12, used by the
# integration tests) also accepts; see final_problem/renderers/redis.py.
REDIS_VERSION = "8.10.1"
REDIS_IMAGE = f"docker.io/library/redis:{REDIS_VERSION}-trixie"

# ZooKeeper server image, the 3.9 line.
# Source: docker-library/official-images, library/zookeeper: "Tags: 3.9.4, 3.9, 3.9.4-jre-17",
# Architectures: amd64, arm64v8, s390x, ppc64le (GitRepo 31z4/zookeeper-docker, Directory 3.9.4).
ZOOKEEPER_VERSION = "3.9.4"
ZOOKEEPER_IMAGE = f"docker.io/library/zookeeper:{ZOOKEEPER_VERSION}"

# KWOK plays the kubelet of the integration tests' fake Nodes (pods turn Running and Ready).
# Source: the Go module proxy, proxy.golang.org/sigs.k8s.io/kwok/@v/list (v0.8.0 newest, Nov
# 2026); its go.mod requires k8s.io/* v0.36.1, the cluster's minor. `make kube-binaries` builds it.
KWOK_VERSION = "0.8.0"
