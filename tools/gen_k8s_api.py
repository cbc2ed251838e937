"""Write ``final_problem/k8s_api.py``: the Kubernetes API as typed Python classes.

The source is the JSON schema of Kubernetes v1.34, the oldest version the platform deploys
to (k3s v1.34.9, ``pi/versions.env``), as shipped by ``kubernetes-validate`` (pinned in
requirements-dev.txt). Taken: every kind of a stable API version (``v1``, ``v2``; no alpha
or beta), and every type its fields reach except through ``status``, which the cluster
writes.

Names follow cdk8s's import of the same schema, so code written for ``cdk8s_plus_27.k8s``
reads the same: ``KubeService`` for a kind, ``KubeServiceProps`` for the kind as a field's
value (a StatefulSet's volume claim templates), ``ServiceSpec`` for a type; a type of
another version than ``v1`` ends in it (``HorizontalPodAutoscalerSpecV2``); a field's
Python name is its JSON name in snake case, a trailing acronym as one word (``clusterIP``
-> ``cluster_ip``, ``clusterIPs`` -> ``cluster_i_ps``), a Python keyword with ``_``
(``from_``). Where two API groups name a type alike in the same version, the first group
of :data:`GROUP_ORDER` keeps the name and the others are prefixed with their group
(``DiscoveryEndpointPort``).

    python tools/gen_k8s_api.py           # rewrite the module
    python tools/gen_k8s_api.py --check   # exit 1 when the module differs from the schema
"""

from __future__ import annotations

import argparse
import json
import keyword
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "final_problem" / "k8s_api.py"
#: The schema: Kubernetes v1.34 (k3s v1.34.9 in pi/versions.env is the oldest deployed).
SCHEMA_VERSION = "v1.34.0-local-strict"

#: Which group keeps a type's bare name when several define it in one version (events.k8s.io
#: before the core group, as cdk8s's import has it: ``KubeEvent`` is events.k8s.io/v1's).
GROUP_ORDER = ("events", "core", "apps", "batch", "policy", "networking", "rbac", "storage", "autoscaling",
               "authentication", "admissionregistration", "apiextensions", "apiregistration",
               "discovery", "events", "flowcontrol", "resource")

#: Schema types with a Python value type of their own.
SPECIAL = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": "ios",
    "io.k8s.apimachinery.pkg.api.resource.Quantity": "qty",
    "io.k8s.apimachinery.pkg.apis.meta.v1.Time": "str",
    "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime": "str",
    "io.k8s.apimachinery.pkg.runtime.RawExtension": "any",
    "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1": "any",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON": "any",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray": "any",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool": "any",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray": "any",
}

PYTHON_TYPES = {"str": "str", "int": "int", "float": "float", "bool": "bool", "ios": "IntOrString",
                "qty": "Quantity", "any": "Any"}


def schema_definitions() -> dict[str, Any]:
    import kubernetes_validate

    path = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / SCHEMA_VERSION / "_definitions.json"
    return json.loads(path.read_text())["$defs"]


def python_name(json_name: str) -> str:
    """A field's Python name, as cdk8s's import names it (see the module docstring)."""
    name = json_name.lstrip("$").replace("-", "_")
    acronym = re.search(r"(?<=[a-z0-9])([A-Z]{2,})$", name)
    if acronym:
        name = name[: acronym.start()] + acronym.group(1)[0] + acronym.group(1)[1:].lower()
    name = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    name = re.sub(r"([A-Z])([A-Z])(?=[a-z])", r"\1_\2", name).lower()
    return f"{name}_" if keyword.iskeyword(name) or name == "self" else name


def type_name(short: str) -> str:
    """A type's name as cdk8s's import writes it: an acronym is one word (``HTTPGetAction``
    -> ``HttpGetAction``, ``DownwardAPIVolumeFile`` -> ``DownwardApiVolumeFile``)."""
    return re.sub(r"([A-Z])([A-Z]+)(?=[A-Z][a-z]|[0-9]|$)", lambda m: m.group(1) + m.group(2).lower(), short)


def _version_suffix(version: str) -> str:
    """``v2`` -> ``V2``; ``v1`` -> ``""``."""
    return "" if version == "v1" else re.sub(r"(alpha|beta)", lambda m: m.group(1).capitalize(), version).capitalize()


def _group_of(definition: str) -> str:
    parts = definition.split(".")
    if parts[:3] == ["io", "k8s", "api"]:
        return parts[3]
    if "apiextensions" in definition:
        return "apiextensions"
    if "apiregistration" in definition:
        return "apiregistration"
    return "meta"


def _kinds(defs: dict[str, Any]) -> dict[str, tuple[str, str]]:
    kinds = {}
    for name, schema in defs.items():
        props = schema.get("properties", {})
        versions = props.get("apiVersion", {}).get("enum")
        kind = props.get("kind", {}).get("enum")
        # An object has an ObjectMeta (a List and meta/v1 Status have a ListMeta).
        meta = props.get("metadata", {}).get("$ref", "")
        if versions and kind and meta.endswith(".meta.v1.ObjectMeta") and not re.search(r"alpha|beta", versions[0]):
            kinds[name] = (versions[0], kind[0])
    return kinds


def _refs(schema: Any, out: list[str]) -> None:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str):
                out.append(value.rsplit("/", 1)[-1])
            else:
                _refs(value, out)
    elif isinstance(schema, list):
        for value in schema:
            _refs(value, out)


def _fields(defs: dict[str, Any], name: str, kinds: dict[str, tuple[str, str]]) -> dict[str, Any]:
    props = dict(defs[name].get("properties", {}))
    if name in kinds:
        for key in ("apiVersion", "kind", "status"):
            props.pop(key, None)
    return props


