"""Kubernetes objects built and rendered in Python, inside a cdk8s chart.

A chart built from ``cdk8s_plus_27.k8s`` objects pays a round trip to the jsii runtime
(a Node.js process) for every object it creates and every value it renders, and again
when it is serialized; with nine components and two profiles that was most of the
platform's synthesis time. The objects here keep cdk8s's model and its output, and do the
work in Python:

- :class:`ObjectChart` is a ``cdk8s.Chart``. Its ``to_json`` (what ``cdk8s`` and
  ``aws_eks_v2.Cluster.add_cdk8s_chart`` call) renders the Python objects, then any cdk8s
  construct added to it the usual way (cdk8s-plus workloads, say), which cdk8s renders.
- :class:`ApiObject` is one Kubernetes object; :mod:`final_problem.k8s` gives one class
  per kind, taking the typed :class:`Struct` classes generated from the Kubernetes schema
  (:mod:`final_problem.k8s_api`), with :class:`IntOrString` and :class:`Quantity` values.
- :class:`Group` groups objects, as a construct groups its children in cdk8s.

Rendering follows cdk8s 2 (``ApiObject.toJson``, ``DependencyGraph``): the chart's labels
under every object's own, ``null`` values dropped, empty metadata fields dropped, keys
sorted (``apiVersion``, ``kind`` and ``metadata`` first), JSON patches applied, and objects
ordered by their dependencies, then by where they were added. A dependency on a group is
a dependency on every object in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Iterator, Mapping

import cdk8s
from constructs import Construct

from final_problem.interop import from_cdk8s, is_cdk8s_value


class ObjectError(ValueError):
    """A Kubernetes object that cannot be built or rendered (a programming error)."""


class _Member:
    """What groups and objects share: a place in a chart's tree and dependencies."""

    def __init__(self, id: str) -> None:
        self.id = id
        self.scope: Group | None = None
        self._chart: ObjectChart | None = None
        self.dependencies: list[Group | ApiObject] = []

    @property
    def chart(self) -> ObjectChart:
        """The chart this belongs to."""
        assert self._chart is not None
        return self._chart

    @property
    def path(self) -> str:
        return f"{self.scope.path}/{self.id}" if self.scope is not None else self.id

    def add_dependency(self, *targets: Group | ApiObject) -> None:
        """Render this (every object of it, for a group) after every object in ``targets``."""
        self.chart.check_open(self.path)
        for target in targets:
            if not isinstance(target, _Member):
                raise ObjectError(f"{self.path} can only depend on objects and groups of an ObjectChart, not {type(target).__name__}")
            if target.chart is not self.chart:
                raise ObjectError(
                    f"{self.path} cannot depend on {target.path}, in another chart: a component comes after the "
                    "ones it names in `requires`"
                )
            if target is not self and target not in self.dependencies:
                self.dependencies.append(target)  # type: ignore[arg-type]


class Group(_Member):
    """A named group of objects (and groups) in an :class:`ObjectChart`.

    ``scope``: the chart or a group; ``id``: unique among the scope's children. Other
    objects may depend on the group: they come after every object in it.
    """

    def __init__(self, scope: ObjectChart | Group, id: str) -> None:
        super().__init__(id)
        self.children: list[Group | ApiObject] = []
        if scope is not None:
            _attach(self, scope)

    def find_all(self) -> Iterator[Group | ApiObject]:
        """This group and everything under it, parents first, in the order they were added."""
        yield self
        for child in self.children:
            if isinstance(child, Group):
                yield from child.find_all()
            else:
                yield child

    @property
    def default_child(self) -> ApiObject | Group | None:
        """The child named ``Resource`` or ``Default`` (as in the constructs library)."""
        for child in self.children:
            if child.id in ("Resource", "Default"):
                return child
        return None


