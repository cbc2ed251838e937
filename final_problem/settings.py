"""Settings owned by components: typed, documented, validated, read from their own section.

A component declares its settings as a frozen dataclass deriving from
:class:`ComponentSettings`, next to its chart, and names it in the chart's
``settings_class``. Each field is one setting, declared with :func:`setting`, which holds
its documentation, its default (one value, or one per render profile) and the generic
checks (range, choices). Cross-field rules go in :meth:`ComponentSettings.check`::

    @dataclass(frozen=True, kw_only=True)
    class SearchSettings(ComponentSettings):
        replicas: int = setting(3, doc="Members; odd.", minimum=3, maximum=7)
        memory_mib: int = setting(per_profile(eks=2048, pi=512), doc="Memory limit of each member.")

        def check(self) -> None:
            if self.replicas % 2 == 0:
                raise self.error("replicas", self.replicas, "must be odd", "set search.replicas=3")

Users set them in ``cdk.json`` as an object per component (``"search": {"replicas": 5}``)
or on the command line as ``-c search.replicas=5``. Type coercion, range checks, unknown
keys (with a did-you-mean) and the wording of errors are written once, here, from the
field types. ``python -m final_problem.settings --markdown`` prints the settings tables
of the README from the same declarations.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping, Sequence, Union

from final_problem.errors import ConfigError
from final_problem.profiles import PROFILES, Profile


@dataclass(frozen=True)
class PerProfile:
    """A default that differs between render profiles (``eks``, ``pi``), and between the
    sizes of a profile (``eks_production``: cluster setting ``size=production``)."""

    values: Mapping[str, Any]

    def for_profile(self, profile: Profile) -> Any:
        return self.values.get(f"{profile.name}_{profile.size}", self.values[profile.name])

    def describe(self) -> str:
        # "eks 512 (production 2048), pi 320": a profile's own size, then its others'.
        parts: list[str] = []
        for name, value in self.values.items():
            profile, _, size = name.partition("_")
            if size:
                parts[-1] += f" ({size} {_show(value)})"
            else:
                parts.append(f"{profile} {_show(value)}")
        return ", ".join(parts)


def per_profile(**values: Any) -> PerProfile:
    """A default per render profile, and per size of one: ``per_profile(eks=512,
    eks_production=2048, pi=320)``. A size without its own value takes its profile's."""
    missing = [name for name in PROFILES if name not in values]
    if missing:
        raise TypeError(f"per_profile needs a value for every profile; missing: {', '.join(missing)}")
    sized = {f"{name}_{size}" for name, p in PROFILES.items() for size in p.sizes[1:]}
    unknown = [name for name in values if name not in PROFILES and name not in sized]
    if unknown:
        raise TypeError(f"per_profile: no profile or size {', '.join(unknown)} (known: {', '.join([*PROFILES, *sorted(sized)])})")
    # Each profile's own size first, then its other sizes, in profile order.
    order = [key for name, p in PROFILES.items() for key in (name, *(f"{name}_{s}" for s in p.sizes[1:]))]
    return PerProfile({key: values[key] for key in order if key in values})


#: The default of a setting that is unset unless the user gives it.
UNSET: Any = None


