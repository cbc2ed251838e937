"""Find the running platform: where each component listens and how to log in.

Sources, first match wins for each endpoint:

1. explicit flags (``--zookeeper H:P,...``) and the clients' environment variables
   (``ZOOKEEPER_HOSTS``, ``REDIS_SENTINELS``, ``CADENCE_FRONTEND``, ...);
2. ``--local``: the real servers the tests use, started on loopback (:mod:`final_problem.tour.local`);
3. inside a pod (``KUBERNETES_SERVICE_HOST`` set): the Services' cluster DNS names;
4. a kubeconfig (``--kubeconfig``, ``KUBECONFIG`` or ``~/.kube/config``; a k3s server's is
   ``/etc/rancher/k3s/k3s.yaml``): ``kubectl port-forward`` to each Service, and to each
   member where clients are handed member addresses (Redis Sentinel);
5. AWS (``--aws``): the cluster stack's outputs (CloudFormation) and the EKS API give the
   cluster's endpoint and CA; a kubeconfig is written with a token signed from the caller's
   AWS credentials (the ``k8s-aws-v1`` token EKS accepts), then as 4.

Credentials never come from flags (they would end up in shell history): from the
environment, else from the cluster's generated Secrets through ``kubectl``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from final_problem.clients import DEFAULT_TIMEOUT_S, ClientError, short

#: Stack output keys the cluster stack publishes for discovery.
OUTPUT_CLUSTER_NAME = "ClusterName"
OUTPUT_REGION = "Region"
OUTPUT_ENDPOINTS = "PlatformEndpoints"


class DiscoveryError(ClientError):
    """The platform (or a component of it) cannot be reached; the message says what to do."""

    status = 2


class PlatformUnreachable(DiscoveryError):
    """What finds the platform (the Kubernetes API, AWS) did not answer in time."""

    status = 3


@dataclass(frozen=True)
class ServiceRef:
    """A Service of a component, as the charts create it."""

    component: str
    namespace: str
    service: str
    port: int
    #: Clients are handed member addresses that resolve only inside the cluster.
    cluster_network: bool = False

    @property
    def dns(self) -> str:
        return f"{self.service}.{self.namespace}.svc.cluster.local"


@dataclass
class Endpoints:
    """Where each component answers, and the environment its client reads."""

    source: str
    #: Component name to ``host:port[,host:port]``.
    addresses: dict[str, str] = field(default_factory=dict)
    #: Extra environment for the clients (passwords from Secrets, address maps).
    env: dict[str, str] = field(default_factory=dict)
    #: Processes (port-forwards) to stop when done.
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    kubeconfig: str | None = None
    #: Deployed components this source cannot reach, with what to do instead.
    unreachable: dict[str, str] = field(default_factory=dict)

    def get(self, component: str) -> str:
        if component in self.unreachable and component not in self.addresses:
            raise DiscoveryError(f"{component}: {self.unreachable[component]}")
        try:
            return self.addresses[component]
        except KeyError:
            raise DiscoveryError(
                f"{component} is not deployed or not reachable from here ({self.source}); enable it in cdk.json "
                f"'components' and deploy, or give its address (final-problem --help)"
            ) from None

    def close(self) -> None:
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.processes.clear()


def _zookeeper_service(chart: Any) -> ServiceRef:
    return ServiceRef("zookeeper", chart.NAMESPACE, chart.CLIENT_SERVICE, chart.props.client_port)


def _redis_service(chart: Any) -> ServiceRef:
    # Sentinel hands clients the members' pod DNS names: reachable in the cluster only.
    return ServiceRef("redis", chart.NAMESPACE, chart.sentinel_service, chart.SENTINEL_PORT, cluster_network=True)


def _kafka_service(chart: Any) -> ServiceRef:
    # Brokers advertise their pod names: clients need the cluster network.
    return ServiceRef("kafka", chart.NAMESPACE, chart.BOOTSTRAP_SERVICE, chart.props.client_port, cluster_network=True)


def _cadence_service(chart: Any) -> ServiceRef:
    # The frontend's gRPC Service: clients talk to it alone, so a port-forward is enough.
    return ServiceRef("cadence", chart.NAMESPACE, chart.FRONTEND_SERVICE, chart.server_config.ports["frontend"].grpc)


#: Component to the client Service of its chart. A component of another app can instead
#: give its chart a ``client_service()`` method returning a :class:`ServiceRef`.
CLIENT_SERVICES: dict[str, Callable[[Any], ServiceRef]] = {
    "zookeeper": _zookeeper_service,
    "redis": _redis_service,
    "kafka": _kafka_service,
    "cadence": _cadence_service,
}


def service_refs(settings: Any | None = None) -> dict[str, ServiceRef]:
    """The client Service of every enabled component that has one, from its chart."""
    from final_problem import config, manifests
    from final_problem.profiles import EKS

    settings = settings or config.from_mapping(_project_context())
    return client_services(manifests.render(settings, EKS.name))


def client_services(charts: Mapping[str, Any]) -> dict[str, ServiceRef]:
    """The client Service of each chart that has one: the chart's own ``client_service()``,
    else the entry of :data:`CLIENT_SERVICES`. Discovery, the cluster stack's outputs and the
    README's diagram all read it here."""
    refs: dict[str, ServiceRef] = {}
    for name, chart in charts.items():
        if callable(getattr(chart, "client_service", None)):
            refs[name] = chart.client_service()
        elif name in CLIENT_SERVICES:
            refs[name] = CLIENT_SERVICES[name](chart)
    return refs