def _attach(child: Group | ApiObject, scope: Any) -> None:
    parent = scope if isinstance(scope, Group) else getattr(scope, "_object_root", None)
    if not isinstance(parent, Group):
        raise ObjectError(
            f"{type(child).__name__} '{child.id}' needs an ObjectChart (a PlatformChart) or a Group in one as its "
            f"scope, not {type(scope).__name__}"
        )
    if any(c.id == child.id for c in parent.children):
        raise ObjectError(f"there is already a child named '{child.id}' in {parent.path}")
    parent.chart.check_open(f"{parent.path}/{child.id}")
    child.scope = parent
    child._chart = parent._chart
    parent.children.append(child)


def _topology(root: Group) -> list[ApiObject]:
    """The objects under ``root`` in cdk8s's order (``DependencyGraph.topology``): a
    dependency on a group becomes one on each of its objects; objects nothing depends on
    are the roots, taken in tree order, each written after what it depends on."""
    nodes = list(root.find_all())
    present = {id(n) for n in nodes}
    edges: dict[int, list[Group | ApiObject]] = {id(n): list(n.dependencies) for n in nodes}

    def objects_under(n: Group | ApiObject) -> list[ApiObject]:
        return [o for o in n.find_all() if isinstance(o, ApiObject)] if isinstance(n, Group) else [n]

    for source in nodes:
        for target in list(source.dependencies):
            if id(target) not in present:
                continue  # outside the group being ordered
            for t in objects_under(target):
                for s in objects_under(source):
                    if t is not s and t not in edges[id(s)]:
                        edges[id(s)].append(t)
    inbound = {id(t) for n in nodes for t in edges[id(n)] if id(t) in present}
    order: list[Group | ApiObject] = []
    done: set[int] = set()
    visiting: list[Group | ApiObject] = []

    def visit(n: Group | ApiObject) -> None:
        if id(n) in done:
            return
        if any(v is n for v in visiting):
            cycle = visiting[next(i for i, v in enumerate(visiting) if v is n):] + [n]
            raise ObjectError("dependency cycle: " + " => ".join(v.path for v in cycle))
        visiting.append(n)
        for target in edges[id(n)]:
            if id(target) in present:
                visit(target)
        visiting.pop()
        done.add(id(n))
        order.append(n)

    for n in nodes:
        if id(n) not in inbound:
            visit(n)
    # Whatever no root reaches hangs off a cycle; visiting it finds the cycle.
    for n in nodes:
        visit(n)
    return [n for n in order if isinstance(n, ApiObject)]


# --- JSON -------------------------------------------------------------------------------