def setting(
    default: Any = UNSET,
    *,
    doc: str,
    minimum: int | None = None,
    maximum: int | None = None,
    choices: Sequence[Any] | None = None,
    default_doc: str | None = None,
    example: Any = None,
    change: Any = None,
) -> Any:
    """Declare one setting of a component.

    ``default`` is a value or :func:`per_profile`; ``default_doc`` describes a computed
    default (``None`` meaning "derived", e.g. "half the memory limit"). ``minimum``,
    ``maximum`` and ``choices`` are checked for every value, with one wording.
    ``example`` is a valid value to suggest in errors where the default is not one.
    ``change`` is what changing the value does to a live platform: a rule of
    :mod:`final_problem.changes` (``rolling("...")``, ``refused("...", "...")``, ...), which
    ``final-problem plan`` applies before a deploy. Unset, the plan judges a change by the
    pod templates it alters alone.
    """
    metadata = {
        "doc": doc, "minimum": minimum, "maximum": maximum,
        "choices": tuple(choices) if choices is not None else None,
        "default_doc": default_doc, "example": example, "change": change,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("a setting's default must be immutable (use a tuple)")
    return field(default=default, metadata={"setting": metadata})


@dataclass(frozen=True)
class SettingInfo:
    """One declared setting, as the parser and the docs see it."""

    name: str
    type: Any
    default: Any
    doc: str
    minimum: int | None
    maximum: int | None
    choices: tuple[Any, ...] | None
    default_doc: str | None
    example: Any
    #: What a change does to a live platform (:mod:`final_problem.changes`); None: undeclared.
    change: Any = None

    @property
    def optional(self) -> bool:
        return _is_optional(self.type)

    @property
    def base_type(self) -> Any:
        return _strip_optional(self.type)

    def default_for(self, profile: Profile) -> Any:
        return self.default.for_profile(profile) if isinstance(self.default, PerProfile) else self.default

    def example_value(self, profile: Profile | None = None) -> Any:
        """A valid value to suggest: the example, else the default."""
        if self.example is not None:
            return self.example
        if isinstance(self.default, PerProfile):
            return self.default.for_profile(profile or PROFILES["eks"])
        if self.default is not None:
            return self.default
        if self.choices:
            return self.choices[0]
        if self.minimum is not None:
            return self.minimum
        return None

    def type_name(self) -> str:
        t = self.base_type
        if t is bool:
            return "true/false"
        if t is int:
            return "whole number"
        if _is_tuple(t):
            return "list"
        return "text"


def _json_value(value: Any) -> Any:
    """A setting's value as JSON holds it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _is_optional(t: Any) -> bool:
    return typing.get_origin(t) in (Union, types.UnionType) and type(None) in typing.get_args(t)


def _strip_optional(t: Any) -> Any:
    if _is_optional(t):
        rest = [a for a in typing.get_args(t) if a is not type(None)]
        return rest[0] if len(rest) == 1 else t
    return t


def _is_tuple(t: Any) -> bool:
    return t is tuple or typing.get_origin(t) is tuple


def _show(value: Any) -> str:
    """A value as the user writes it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True, kw_only=True)