def _reachable(defs: dict[str, Any], kinds: dict[str, tuple[str, str]]) -> list[str]:
    seen: dict[str, None] = {}
    todo = sorted(kinds)
    while todo:
        name = todo.pop(0)
        if name in seen or name in SPECIAL:
            continue
        seen[name] = None
        found: list[str] = []
        _refs(_fields(defs, name, kinds), found)
        todo.extend(sorted(set(found) - seen.keys()))
    return sorted(seen)


def _names(definitions: list[str], kinds: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Definition -> class name (a kind's type: ``Kube<Kind>Props``)."""
    base: dict[str, str] = {}
    for d in definitions:
        short, version = d.split(".")[-1], d.split(".")[-2]
        name = type_name(short) + _version_suffix(version)
        base[d] = f"Kube{name}Props" if d in kinds else name
    taken: dict[str, list[str]] = {}
    for d, n in base.items():
        taken.setdefault(n, []).append(d)
    names: dict[str, str] = {}
    for n, ds in taken.items():
        ds.sort(key=lambda d: (GROUP_ORDER.index(_group_of(d)) if _group_of(d) in GROUP_ORDER else 99, d))
        for i, d in enumerate(ds):
            prefix = "" if i == 0 else _group_of(d).capitalize()
            names[d] = f"Kube{prefix}{n[4:]}" if n.startswith("Kube") and d in kinds else prefix + n
    return names


def _spec(schema: dict[str, Any], names: dict[str, str]) -> str:
    """The compact type of a field (checked by final_problem.objects.Struct)."""
    ref = schema.get("$ref")
    if ref is None and "allOf" in schema and len(schema["allOf"]) == 1:
        ref = schema["allOf"][0].get("$ref")
    if isinstance(ref, str):
        target = ref.rsplit("/", 1)[-1]
        return SPECIAL.get(target) or names[target]
    types = schema.get("type")
    kind = next((t for t in types if t != "null"), None) if isinstance(types, list) else types
    if kind == "string":
        return "str"
    if kind == "integer":
        return "int"
    if kind == "number":
        return "float"
    if kind == "boolean":
        return "bool"
    if kind == "array":
        return "[" + _spec(schema.get("items", {}), names) + "]"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "{" + _spec(schema["additionalProperties"], names) + "}"
    return "any"


def _annotation(spec: str) -> str:
    if spec.startswith("["):
        return f"Sequence[{_annotation(spec[1:-1])}]"
    if spec.startswith("{"):
        return f"Mapping[str, {_annotation(spec[1:-1])}]"
    if spec in PYTHON_TYPES:
        return PYTHON_TYPES[spec]
    return f"{spec} | Mapping[str, Any]"


def _doc(text: str) -> str:
    first = (text or "").strip().split("\n")[0]
    first = first.split(". ")[0].rstrip(".")
    return first.replace("\\", "\\\\").replace('"""', "'''")


def render(defs: dict[str, Any]) -> str:
    kinds = _kinds(defs)
    definitions = _reachable(defs, kinds)
    names = _names(definitions, kinds)
    out = [
        '"""The Kubernetes API as typed Python classes: every stable kind and the types it uses.',
        "",
        f"Generated by tools/gen_k8s_api.py from Kubernetes' {SCHEMA_VERSION.split('-')[0]} JSON schema",
        "(kubernetes-validate); do not edit. ``make k8s-api`` regenerates it, and a test fails",
        "when it differs from what the generator writes.",
        '"""',
        "",
        "# ruff: noqa: E501",
        "from __future__ import annotations",
        "",
        "from typing import Any, Mapping, Sequence",
        "",
        "from final_problem.objects import ApiObject, Group, IntOrString, ObjectChart, Quantity, Struct",
        "",
    ]
    exported = ["IntOrString", "Quantity"]
    for d in definitions:
        cls = names[d]
        props = _fields(defs, d, kinds)
        required = set(defs[d].get("required", [])) - {"apiVersion", "kind"}
        fields = {python_name(j): (j, _spec(s, names)) for j, s in sorted(props.items(), key=lambda kv: python_name(kv[0]))}
        out += ["", "", f"class {cls}(Struct):", f'    """{_doc(defs[d].get("description", "")) or cls}.', "",
                f'    :schema: {d}', '    """', ""]
        out.append(f"    _schema = {d!r}")
        out.append("    _fields = {" + ", ".join(f"{p!r}: ({j!r}, {s!r})" for p, (j, s) in fields.items()) + "}")
        out.append(f"    _required = {tuple(sorted(python_name(r) for r in required))!r}")
        if fields:
            params = ", ".join(f"{p}: {_annotation(s)} | None = None" for p, (_, s) in fields.items())
            out += ["", f"    def __init__(self, *, {params}) -> None:", "        self._init(locals())"]
        exported.append(cls)
        if d in kinds:
            version, kind = kinds[d]
            kind_cls = cls[: -len("Props")]
            params = ", ".join(f"{p}: {_annotation(s)} | None = None" for p, (_, s) in fields.items())
            out += ["", "", f"class {kind_cls}(ApiObject):", f'    """{"An" if kind[0] in "AEIOU" else "A"} {kind} ({version}), rendered in Python.', "",
                    f"    :schema: {d}", '    """', "",
                    f"    _gvk = ({version!r}, {kind!r})", f"    _props_class = {cls}", "",
                    f"    def __init__(self, scope: ObjectChart | Group, id: str, *, {params}) -> None:",
                    "        self._init_kind(scope, id, locals())"]
            exported.append(kind_cls)
    out += ["", "", "__all__ = [" + ", ".join(repr(n) for n in sorted(exported)) + "]", ""]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the module differs from the schema")
    args = parser.parse_args()
    text = render(schema_definitions())
    if args.check:
        if TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} differs from the schema: run python tools/gen_k8s_api.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