class Value:
    """A scalar with a type of its own in the API (``IntOrString``, ``Quantity``): ``raw``
    is its JSON value."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.raw == self.raw  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.raw))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.raw!r})"


class IntOrString(Value):
    """A port number or name (``8080``, ``"http"``), a count or a percentage (``"25%"``)."""

    __slots__ = ()

    def __init__(self, raw: int | str) -> None:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ObjectError(f"an IntOrString is an int or a str, not {type(raw).__name__} {raw!r}")
        super().__init__(raw)


class Quantity(Value):
    """A resource quantity (``250m``, ``2Gi``, ``1``)."""

    __slots__ = ()

    def __init__(self, raw: int | float | str) -> None:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ObjectError(f"a Quantity is a number or a str, not {type(raw).__name__} {raw!r}")
        super().__init__(raw)


_SCALARS: dict[str, Any] = {"str": str, "int": int, "float": (int, float), "bool": bool,
                            "ios": IntOrString, "qty": Quantity}


def _coerce(spec: str, value: Any, where: str, check: bool) -> Any:
    """``value`` for a field of type ``spec`` (see ``tools/gen_k8s_api.py``): a mapping where
    a type is expected is made into it (Python field names, as for cdk8s's structs). With
    ``check``, a value of another type raises :class:`ObjectError` naming the field."""
    if value is None or spec == "any":
        return value
    scalar = _SCALARS.get(spec)
    if scalar is not None:
        if not isinstance(value, scalar) and is_cdk8s_value(value):
            value = from_cdk8s(value)
        if check and (not isinstance(value, scalar) or (isinstance(value, bool) and spec in ("int", "float"))):
            raise ObjectError(f"{where}: expected {_spec_name(spec)}, got {type(value).__name__} {value!r}")
        return value
    if spec[0] in "[{":
        item, is_list = spec[1:-1], spec[0] == "["
        if not (isinstance(value, (list, tuple)) if is_list else isinstance(value, Mapping)):
            if check:
                raise ObjectError(f"{where}: expected {_spec_name(spec)}, got {type(value).__name__}")
            return value
        if not check and item in _SCALARS:
            return value
        if is_list:
            return [_coerce(item, v, f"{where}[{i}]", check) for i, v in enumerate(value)]
        return {k: _coerce(item, v, f"{where}[{k!r}]", check) for k, v in value.items()}
    struct = _struct_class(spec)
    if isinstance(value, struct):
        return value
    if isinstance(value, Mapping) and not isinstance(value, Struct):
        return struct(**value)
    if is_cdk8s_value(value):  # a struct of cdk8s's k8s module: the same names
        value = from_cdk8s(value)
        if isinstance(value, struct):
            return value
    if check:
        raise ObjectError(f"{where}: expected {spec}, got {type(value).__name__}")
    return value


def _spec_name(spec: str) -> str:
    if spec[0] == "[":
        return f"a list of {_spec_name(spec[1:-1])}"
    if spec[0] == "{":
        return f"a map of {_spec_name(spec[1:-1])}"
    return {"ios": "IntOrString", "qty": "Quantity"}.get(spec, spec)


@lru_cache(maxsize=None)
def _struct_class(name: str) -> type[Struct]:
    from final_problem import k8s_api

    return getattr(k8s_api, name)  # type: ignore[no-any-return]


class Struct:
    """A typed Kubernetes value (``ObjectMeta``, ``ServiceSpec``, ...): the classes of
    :mod:`final_problem.k8s_api`, generated from the Kubernetes schema. Keyword arguments
    by Python name; rendered by JSON name, ``None`` left out. Types are checked when the
    interpreter runs with assertions on (not under ``python -O``, as ``cdk synth`` runs
    the app); a mapping given for a typed field is made into that type."""

    __slots__ = ("_values",)
    _schema: ClassVar[str] = ""
    #: Python name -> (JSON name, type).
    _fields: ClassVar[dict[str, tuple[str, str]]] = {}
    _required: ClassVar[tuple[str, ...]] = ()

    def _init(self, given: dict[str, Any]) -> None:
        cls = type(self)
        values: dict[str, Any] = {}
        for name, (_, spec) in cls._fields.items():
            value = given[name]
            if value is not None:
                values[name] = _coerce(spec, value, f"{cls.__name__}.{name}", __debug__)
        missing = [n for n in cls._required if n not in values]
        if missing:
            raise ObjectError(f"{cls.__name__}: missing required field(s) {', '.join(missing)}")
        self._values = values

    def __getattr__(self, name: str) -> Any:
        if name in type(self)._fields:
            return self._values.get(name)
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def to_json(self) -> dict[str, Any]:
        """The value as Kubernetes JSON."""
        return plain(self)  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._values == self._values  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # compared by value, and mutable through _values

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"


def plain(value: Any) -> Any:
    """``value`` as JSON data: structs by their Kubernetes field names, ``None`` dropped."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Value):
        return value.raw
    if isinstance(value, Struct):
        fields = type(value)._fields
        return {fields[k][0]: p for k, v in value._values.items() if (p := plain(v)) is not None}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: p for k, v in value.items() if (p := plain(v)) is not None}
    if is_cdk8s_value(value):
        return plain(from_cdk8s(value))
    raise ObjectError(f"cannot render a {type(value).__name__} in a Kubernetes object")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _without_empty(value: Any) -> Any:
    """Drop empty lists and maps, recursively (cdk8s does so in metadata)."""
    if isinstance(value, dict):
        kept = {k: v for k, v in ((k, _without_empty(v)) for k, v in value.items()) if v is not None}
        return kept or None
    if isinstance(value, list):
        return value or None
    return value