class ComponentSettings:
    """Base of every component's settings.

    Subclasses are frozen, keyword-only dataclasses whose fields are declared with
    :func:`setting`. ``profile`` is the render profile the values are for; per-profile
    defaults are resolved against it when the object is built. Override :meth:`check`
    for rules that involve several settings, raising :meth:`error`.
    """

    #: The component's name, also the section in cdk.json; set by ``register``.
    section: ClassVar[str] = ""
    #: The render profile these values are for.
    profile: Profile = field(default=PROFILES["eks"], compare=False, repr=False)

    def __post_init__(self) -> None:
        for info in self.infos():
            value = getattr(self, info.name)
            if isinstance(value, PerProfile):
                object.__setattr__(self, info.name, value.for_profile(self.profile))
        for info in self.infos():
            _check_value(self.section, info, getattr(self, info.name), self.profile)
        self.check()

    def check(self) -> None:
        """Rules across settings; raise :meth:`error`. Default: none."""

    #: What an inherited setting means for this component, by setting name: any of ``doc``,
    #: ``minimum``, ``maximum``, ``change`` (:func:`setting`'s arguments), replacing the
    #: declared one. A settings class shared by several components declares each field once;
    #: a component that reads a field differently (a CronJob where the others run a sidecar)
    #: says so here instead of declaring the field again.
    setting_overrides: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    #: Change rules (:mod:`final_problem.changes`) of values set in code rather than as
    #: settings, by the name :meth:`recorded_values` gives them (Kafka's declared topics).
    change_rules: ClassVar[Mapping[str, Any]] = {}

    def recorded_values(self) -> dict[str, Any]:
        """The values a deploy records on the platform (JSON), so ``final-problem plan`` can
        compare the next deploy with them: every setting, and the values in code that
        :attr:`change_rules` judge (override to add those)."""
        return {info.name: _json_value(getattr(self, info.name)) for info in self.infos()}

    def error(self, name: str, *args: Any, value: Any = dataclasses.MISSING,
              problem: str | None = None, fix: str | None = None) -> ConfigError:
        """A :class:`ConfigError` for setting ``name`` of this component: the same arguments
        in the same order as ``ConfigError(setting, value, problem, fix)``, with ``name``
        inside this component's section and the value optional (default: the setting's)::

            raise self.error("replicas", 4, "must be odd", "set search.replicas=3")
            raise self.error("replicas", problem="must be odd", fix="set search.replicas=3")

        ``self.error(name, problem, fix)`` (two positional texts, ``value=`` as keyword)
        keeps its meaning."""
        if len(args) == 3:
            value, problem, fix = args
        elif len(args) == 2:
            problem, fix = args
        elif args:
            raise TypeError("error() takes (name, value, problem, fix), (name, problem, fix) "
                            f"or keywords; got {len(args) + 1} positional arguments")
        if problem is None or fix is None:
            raise TypeError("error() needs a problem and a fix")
        shown = getattr(self, name) if value is dataclasses.MISSING else value
        return ConfigError(f"{self.section}.{name}", shown, problem, fix)

    def check_distinct_ports(self, *names: str) -> None:
        """Fail when two of the port settings ``names`` are equal: two listeners of one
        process cannot share a port. The fix names the next port none of them uses."""
        ports = {name: getattr(self, name) for name in names}
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                free = next(p for p in range(port + 1, 65_536) if p not in ports.values())
                raise self.error(name, f"the same port as {self.section}.{seen[port]}: two listeners cannot share a port",
                                 f"set {self.section}.{name}={free}")
            seen[port] = name

    def check_jvm_heap(self, heap_setting: str, memory_setting: str, *, max_share: float) -> None:
        """Fail when the JVM heap is not below ``max_share`` of the memory limit: the JVM
        needs memory outside the heap, and a process over its limit is killed. An unset
        heap (``None``) is half the memory."""
        limit = getattr(self, memory_setting)
        given = getattr(self, heap_setting)
        heap = given if given is not None else limit // 2
        if heap > int(limit * max_share) - 1:
            raise self.error(
                heap_setting,
                f"must stay below {int(max_share * 100)}% of {self.section}.{memory_setting} ({limit} MiB): the JVM "
                "needs memory outside the heap, and a process over its limit is killed",
                # Unset, the heap is half the memory in every profile: valid wherever this fails.
                f"leave {self.section}.{heap_setting} unset (it is then half of {self.section}.{memory_setting})"
                if given is not None
                else f"set {self.section}.{memory_setting}={2 * heap}",
                value=heap,
            )

    @classmethod
    def infos(cls) -> tuple[SettingInfo, ...]:
        return _infos(cls)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], profile: Profile) -> "ComponentSettings":
        """Settings from raw values (strings from ``-c``, JSON values from cdk.json)."""
        by_name = {i.name: i for i in cls.infos()}
        parsed: dict[str, Any] = {}
        for key, raw in values.items():
            info = by_name.get(key)
            if info is None:
                raise unknown_key(f"{cls.section}.{key}", raw, [f"{cls.section}.{n}" for n in by_name])
            parsed[key] = parse_value(f"{cls.section}.{key}", info, raw, profile)
        try:
            return cls(profile=profile, **parsed)
        except ConfigError as e:
            name = e.setting[len(cls.section) + 1:] if e.setting.startswith(f"{cls.section}.") else None
            if name is not None and name not in values:
                e.add_origin(f"default for the {profile.name} profile")
            elif name is not None and isinstance(by_name.get(name) and by_name[name].default, PerProfile):
                e.for_profile(profile.name)
            raise

    @classmethod
    def for_profile(cls, profile: Profile, **values: Any) -> "ComponentSettings":
        """Typed values over the defaults of ``profile`` (for code and tests)."""
        return cls(profile=profile, **values)


_INFO_CACHE: dict[type, tuple[SettingInfo, ...]] = {}
#: What :attr:`ComponentSettings.setting_overrides` may replace: the field's default and type
#: stay the declared ones.
_OVERRIDABLE = frozenset({"doc", "minimum", "maximum", "change"})


