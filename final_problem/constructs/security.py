"""Pod Security Standard "restricted" contexts and container sizing.

The "restricted" profile requires: runAsNonRoot, allowPrivilegeEscalation false, all
capabilities dropped and a RuntimeDefault (or Localhost) seccomp profile.
Source: Kubernetes docs, "Pod Security Standards", Restricted.

cdk8s-plus-27 models neither the seccomp profile nor dropping ``ALL`` capabilities (its
``Capability`` enum has no ``ALL``); :func:`harden` adds both with JSON patches on the
rendered object, after every container has been added.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import cdk8s

from final_problem.errors import ConfigError
from final_problem.imports import k8s, quantity
from final_problem.interop import returned_as

if TYPE_CHECKING:
    import cdk8s_plus_27 as kplus

# cdk8s-plus-27 is imported by the helpers for its workloads, when called: the charts
# build raw objects, and loading it costs synthesis about 0.2 s.


def restricted_container(*, uid: int, gid: int | None = None) -> kplus.ContainerSecurityContextProps:
    """A container security context that passes "restricted", read-only root filesystem."""
    import cdk8s_plus_27 as kplus

    return kplus.ContainerSecurityContextProps(
        ensure_non_root=True,
        user=uid,
        group=gid if gid is not None else uid,
        privileged=False,
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
    )


def restricted_pod(*, uid: int, gid: int | None = None, fs_group: int | None = None) -> kplus.PodSecurityContextProps:
    """A pod security context that passes "restricted".

    ``fs_group`` makes mounted volumes writable by the (non-root) user;
    OnRootMismatch skips the recursive chown on every start once ownership is right.
    """
    import cdk8s_plus_27 as kplus

    group = gid if gid is not None else uid
    return kplus.PodSecurityContextProps(
        ensure_non_root=True,
        user=uid,
        group=group,
        fs_group=fs_group if fs_group is not None else group,
        fs_group_change_policy=kplus.FsGroupChangePolicy.ON_ROOT_MISMATCH,
    )


def harden(workload: kplus.AbstractPod) -> None:
    """Add what cdk8s-plus-27 cannot express: seccomp RuntimeDefault, drop ALL capabilities.

    Call it once, after the last container is added.
    """
    api = cdk8s.ApiObject.of(workload)
    spec = "/spec" if api.kind == "Pod" else "/spec/template/spec"
    api.add_json_patch(cdk8s.JsonPatch.add(f"{spec}/securityContext/seccompProfile", {"type": "RuntimeDefault"}))
    for kind, containers in (("initContainers", workload.init_containers), ("containers", workload.containers)):
        for index in range(len(containers)):
            api.add_json_patch(
                cdk8s.JsonPatch.add(f"{spec}/{kind}/{index}/securityContext/capabilities", {"drop": ["ALL"]})
            )


@dataclass(frozen=True, kw_only=True)
class Sizing:
    """Requests and limits of one container, in millicores and MiB."""

    cpu_request_m: int
    cpu_limit_m: int
    memory_request_mib: int
    memory_limit_mib: int

    def __post_init__(self) -> None:
        if not 0 < self.cpu_request_m <= self.cpu_limit_m:
            raise ConfigError(
                "cpu_request_m", self.cpu_request_m,
                f"must be positive and at most cpu_limit_m ({self.cpu_limit_m})",
                "lower the request or raise the limit",
            )
        if not 0 < self.memory_request_mib <= self.memory_limit_mib:
            raise ConfigError(
                "memory_request_mib", self.memory_request_mib,
                f"must be positive and at most memory_limit_mib ({self.memory_limit_mib})",
                "lower the request or raise the limit",
            )

    def resources(self) -> kplus.ContainerResources:
        """The sizing as cdk8s-plus-27 container resources."""
        import cdk8s_plus_27 as kplus

        return kplus.ContainerResources(
            cpu=kplus.CpuResources(
                request=kplus.Cpu.millis(self.cpu_request_m), limit=kplus.Cpu.millis(self.cpu_limit_m)
            ),
            memory=kplus.MemoryResources(
                request=cdk8s.Size.mebibytes(self.memory_request_mib),
                limit=cdk8s.Size.mebibytes(self.memory_limit_mib),
            ),
        )


# Raw Kubernetes forms of the same contexts, for objects cdk8s-plus-27 cannot express
# (StatefulSets with volume claim templates; see constructs/quorum.py).


def container_context(*, uid: int, gid: int | None = None, api: ModuleType | None = None) -> Any:
    """Raw form of :func:`restricted_container` (a ``k8s.SecurityContext``).

    ``api``: a cdk8s ``k8s`` module (``cdk8s_plus_27.k8s``) to get its kinds instead of
    the project's (:mod:`final_problem.interop`). Default: the project's."""
    return returned_as(k8s.SecurityContext(
        run_as_non_root=True,
        run_as_user=uid,
        run_as_group=gid if gid is not None else uid,
        privileged=False,
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        capabilities=k8s.Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.SeccompProfile(type="RuntimeDefault"),
    ), api)


def pod_context(*, uid: int, gid: int | None = None, fs_group: int | None = None, api: ModuleType | None = None) -> Any:
    """Raw form of :func:`restricted_pod` including the seccomp profile (a ``k8s.PodSecurityContext``).

    ``api``: a cdk8s ``k8s`` module (``cdk8s_plus_27.k8s``) to get its kinds instead of
    the project's (:mod:`final_problem.interop`). Default: the project's."""
    group = gid if gid is not None else uid
    return returned_as(k8s.PodSecurityContext(
        run_as_non_root=True,
        run_as_user=uid,
        run_as_group=group,
        fs_group=fs_group if fs_group is not None else group,
        fs_group_change_policy="OnRootMismatch",
        seccomp_profile=k8s.SeccompProfile(type="RuntimeDefault"),
    ), api)


def raw_resources(sizing: Sizing, *, api: ModuleType | None = None) -> Any:
    """Raw form of :meth:`Sizing.resources` (a ``k8s.ResourceRequirements``).

    ``api``: a cdk8s ``k8s`` module (``cdk8s_plus_27.k8s``) to get its kinds instead of
    the project's (:mod:`final_problem.interop`). Default: the project's."""
    return returned_as(k8s.ResourceRequirements(
        requests={
            "cpu": quantity(f"{sizing.cpu_request_m}m"),
            "memory": quantity(f"{sizing.memory_request_mib}Mi"),
        },
        limits={
            "cpu": quantity(f"{sizing.cpu_limit_m}m"),
            "memory": quantity(f"{sizing.memory_limit_mib}Mi"),
        },
    ), api)