@dataclass(frozen=True)
class JsonPatch:
    """One RFC 6902 operation on an object's rendered JSON: :meth:`add`, :meth:`replace`
    or :meth:`remove`."""

    op: str
    path: str
    value: Any = None

    @staticmethod
    def add(path: str, value: Any) -> JsonPatch:
        """Add ``value`` at ``path``: a key of a map, or before an index of a list (``-``: at the end)."""
        return JsonPatch("add", path, value)

    @staticmethod
    def replace(path: str, value: Any) -> JsonPatch:
        return JsonPatch("replace", path, value)

    @staticmethod
    def remove(path: str) -> JsonPatch:
        return JsonPatch("remove", path)

    def apply(self, document: dict[str, Any]) -> None:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in self.path.split("/")[1:]]
        target: Any = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            index = len(target) if last == "-" else int(last)
            if self.op == "add":
                target.insert(index, plain(self.value))
            elif self.op == "replace":
                target[index] = plain(self.value)
            else:
                del target[index]
        elif self.op == "remove":
            del target[last]
        else:
            if self.op == "replace" and last not in target:
                raise ObjectError(f"JSON patch: nothing to replace at {self.path}")
            target[last] = plain(self.value)


class Metadata:
    """An object's metadata: what it was given, plus labels and annotations added later."""

    def __init__(self, given: Mapping[str, Any]) -> None:
        self._given = {k: v for k, v in given.items() if k not in ("labels", "annotations")}
        self.labels: dict[str, str] = dict(given.get("labels") or {})
        self.annotations: dict[str, str] = dict(given.get("annotations") or {})

    @property
    def name(self) -> str | None:
        return self._given.get("name")

    @property
    def namespace(self) -> str | None:
        return self._given.get("namespace")

    def add_label(self, key: str, value: str) -> None:
        self.labels[key] = value

    def get_label(self, key: str) -> str | None:
        return self.labels.get(key)

    def add_annotation(self, key: str, value: str) -> None:
        self.annotations[key] = value

    def to_json(self, chart_labels: Mapping[str, str]) -> dict[str, Any]:
        meta = {**self._given, "annotations": self.annotations, "labels": {**chart_labels, **self.labels}}
        return _without_empty(meta) or {}


class ApiObject(_Member):
    """One Kubernetes object in an :class:`ObjectChart` (or a :class:`Group` in one).

    ``api_version``, ``kind`` and ``metadata`` (an ``ObjectMeta`` struct or a mapping) as
    in Kubernetes; every other keyword is a top-level field (structs or JSON data). The
    classes of :mod:`final_problem.k8s` (``KubeService``, ...) fix ``api_version`` and
    ``kind`` and take the kind's fields, typed.
    """

    #: A kind's ``(apiVersion, kind)`` and its fields as a struct (the generated classes).
    _gvk: ClassVar[tuple[str, str] | None] = None
    _props_class: ClassVar[type[Struct] | None] = None

    def _init_kind(self, scope: ObjectChart | Group, id: str, given: dict[str, Any]) -> None:
        """The constructor of a generated kind: ``given`` is its keyword arguments."""
        props = self._props_class
        assert props is not None and self._gvk is not None
        values = props(**{k: given[k] for k in props._fields})._values
        metadata = values.pop("metadata", None)
        fields = {props._fields[k][0]: v for k, v in values.items()}
        ApiObject.__init__(self, scope, id, api_version=self._gvk[0], kind=self._gvk[1], metadata=metadata, **fields)

    def __init__(self, scope: ObjectChart | Group, id: str, *, api_version: str | None = None,
                 kind: str | None = None, metadata: Any = None, **fields: Any) -> None:
        if not api_version or not kind:
            raise ObjectError(f"object '{id}' needs an api_version and a kind")
        super().__init__(id)
        self.api_version = api_version
        self.kind = kind
        self.fields = fields
        self.metadata = Metadata(plain(metadata) or {})
        self.patches: list[JsonPatch] = []
        if not self.metadata.name:
            raise ObjectError(f"{kind} '{id}' needs metadata.name: objects reached by name are named explicitly")
        _attach(self, scope)

    @property
    def name(self) -> str:
        return self.metadata.name or ""

    def add_json_patch(self, *ops: JsonPatch) -> None:
        """Apply RFC 6902 operations to the rendered JSON, in order."""
        self.chart.check_open(self.path)
        self.patches.extend(ops)

    def to_json(self) -> dict[str, Any]:
        body = {k: p for k, v in self.fields.items() if (p := plain(v)) is not None}
        document = {
            "apiVersion": self.api_version, "kind": self.kind,
            "metadata": self.metadata.to_json(self.chart.object_labels), **body,
        }
        for op in self.patches:
            op.apply(document)
        document = _sorted(document)
        head = ("apiVersion", "kind", "metadata")
        return {**{k: document[k] for k in head}, **{k: v for k, v in document.items() if k not in head}}