def _infos(cls: type) -> tuple[SettingInfo, ...]:
    cached = _INFO_CACHE.get(cls)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    overrides: Mapping[str, Mapping[str, Any]] = getattr(cls, "setting_overrides", {})
    infos = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("setting")
        if meta is None:
            continue
        own = overrides.get(f.name, {})
        wrong = sorted(set(own) - _OVERRIDABLE)
        if wrong:
            raise TypeError(f"{cls.__name__}.setting_overrides[{f.name!r}]: {', '.join(wrong)} cannot be "
                            f"overridden (only {', '.join(sorted(_OVERRIDABLE))})")
        infos.append(SettingInfo(name=f.name, type=hints[f.name], default=f.default, **{**meta, **own}))
    unknown = sorted(set(overrides) - {i.name for i in infos})
    if unknown:
        raise TypeError(f"{cls.__name__}.setting_overrides: no setting {', '.join(unknown)} to override")
    _INFO_CACHE[cls] = result = tuple(infos)
    return result


# --- parsing and checking, written once from the field types ---------------------------

_INT = re.compile(r"-?[0-9]+")


def how_to_set(name: str, value: Any) -> str:
    """How to give ``name`` the value ``value``, in the user's words."""
    return f"set {name}={_show(value)}"


def parse_value(name: str, info: SettingInfo, raw: Any, profile: Profile | None = None) -> Any:
    """Coerce a raw context value to the setting's type, or fail naming the setting."""
    example = info.example_value(profile)
    fix = how_to_set(name, example) if example is not None else f"give a {info.type_name()}"
    if raw is None or (isinstance(raw, str) and raw == "" and info.optional):
        if info.optional:
            return None
        raise ConfigError(name, raw, f"needs a {info.type_name()}", fix)
    t = info.base_type
    if t is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise ConfigError(name, raw, "not true or false", f"set {name}=true or {name}=false")
    if t is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and not math.isfinite(raw):
            raise ConfigError(name, raw, "beyond what a JSON number holds (the CDK CLI reads it as null)", fix)
        if isinstance(raw, str) and _INT.fullmatch(raw):
            return int(raw)
        raise ConfigError(name, raw, "not a whole number", fix)
    if _is_tuple(t):
        if isinstance(raw, (list, tuple)):
            items = [x for x in raw]
        elif isinstance(raw, str):
            items = [x.strip() for x in raw.split(",") if x.strip()]
        else:
            raise ConfigError(name, raw, "not a list", f"give a JSON list in cdk.json or a comma-separated list with -c {name}=a,b")
        for item in items:
            if not isinstance(item, str):
                raise ConfigError(name, raw, f"list item {item!r} is not text", "list text values only")
        return tuple(items)
    if t is str:
        if isinstance(raw, str):
            return raw
        raise ConfigError(name, raw, "not text", fix)
    raise TypeError(f"setting {name} has a type the parser does not know: {t!r}")


def _portable_example(info: SettingInfo, profile: Profile) -> Any:
    """A value to suggest for a setting given once for every profile (``-c`` and a cdk.json
    section are): of whole-number per-profile defaults the smallest, which the nodes of the
    bigger profiles carry too (the failing profile's own default may not fit a smaller
    one's nodes); else :meth:`SettingInfo.example_value`."""
    if info.example is None and isinstance(info.default, PerProfile):
        values = [info.default.for_profile(p) for p in PROFILES.values()]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return min(values)
    return info.example_value(profile)


def _check_value(section: str, info: SettingInfo, value: Any, profile: Profile) -> None:
    name = f"{section}.{info.name}" if section else info.name
    if value is None:
        if info.optional:
            return
        raise ConfigError(name, value, "is required", f"give a {info.type_name()}")
    t = info.base_type
    if t is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(name, value, "not a whole number", how_to_set(name, _portable_example(info, profile)))
    if info.choices is not None and value not in info.choices:
        allowed = ", ".join(_show(c) for c in info.choices)
        raise ConfigError(name, value, f"must be one of {allowed}", how_to_set(name, info.example_value(profile)))
    if isinstance(value, int) and not isinstance(value, bool):
        low, high = info.minimum, info.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            if low is not None and high is not None:
                bounds = f"must be {low} to {high}"
            elif low is not None:
                bounds = f"must be at least {low}"
            else:
                bounds = f"must be at most {high}"
            suggestion = _portable_example(info, profile)
            if not isinstance(suggestion, int) or (low is not None and suggestion < low) or (high is not None and suggestion > high):
                suggestion = low if low is not None else high
            raise ConfigError(name, value, bounds, how_to_set(name, suggestion))


