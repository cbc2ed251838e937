"""Policy checks over rendered Kubernetes objects.

Every check takes the full list of objects of one render (all charts of a profile) and
returns human-readable problems; an empty list means the objects pass. Synthesis runs them
over every chart of every profile, bundled or an app's own, and fails in one line on the
first finding (:func:`check_render`); the test suite runs them too, so a new chart is
checked without new test code. ``python -m final_problem.policy DIR`` runs them over
rendered manifests, one line per finding.

What "restricted" requires comes from the Kubernetes docs, "Pod Security Standards";
the rest is this platform's policy (DEVELOPERS: requests, limits and probes everywhere;
PDB, anti-affinity and zone spread on quorum sets; no secret values in manifests).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator

from final_problem import versions

Obj = dict[str, Any]

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
#: Workloads that run to completion: probes do not apply to them.
RUN_TO_COMPLETION = ("Job", "CronJob")
REQUIRED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/version",
)
CLUSTER_SCOPED = ("Namespace", "StorageClass", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "CustomResourceDefinition")
_SECRET_NAME = re.compile(r"(PASS|SECRET|TOKEN|CREDENTIAL|PRIVATE_?KEY|API_?KEY|AUTH)", re.I)


def ref(obj: Obj) -> str:
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{ns + '/' if ns else ''}{meta.get('name')}"


def workloads(objects: Iterable[Obj]) -> Iterator[Obj]:
    return (o for o in objects if o.get("kind") in WORKLOAD_KINDS)


def pod_template(obj: Obj) -> Obj:
    """The pod (metadata + spec) a workload runs."""
    kind = obj["kind"]
    if kind == "Pod":
        return obj
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def containers(pod_spec: Obj) -> list[Obj]:
    return list(pod_spec.get("initContainers") or []) + list(pod_spec.get("containers") or [])


def _selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector selects ``labels`` (an empty selector selects all)."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_restricted(objects: list[Obj]) -> list[str]:
    """Pod Security "restricted", plus a read-only root filesystem."""
    problems = []
    for w in workloads(objects):
        spec = pod_template(w)["spec"]
        pod_sc = spec.get("securityContext") or {}
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(field):
                problems.append(f"{ref(w)}: {field} is true")
        for vol in spec.get("volumes") or []:
            if "hostPath" in vol:
                problems.append(f"{ref(w)}: volume {vol['name']} is a hostPath")
        for c in containers(spec):
            sc = c.get("securityContext") or {}
            where = f"{ref(w)} container {c['name']}"
            if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
                problems.append(f"{where}: runAsNonRoot is not true")
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if not isinstance(uid, int) or uid == 0:
                problems.append(f"{where}: runAsUser must be a non-zero number (got {uid!r})")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append(f"{where}: capabilities do not drop ALL")
            if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
                problems.append(f"{where}: adds capabilities {caps.get('add')}")
            seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where}: seccompProfile is {seccomp!r}, not RuntimeDefault")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            for port in c.get("ports") or []:
                if port.get("hostPort"):
                    problems.append(f"{where}: hostPort {port['hostPort']}")
    return problems


def check_resources(objects: list[Obj]) -> list[str]:
    """Every container requests and limits CPU and memory."""
    problems = []
    for w in workloads(objects):
        for c in containers(pod_template(w)["spec"]):
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for name in ("cpu", "memory"):
                    if name not in (res.get(kind) or {}):
                        problems.append(f"{ref(w)} container {c['name']}: no {name} in {kind}")
    return problems


def check_probes(objects: list[Obj]) -> list[str]:
    """Long-running containers have liveness and readiness probes, and they differ.

    A readiness probe says "send me traffic"; a liveness probe says "restart me". When
    they are the same check, a dependency outage restarts every pod at once.
    Init containers and run-to-completion workloads are exempt.
    """
    problems = []
    for w in workloads(objects):
        if w["kind"] in RUN_TO_COMPLETION:
            continue
        for c in pod_template(w)["spec"].get("containers") or []:
            live, ready = c.get("livenessProbe"), c.get("readinessProbe")
            where = f"{ref(w)} container {c['name']}"
            if not live:
                problems.append(f"{where}: no livenessProbe")
            if not ready:
                problems.append(f"{where}: no readinessProbe")
            if live and ready and live == ready:
                problems.append(f"{where}: livenessProbe and readinessProbe are identical")
    return problems


def pinned_images() -> set[str]:
    """Every image reference pinned in :mod:`final_problem.versions`, and every image a
    registered component declares (``PlatformChart.images``), wherever it lives."""
    from final_problem import components

    own = {v for k, v in vars(versions).items() if k.endswith("_IMAGE") and isinstance(v, str)}
    return own | set(components.declared_images())


def check_images(objects: list[Obj]) -> list[str]:
    """Images carry an exact tag (never ``latest``) and are pinned in versions.py."""
    problems = []
    allowed = pinned_images()
    for w in workloads(objects):
        for c in containers(pod_template(w)["spec"]):
            image = c.get("image", "")
            name, _, tag = image.rpartition(":")
            where = f"{ref(w)} container {c['name']}"
            if "@sha256:" not in image and (not name or "/" in tag or tag in ("", "latest")):
                problems.append(f"{where}: image {image!r} has no exact tag")
            elif not re.search(r"\d", tag.split("@")[0]):
                problems.append(f"{where}: image {image!r} tag is not a version")
            if image not in allowed:
                problems.append(
                    f"{where}: image {image!r} is neither pinned in final_problem/versions.py nor declared "
                    "in its component's `images`"
                )
    return problems


def check_quorum_sets(objects: list[Obj]) -> list[str]:
    """Multi-replica StatefulSets: PDB, required hostname anti-affinity, zone spread,
    and volume claims kept when the set is deleted or scaled down."""
    problems = []
    pdbs = [o for o in objects if o.get("kind") == "PodDisruptionBudget"]
    for s in (o for o in objects if o.get("kind") == "StatefulSet"):
        if (s["spec"].get("replicas") or 1) < 2:
            continue
        ns = s["metadata"].get("namespace")
        pod = pod_template(s)
        labels = pod["metadata"].get("labels") or {}
        matching = [p for p in pdbs if p["metadata"].get("namespace") == ns and _selects(p["spec"].get("selector"), labels)]
        if not matching:
            problems.append(f"{ref(s)}: no PodDisruptionBudget selects its pods")
        for p in matching:
            if p["spec"].get("maxUnavailable") != 1:
                problems.append(f"{ref(p)}: maxUnavailable is {p['spec'].get('maxUnavailable')!r}, not 1")
        anti = ((pod["spec"].get("affinity") or {}).get("podAntiAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution") or []
        if not any(t.get("topologyKey") == "kubernetes.io/hostname" and _selects(t.get("labelSelector"), labels) for t in anti):
            problems.append(f"{ref(s)}: no required pod anti-affinity on kubernetes.io/hostname")
        spread = pod["spec"].get("topologySpreadConstraints") or []
        if not any(t.get("topologyKey") == "topology.kubernetes.io/zone" and _selects(t.get("labelSelector"), labels) for t in spread):
            problems.append(f"{ref(s)}: no topology spread constraint on topology.kubernetes.io/zone")
        retention = s["spec"].get("persistentVolumeClaimRetentionPolicy") or {}
        if s["spec"].get("volumeClaimTemplates") and (
            retention.get("whenDeleted") != "Retain" or retention.get("whenScaled") != "Retain"
        ):
            problems.append(f"{ref(s)}: volume claims are not retained on delete and scale-down")
    return problems


def check_network_policies(objects: list[Obj]) -> list[str]:
    """Every pod is selected by at least one NetworkPolicy in its namespace."""
    problems = []
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    for w in workloads(objects):
        ns = w["metadata"].get("namespace")
        labels = pod_template(w)["metadata"].get("labels") or {}
        if not any(p["metadata"].get("namespace") == ns and _selects(p["spec"].get("podSelector"), labels) for p in policies):
            problems.append(f"{ref(w)}: no NetworkPolicy selects its pods")
    return problems


def check_no_secret_values(objects: list[Obj]) -> list[str]:
    """No Secret object and no credential-looking env value travels in a manifest."""
    problems = []
    for o in objects:
        if o.get("kind") == "Secret" and (o.get("data") or o.get("stringData")):
            problems.append(f"{ref(o)}: a Secret with literal data (generate it in the cluster instead)")
    for w in workloads(objects):
        for c in containers(pod_template(w)["spec"]):
            for env in c.get("env") or []:
                if "value" in env and _SECRET_NAME.search(env["name"]):
                    problems.append(f"{ref(w)} container {c['name']}: env {env['name']} has a literal value")
    return problems


def check_labels(objects: list[Obj]) -> list[str]:
    """Every object, and every pod template, carries the app.kubernetes.io labels."""
    problems = []
    for o in objects:
        labels = o.get("metadata", {}).get("labels") or {}
        missing = [k for k in REQUIRED_LABELS if k not in labels]
        if missing:
            problems.append(f"{ref(o)}: missing labels {missing}")
    for w in workloads(objects):
        labels = pod_template(w)["metadata"].get("labels") or {}
        missing = [k for k in REQUIRED_LABELS if k not in labels]
        if missing:
            problems.append(f"{ref(w)} pod template: missing labels {missing}")
    return problems


def check_namespaces(objects: list[Obj]) -> list[str]:
    """Namespaced objects live in a namespace of the render that enforces "restricted"."""
    problems = []
    enforced = {
        o["metadata"]["name"] for o in objects
        if o.get("kind") == "Namespace"
        and (o["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce") == "restricted"
    }
    for o in objects:
        if o.get("kind") in CLUSTER_SCOPED:
            continue
        ns = o.get("metadata", {}).get("namespace")
        if ns is None:
            problems.append(f"{ref(o)}: no namespace")
        elif ns not in enforced:
            problems.append(f"{ref(o)}: namespace {ns!r} is not created with pod-security enforce=restricted")
    return problems


def check_replicated_deployments(objects: list[Obj]) -> list[str]:
    """Deployments of more than one pod: a PodDisruptionBudget selects their pods, so a
    node drain never evicts all of them at once."""
    pdbs = [o for o in objects if o.get("kind") == "PodDisruptionBudget"]
    problems = []
    for d in (o for o in objects if o.get("kind") == "Deployment"):
        if (d["spec"].get("replicas") or 1) < 2:
            continue
        labels = pod_template(d)["metadata"].get("labels") or {}
        if not [p for p in pdbs if p["metadata"].get("namespace") == d["metadata"].get("namespace")
                and _selects(p["spec"].get("selector"), labels)]:
            problems.append(f"{ref(d)}: {d['spec']['replicas']} replicas and no PodDisruptionBudget selects its pods")
    return problems


CHECKS: dict[str, Callable[[list[Obj]], list[str]]] = {
    "restricted": check_restricted,
    "resources": check_resources,
    "probes": check_probes,
    "images": check_images,
    "quorum_sets": check_quorum_sets,
    "replicated_deployments": check_replicated_deployments,
    "network_policies": check_network_policies,
    "no_secret_values": check_no_secret_values,
    "labels": check_labels,
    "namespaces": check_namespaces,
}

#: How to fix what each check finds, for the one-line synth error and the command.
FIXES: dict[str, str] = {
    "restricted": "give each container final_problem.api.container_context(uid=...) and the pod "
                  "pod_context(uid=...) (Pod Security \"restricted\")",
    "resources": "give each container resources=final_problem.api.raw_resources(Sizing(...))",
    "probes": "give each long-running container a livenessProbe and a different readinessProbe",
    "images": "pin the image to an exact version tag and declare it in the component's `images`",
    "quorum_sets": "build the set with final_problem.api.QuorumStatefulSet (PDB, anti-affinity, zone spread, "
                   "retained claims)",
    "replicated_deployments": "add a PodDisruptionBudget with maxUnavailable 1 selecting its pods",
    "network_policies": "create the namespace with final_problem.api.RestrictedNamespace and add a "
                        "NetworkPolicy selecting the pods",
    "no_secret_values": "generate the secret in the cluster (final_problem.api.GeneratedSecrets) and read it "
                        "with secret_env(...)",
    "labels": "label it with final_problem.api.set_component(obj, \"<component>\") (the chart sets the "
              "other app.kubernetes.io labels); a pod template takes its LabelSet's labels",
    "namespaces": "put it in a namespace created with final_problem.api.RestrictedNamespace",
}


def findings(objects: list[Obj]) -> list[tuple[str, str]]:
    """``(check, finding)`` for every check over ``objects`` (one render: every chart of a
    profile, since NetworkPolicies, PDBs and namespaces select across charts)."""
    return [(name, problem) for name, check in CHECKS.items() for problem in check(objects)]


def owner(finding: str, refs: dict[str, str]) -> str | None:
    """The value of ``refs`` (object reference -> where it comes from) a finding names."""
    head = finding.split(":", 1)[0].removesuffix(" pod template")
    head = head.split(" container ", 1)[0]
    return refs.get(head)


def check_render(profile: str, by_component: dict[str, list[Obj]]) -> None:
    """Fail with one :class:`~final_problem.errors.ConfigError` line on the first finding of
    the render of ``profile`` (objects by component): the component, the object, the
    problem, the fix, and how many more there are."""
    from final_problem.errors import ConfigError

    objects = [o for objs in by_component.values() for o in objs]
    found = findings(objects)
    if not found:
        return
    refs = {ref(o): component for component, objs in by_component.items() for o in objs}
    check, problem = found[0]
    component = owner(problem, refs) or "?"
    more = f"; {len(found) - 1} more finding(s): python -m final_problem.policy dist/{profile} lists them" \
        if len(found) > 1 else ""
    raise ConfigError(
        "components", component,
        f"{problem} (policy check '{check}', profile {profile}){more}",
        FIXES[check],
    )


def read_manifests(directory: str) -> dict[str, dict[str, list[Obj]]]:
    """Every folder under ``directory`` (itself included) that holds ``*.yaml`` files: its
    objects by file name. Each folder is one render (``dist/eks``, ``dist/pi``)."""
    from pathlib import Path

    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    root = Path(directory)
    renders: dict[str, dict[str, list[Obj]]] = {}
    for folder in sorted({p.parent for p in root.rglob("*.yaml")} | ({root} if any(root.glob("*.yaml")) else set())):
        renders[str(folder)] = {
            path.name: [d for d in yaml.load_all(path.read_text(), Loader=loader) if isinstance(d, dict)]
            for path in sorted(folder.glob("*.yaml"))
        }
    return renders


def main(argv: list[str] | None = None) -> int:
    """``python -m final_problem.policy DIR``: the policy checks over the rendered manifests
    in DIR, one line per finding (file, object, problem, check), exit status 1 when any."""
    import argparse
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="python -m final_problem.policy",
        description="Run the platform's policy checks on rendered Kubernetes manifests: one line per finding, "
                    "exit status 1 when there is any.",
    )
    parser.add_argument("directory", help="a folder of rendered YAML, e.g. dist/pi or dist (each folder "
                                          "holding *.yaml files is checked as one render)")
    parser.add_argument("--import", dest="modules", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (repeatable): an app's components register, so the images "
                             "they declare are accepted")
    args = parser.parse_args(argv)
    if not Path(args.directory).is_dir():
        print(f"error: {args.directory} is not a folder. Fix: give the folder synth wrote, e.g. dist/pi",
              file=sys.stderr)
        return 2
    # Images the registered components declare are accepted: the bundled ones, and an app's
    # once --import has imported its module.
    import importlib

    from final_problem import components

    components.load_bundled()
    for module in args.modules:
        importlib.import_module(module)
    renders = read_manifests(args.directory)
    if not renders:
        print(f"error: no *.yaml files under {args.directory}. Fix: run make synth first, or give the folder "
              "it wrote (dist/eks, dist/pi)", file=sys.stderr)
        return 2
    total = count = 0
    for folder, files in renders.items():
        refs = {ref(o): str(Path(folder) / name) for name, objs in files.items() for o in objs}
        objects = [o for objs in files.values() for o in objs]
        total += len(objects)
        for check, problem in findings(objects):
            count += 1
            print(f"{owner(problem, refs) or folder}: {problem} [{check}]")
    if count:
        print(f"{count} finding(s) in {total} objects", file=sys.stderr)
        return 1
    print(f"{total} objects in {len(renders)} render(s): every policy check passes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