def api_object_of(node: Any) -> ApiObject:
    """``node`` itself if it is an object, else its default child, recursively."""
    while isinstance(node, Group):
        child = node.default_child
        if child is None:
            raise ObjectError(f"{node.path} has no child named 'Resource' or 'Default'")
        node = child
    if not isinstance(node, ApiObject):
        raise ObjectError(f"not an object of an ObjectChart: {type(node).__name__}")
    return node


def chart_of(scope: Any) -> cdk8s.Chart:
    """The chart of a group or object, or of any cdk8s construct."""
    if isinstance(scope, (Group, ApiObject)):
        return scope.chart
    if isinstance(scope, cdk8s.Chart):
        return scope
    return cdk8s.Chart.of(scope)


class ObjectChart(cdk8s.Chart):
    """A cdk8s chart whose :class:`ApiObject` objects are rendered in Python.

    ``labels`` go on every object. ``to_json`` returns the Python objects in dependency
    order, then whatever cdk8s constructs were added to the chart directly.
    """

    def __init__(self, scope: Construct, id: str, *, labels: Mapping[str, str] | None = None,
                 disable_resource_name_hashes: bool | None = None) -> None:
        super().__init__(scope, id, labels=dict(labels) if labels else None,
                         disable_resource_name_hashes=disable_resource_name_hashes)
        root = Group(None, id)  # type: ignore[arg-type]
        root._chart = self
        self._object_root = root
        self._applied: list[Any] | None = None
        #: Labels every object gets (an object's own labels win).
        self.object_labels: dict[str, str] = dict(labels or {})

    def check_open(self, what: str) -> None:
        if self._applied is not None:
            raise ObjectError(f"{what}: chart {self.node.id} was already applied (rendered for good); change it before")

    @property
    def children(self) -> list[Group | ApiObject]:
        """Objects and groups added to the chart itself, in order."""
        return self._object_root.children

    def put_first(self, first: Group | ApiObject) -> None:
        """Make everything added to the chart so far (but ``first``) come after ``first``:
        a namespace before what lives in it."""
        for child in self.children:
            if child is not first:
                child.add_dependency(first)

    def objects(self) -> list[ApiObject]:
        """The chart's Python objects, in the order they are written."""
        return _topology(self._object_root)

    def to_json(self) -> list[Any]:
        if self._applied is not None:
            return list(self._applied)
        rendered: list[Any] = [o.to_json() for o in self.objects()]
        if self.node.children:
            rendered += list(super().to_json())
        return rendered

    def apply(self) -> list[Any]:
        """Render the chart once, for good: what is applied to a cluster. ``to_json``
        returns the same objects from now on, and a later object, group, dependency or
        patch fails instead of silently missing from what was applied."""
        if self._applied is None:
            self._applied = self.to_json()
        return list(self._applied)
