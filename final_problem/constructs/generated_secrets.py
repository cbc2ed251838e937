"""Secrets generated inside the cluster, once, so no value exists in any template.

A :class:`GeneratedSecrets` adds to a namespace: a ServiceAccount, a Role allowing
``create`` on Secrets (RBAC cannot restrict ``create`` by resource name; Kubernetes docs,
"Using RBAC Authorization", Referring to resources), a ConfigMap holding
``secret_generator.py``, a NetworkPolicy letting the Job reach the API server, and a
Job that creates each missing Secret with random values and leaves existing ones alone.
They are raw Kubernetes objects: each cdk8s-plus construct costs several jsii round trips
at synthesis, for nothing these objects need.

The Job name carries a hash of what it creates and of the image, so a change gives a new
Job instead of an update that Kubernetes would reject (a Job's pod template is immutable).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from final_problem.objects import Group, ObjectChart

from final_problem import versions
from final_problem.constructs.labels import LabelSet
from final_problem.constructs.namespace import ports
from final_problem.constructs.security import Sizing, container_context, pod_context, raw_resources
from final_problem.errors import ConfigError
from final_problem.imports import k8s, quantity

SCRIPT = Path(__file__).with_name("secret_generator.py")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The official python image has no non-root user; "nobody" (65534) owns nothing in it.
RUNNER_UID = 65534
# The API server: the kubernetes Service (443) is DNAT-ed to the endpoints before
# NetworkPolicy applies, on EKS the control-plane ENIs on 443, on k3s the server on 6443
# (k3s docs, "Inbound Rules for K3s Nodes").
API_PORTS = (443, 6443)
#: Value formats the generator knows (``secret_generator.py``, ``value``).
VALUE_FORMATS = ("token", "kafka-uuid")


@dataclass(frozen=True, kw_only=True)
class SecretSpec:
    """A Secret to generate: its name, its keys, and random bytes per value."""

    name: str
    keys: tuple[str, ...]
    #: Random bytes per value, URL-safe base64 encoded. Default 32 (256 bits).
    bytes: int = 32
    labels: dict[str, str] = field(default_factory=dict)
    #: How a value is written. Default ``token``: URL-safe base64 of ``bytes`` random
    #: bytes. ``kafka-uuid``: a Kafka cluster id as ``kafka-storage random-uuid`` prints
    #: it (16 random bytes, URL-safe base64 without padding, not starting with ``-``);
    #: ``bytes`` must then be 16.
    format: str = "token"

    def __post_init__(self) -> None:
        if not _DNS_NAME.match(self.name) or len(self.name) > 253:
            raise ConfigError("secret.name", self.name, "not a valid Kubernetes object name", "use lower-case letters, digits and '-'")
        if not self.keys:
            raise ConfigError(f"secret {self.name}.keys", self.keys, "a secret needs at least one key", "name its keys, e.g. ('password',)")
        if self.format not in VALUE_FORMATS:
            raise ConfigError(f"secret {self.name}.format", self.format, "unknown value format", f"use one of {', '.join(VALUE_FORMATS)}")
        if self.format == "kafka-uuid" and self.bytes != 16:
            raise ConfigError(f"secret {self.name}.bytes", self.bytes, "a Kafka cluster id is 16 bytes", "use bytes=16")
        if self.bytes < 16:
            raise ConfigError(
                f"secret {self.name}.bytes", self.bytes,
                "fewer than 16 random bytes (128 bits) is guessable",
                "use 16 or more; the default is 32",
            )


class GeneratedSecrets(Group):
    """Generate named Secrets in ``namespace`` from inside the cluster, once."""

    def __init__(
        self,
        scope: ObjectChart | Group,
        id: str,
        *,
        namespace: str,
        labels: LabelSet,
        secrets: Sequence[SecretSpec],
        sizing: Sizing | None = None,
    ) -> None:
        super().__init__(scope, id)
        if not secrets:
            raise ConfigError("secrets", secrets, "nothing to generate", "pass at least one SecretSpec")
        names = [s.name for s in secrets]
        if len(set(names)) != len(names):
            raise ConfigError("secrets", names, "a secret name is listed twice", "give each secret one entry")
        #: Names of the Secrets this creates, for consumers to reference.
        self.secret_names = tuple(names)
        self.namespace = namespace
        spec = [
            {"name": s.name, "keys": list(s.keys), "bytes": s.bytes, "labels": s.labels,
             **({"format": s.format} if s.format != "token" else {})}
            for s in secrets
        ]
        spec_json = json.dumps(spec, sort_keys=True)
        script = SCRIPT.read_text()
        digest = hashlib.sha256((spec_json + versions.PYTHON_IMAGE + script).encode()).hexdigest()[:8]
        sizing = sizing or Sizing(cpu_request_m=10, cpu_limit_m=200, memory_request_mib=32, memory_limit_mib=64)
        component = "secret-generator"

        name = f"secret-generator-{digest}"
        meta_labels = {"app.kubernetes.io/component": component}

        def meta(object_name: str, **extra: object) -> k8s.ObjectMeta:
            return k8s.ObjectMeta(name=object_name, namespace=namespace, labels=meta_labels, **extra)  # type: ignore[arg-type]

        self.service_account = k8s.KubeServiceAccount(
            self, "ServiceAccount", metadata=meta("secret-generator"), automount_service_account_token=False,
        )
        self.role = k8s.KubeRole(
            self, "Role",
            metadata=meta("secret-generator"),
            rules=[k8s.PolicyRule(api_groups=[""], resources=["secrets"], verbs=["create"])],
        )
        self.role_binding = k8s.KubeRoleBinding(
            self, "RoleBinding",
            metadata=meta("secret-generator"),
            role_ref=k8s.RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="secret-generator"),
            subjects=[k8s.Subject(kind="ServiceAccount", name="secret-generator", namespace=namespace)],
        )
        self.script = k8s.KubeConfigMap(
            self, "Script", metadata=meta(name), data={"secret_generator.py": script}, immutable=True,
        )
        pod_labels = {**labels.chart_labels(), **meta_labels, "final-problem.io/job": name}
        container = k8s.Container(
            name="generate",
            image=versions.PYTHON_IMAGE,
            # Tags are pinned: pull once, so a Pi keeps working offline.
            image_pull_policy="IfNotPresent",
            command=["python3", "/opt/secret-generator/secret_generator.py"],
            env=[
                k8s.EnvVar(name="GENERATOR_SPEC", value=spec_json),
                k8s.EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
            ],
            security_context=container_context(uid=RUNNER_UID),
            resources=raw_resources(sizing),
            volume_mounts=[
                k8s.VolumeMount(name="script", mount_path="/opt/secret-generator", read_only=True),
                k8s.VolumeMount(name="tmp", mount_path="/tmp"),
            ],
        )
        self.job = k8s.KubeJob(
            self, "Job",
            # The one pod of the platform that needs its token: it calls the API to create Secrets.
            metadata=meta(name, annotations={
                "checkov.io/skip1": "CKV_K8S_38=the generator authenticates to the API with this token to create Secrets",
            }),
            spec=k8s.JobSpec(
                backoff_limit=6,
                active_deadline_seconds=600,
                # Keep the finished Job a day for its log; re-applying it after that
                # only runs it again, which changes nothing.
                ttl_seconds_after_finished=24 * 3600,
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=pod_labels),
                    spec=k8s.PodSpec(
                        restart_policy="Never",
                        service_account_name="secret-generator",
                        automount_service_account_token=True,
                        enable_service_links=False,
                        security_context=pod_context(uid=RUNNER_UID),
                        containers=[container],
                        volumes=[
                            k8s.Volume(name="script", config_map=k8s.ConfigMapVolumeSource(name=name)),
                            k8s.Volume(name="tmp", empty_dir=k8s.EmptyDirVolumeSource(
                                size_limit=quantity("16Mi"))),
                        ],
                    ),
                ),
            ),
        )
        # Allow this Job's pod, and only it, to reach the API server.
        self.network_policy = k8s.KubeNetworkPolicy(
            self, "ApiEgress",
            metadata=meta(f"{name}-api"),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels={"final-problem.io/job": name}),
                policy_types=["Egress"],
                egress=[k8s.NetworkPolicyEgressRule(ports=ports(*API_PORTS))],
            ),
        )
        self.job.add_dependency(self.role_binding, self.script)
        self.role_binding.add_dependency(self.role, self.service_account)


def secret_env(name: str, secret: str, key: str, *, api: ModuleType | None = None) -> Any:
    """Environment variable ``name`` from key ``key`` of Secret ``secret`` (never a literal
    value): a ``k8s.EnvVar``.

    ``api``: a cdk8s ``k8s`` module (``cdk8s_plus_27.k8s``) to get its kinds instead of
    the project's (:mod:`final_problem.interop`). Default: the project's."""
    from final_problem.interop import returned_as

    return returned_as(k8s.EnvVar(name=name, value_from=k8s.EnvVarSource(
        secret_key_ref=k8s.SecretKeySelector(name=secret, key=key))), api)