def _project_context() -> dict[str, Any]:
    """cdk.json context of the current folder (a deployment's settings), else the defaults
    with every bundled component enabled."""
    path = Path("cdk.json")
    if path.exists():
        return dict(json.loads(path.read_text()).get("context", {}))
    from final_problem import components

    components.load_bundled()
    return {"components": list(components.COMPONENTS)}


# --- in the cluster -------------------------------------------------------------------

def in_cluster(env: Mapping[str, str] | None = None) -> bool:
    return bool((env if env is not None else os.environ).get("KUBERNETES_SERVICE_HOST"))


def from_cluster_dns(refs: Mapping[str, ServiceRef]) -> Endpoints:
    return Endpoints(source="cluster DNS", addresses={n: f"{r.dns}:{r.port}" for n, r in refs.items()})


# --- through a kubeconfig --------------------------------------------------------------

def default_kubeconfig(env: Mapping[str, str] | None = None) -> str | None:
    env = env if env is not None else os.environ
    for candidate in (env.get("KUBECONFIG"), str(Path.home() / ".kube" / "config"), "/etc/rancher/k3s/k3s.yaml"):
        if candidate and Path(candidate.split(os.pathsep)[0]).is_file():
            return candidate
    return None


def kubectl(kubeconfig: str, *args: str, timeout: float = 20) -> str:
    binary = shutil.which("kubectl")
    if not binary:
        raise DiscoveryError("kubectl is not installed: install it, or run inside the cluster, or use --local")
    try:
        result = subprocess.run(
            [binary, "--kubeconfig", kubeconfig, *args], capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise PlatformUnreachable(f"kubectl {' '.join(args[:3])} got no answer within {timeout:g} s; "
                             f"check the kubeconfig {kubeconfig} and the cluster") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DiscoveryError(f"kubectl {' '.join(args[:3])} failed: {reason}; check the kubeconfig {kubeconfig}")
    return result.stdout


_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")


def port_forward(kubeconfig: str, namespace: str, target: str, port: int, *, timeout: float = 20) -> tuple[int, subprocess.Popen[str]]:
    """``kubectl port-forward`` on a free local port; returns it and the process."""
    binary = shutil.which("kubectl") or "kubectl"
    proc = subprocess.Popen(
        [binary, "--kubeconfig", kubeconfig, "-n", namespace, "port-forward", "--address", "127.0.0.1", target, f":{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    import select
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if match := _FORWARDING.search(line):
                return int(match.group(1)), proc
            if not line and proc.poll() is not None:
                break
    proc.kill()
    raise DiscoveryError(f"kubectl port-forward to {namespace}/{target} did not start; is {target} running?")


def check_reachable(kubeconfig: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    # kubectl's own start-up comes on top of the request: the process gets twice the timeout.
    kubectl(kubeconfig, "version", f"--request-timeout={timeout_s:g}s", "-o", "json", timeout=2 * timeout_s + 5)


def from_kubeconfig(kubeconfig: str, refs: Mapping[str, ServiceRef], *, forward: Callable[..., tuple[int, Any]] = port_forward,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> Endpoints:
    """Port-forward to each deployed component's Service."""
    check_reachable(kubeconfig, timeout_s=timeout_s)
    endpoints = Endpoints(source=f"kubeconfig {kubeconfig}", kubeconfig=kubeconfig)
    deployed = set(kubectl(kubeconfig, "get", "namespaces", "-o", "name").split())
    for name, ref in refs.items():
        if f"namespace/{ref.namespace}" not in deployed:
            continue
        if ref.cluster_network:
            endpoints.unreachable[name] = (
                f"its clients need the cluster network ({ref.dns} hands out member addresses): run final-problem "
                "in a pod of the cluster, or use --local"
            )
            continue
        local, proc = forward(kubeconfig, ref.namespace, f"svc/{ref.service}", ref.port)
        endpoints.processes.append(proc)
        endpoints.addresses[name] = f"127.0.0.1:{local}"
    return endpoints


def secret_value(kubeconfig: str | None, namespace: str, name: str, key: str) -> str:
    """One key of a generated Secret, through kubectl."""
    if kubeconfig is None:
        raise DiscoveryError(f"no credentials: set the client's password variable, or give a kubeconfig to read Secret {namespace}/{name}")
    data = json.loads(kubectl(kubeconfig, "get", "secret", name, "-n", namespace, "-o", "json"))
    try:
        return base64.b64decode(data["data"][key]).decode()
    except KeyError:
        raise DiscoveryError(f"Secret {namespace}/{name} has no key {key!r}; re-run the platform's secret Job") from None


# --- through AWS -------------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterInfo:
    name: str
    region: str
    endpoint: str
    certificate_authority: str
    services: Mapping[str, Any]


def cluster_from_aws(stack_name: str, *, cloudformation: Any, eks: Any) -> ClusterInfo:
    """The cluster stack's outputs and the EKS API's view of the cluster."""
    from botocore.exceptions import ClientError as AWSError

    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except AWSError as e:
        error = e.response.get("Error", {})
        if error.get("Code") != "ValidationError":  # CloudFormation's code for a stack that does not exist
            raise  # refused credentials, throttling: from_aws says so
        raise DiscoveryError(
            f"stack {stack_name} not found ({error.get('Message', 'error')}); deploy with `make deploy`, "
            "or pass --cluster-name and --region of your deployment"
        ) from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    missing = [k for k in (OUTPUT_CLUSTER_NAME, OUTPUT_REGION) if k not in outputs]
    if missing:
        raise DiscoveryError(f"stack {stack_name} has no output {', '.join(missing)}; deploy this version with `make deploy`")
    name = outputs[OUTPUT_CLUSTER_NAME]
    cluster = eks.describe_cluster(name=name)["cluster"]
    if cluster.get("status") != "ACTIVE":
        raise DiscoveryError(f"EKS cluster {name} is {cluster.get('status')}, not ACTIVE; wait for it, then try again")
    return ClusterInfo(
        name=name, region=outputs[OUTPUT_REGION], endpoint=cluster["endpoint"],
        certificate_authority=cluster["certificateAuthority"]["data"],
        services=json.loads(outputs.get(OUTPUT_ENDPOINTS, "{}")),
    )


def eks_token(cluster_name: str, *, session: Any) -> str:
    """A bearer token EKS accepts: a presigned STS GetCallerIdentity URL bound to the cluster
    name (the ``x-k8s-aws-id`` header), base64url-encoded, prefixed ``k8s-aws-v1.``
    (EKS user guide, "Cluster authentication"; aws-iam-authenticator's token format)."""
    from botocore.signers import RequestSigner

    sts = session.client("sts")
    signer = RequestSigner(
        sts.meta.service_model.service_id, sts.meta.region_name, "sts", "v4",
        session.get_credentials(), session.events if hasattr(session, "events") else sts.meta.events,
    )
    url = signer.generate_presigned_url(
        {
            "method": "GET",
            "url": f"https://sts.{sts.meta.region_name}.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15",
            "body": {}, "headers": {"x-k8s-aws-id": cluster_name}, "context": {},
        },
        region_name=sts.meta.region_name, expires_in=60, operation_name="",
    )
    return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def kubeconfig_for(info: ClusterInfo, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": info.name,
        "clusters": [{"name": info.name, "cluster": {"server": info.endpoint, "certificate-authority-data": info.certificate_authority}}],
        "users": [{"name": info.name, "user": {"token": token}}],
        "contexts": [{"name": info.name, "context": {"cluster": info.name, "user": info.name}}],
    }


def write_kubeconfig(config: Mapping[str, Any]) -> str:
    """A private temporary kubeconfig file (mode 600: it holds a token)."""
    fd, path = tempfile.mkstemp(prefix="final-problem-kubeconfig-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    os.chmod(path, 0o600)
    return path


#: Attempts of one AWS call. botocore's legacy mode makes 5 with backoff, and a refused or
#: unreachable endpoint then costs minutes; 2 rides out one dropped connection.
AWS_ATTEMPTS = 2


def aws_config(timeout_s: float) -> Any:
    """botocore's client config: connect and read timeouts of ``timeout_s`` (its defaults are
    60 s each) and :data:`AWS_ATTEMPTS` attempts."""
    from botocore.config import Config

    return Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                  retries={"mode": "standard", "total_max_attempts": AWS_ATTEMPTS})


def from_aws(cluster_name: str, region: str | None, refs: Mapping[str, ServiceRef], *, session: Any | None = None,
             timeout_s: float = DEFAULT_TIMEOUT_S) -> Endpoints:
    import boto3
    from botocore.exceptions import (
        BotoCoreError, ClientError as AWSError, EndpointConnectionError, NoCredentialsError, NoRegionError,
        ProfileNotFound,
    )

    stack = f"{cluster_name}-cluster"
    try:
        session = session or boto3.session.Session(region_name=region)
        config = aws_config(timeout_s)
        info = cluster_from_aws(
            stack, cloudformation=session.client("cloudformation", config=config), eks=session.client("eks", config=config),
        )
        token = eks_token(info.name, session=session)
    except NoCredentialsError:
        raise DiscoveryError("no AWS credentials: set AWS_PROFILE or run `aws configure`, or use --kubeconfig") from None
    except NoRegionError:
        raise DiscoveryError("no AWS region: pass --region or set AWS_REGION") from None
    except ProfileNotFound as e:
        raise DiscoveryError(f"{short(e)}: set AWS_PROFILE to a profile of ~/.aws/config, or use --kubeconfig") from None
    except EndpointConnectionError as e:
        raise PlatformUnreachable(f"AWS unreachable ({short(e)}) within {timeout_s:g} s: check the network or "
                             "AWS_ENDPOINT_URL, raise --timeout, or use --kubeconfig") from None
    except AWSError as e:
        error = e.response.get("Error", {})
        raise DiscoveryError(
            f"AWS refused reading stack {stack}: {error.get('Code', 'error')}: {short(RuntimeError(error.get('Message', '')))}; "
            "check the credentials (AWS_PROFILE, `aws sts get-caller-identity`) or use --kubeconfig"
        ) from None
    except BotoCoreError as e:
        raise DiscoveryError(f"AWS: {short(e)}; check AWS_PROFILE and the credentials, or use --kubeconfig") from None
    path = write_kubeconfig(kubeconfig_for(info, token))
    endpoints = from_kubeconfig(path, refs, timeout_s=timeout_s)
    endpoints.source = f"AWS stack {cluster_name}-cluster ({info.region})"
    return endpoints