def unknown_key(key: str, value: Any, known: Iterable[str]) -> ConfigError:
    """The error for a context key nobody declared, with the closest known names."""
    close = difflib.get_close_matches(key, list(known), n=2, cutoff=0.8)
    fix = f"did you mean {' or '.join(close)}?" if close else "remove it; `python -m final_problem.settings` lists every setting"
    return ConfigError(key, value, "not a setting of the platform or of a registered component", fix)


# --- documentation ----------------------------------------------------------------------

def _default_cell(info: SettingInfo) -> str:
    if info.default_doc is not None:
        return info.default_doc
    if isinstance(info.default, PerProfile):
        return info.default.describe()
    if info.default is None:
        return "unset"
    if isinstance(info.default, tuple) and not info.default:
        return "`[]`"
    return f"`{_show(info.default)}`"


def markdown_table(infos: Iterable[SettingInfo], *, prefix: str = "", membership: Iterable[str] = ()) -> str:
    """A README table of settings: key, default, meaning (with allowed values); for the
    names in ``membership`` (settings with a procedure, :mod:`final_problem.scaling`), how a
    live change is carried out."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    membership = set(membership)
    for info in infos:
        meaning = " ".join(info.doc.split())
        if info.choices is not None:
            meaning += f" One of {', '.join(_show(c) for c in info.choices)}."
        elif info.minimum is not None and info.maximum is not None:
            meaning += f" {info.minimum} to {info.maximum}."
        elif info.minimum is not None:
            meaning += f" At least {info.minimum}."
        if info.name in membership:
            meaning += (f" **Live:** a procedure: `final-problem scale {prefix}{info.name}=VALUE --live` prints its steps, "
                        "`--apply` runs them (\"Changing a running platform\"); `final-problem plan` says whether "
                        "before or after the deploy.")
        rows.append(f"| `{prefix}{info.name}` | {_default_cell(info)} | {meaning.replace('|', '/')} |")
    return "\n".join(rows)


def reference_markdown() -> str:
    """Every settings table of the README: the cluster's, then each component's."""
    from final_problem import components, config, scaling

    components.load_bundled()
    parts = [
        "<!-- generated by `python -m final_problem.settings --markdown`; tests/test_settings_doc.py checks it -->",
        "",
        "Cluster settings (`cdk.json` context keys, or `-c key=value`):",
        "",
        markdown_table(config.cluster_infos()),
    ]
    for name, cls in components.COMPONENTS.items():
        settings_class = cls.settings_class
        if settings_class is None or not settings_class.infos():
            continue
        parts += [
            "",
            f"`{name}` (`{cls.__module__}`): in cdk.json `\"{name}\": {{\"key\": value}}`, on the command line "
            f"`-c {name}.key=value`:",
            "",
            markdown_table(settings_class.infos(), prefix=f"{name}.",
                           membership=[setting for component, setting in scaling.PROCEDURES if component == name]),
        ]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m final_problem.settings", description="List every setting of the platform.")
    parser.add_argument("--markdown", action="store_true", help="print the README's settings tables")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(reference_markdown())
        return 0
    from final_problem import components, config

    components.load_bundled()
    for info in config.cluster_infos():
        print(f"{info.name:32} {_default_cell(info):28} {' '.join(info.doc.split())}")
    for name, cls in components.COMPONENTS.items():
        for info in cls.settings_class.infos() if cls.settings_class else ():
            print(f"{name + '.' + info.name:32} {_default_cell(info):28} {' '.join(info.doc.split())}")
    return 0


__all__ = [
    "ComponentSettings", "PerProfile", "SettingInfo", "per_profile", "setting", "parse_value",
    "unknown_key", "markdown_table", "reference_markdown",
]


if __name__ == "__main__":
    # Run the module's own copy, not __main__'s: the registry's classes come from it.
    from final_problem.settings import main as _main

    sys.exit(_main())
