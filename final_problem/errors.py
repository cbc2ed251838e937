"""The one error type raised for bad settings."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A setting has a value the platform cannot be built with.

    The message is one line that names the setting, the value received, where the value
    came from and for which render profile (when known), the problem and a fix, so a failed
    ``make synth`` tells the user what to change without reading the code::

        zookeeper.replicas = 4 (from cdk.json): must be one of 3, 5, 7. Fix: set zookeeper.replicas=3

    The one error API: ``ConfigError(setting, value, problem, fix)``, positional or by
    keyword. A component's settings class raises the same through
    ``self.error(name, value, problem, fix)``, where ``name`` is inside its section and
    ``value`` may be left out (the setting's own value is shown).
    """

    def __init__(self, setting: str, value: Any, problem: str, fix: str) -> None:
        self.setting = setting
        self.value = value
        self.problem = problem
        self.fix = fix
        #: Where the value came from ("cdk.json", "-c", "default for the pi profile").
        self.origin: str | None = None
        #: The render profile the value failed for, where it matters.
        self.profile: str | None = None
        super().__init__(setting, value, problem, fix)

    def add_origin(self, origin: str) -> "ConfigError":
        if self.origin is None:
            self.origin = origin
        return self

    def for_profile(self, profile: str) -> "ConfigError":
        if self.profile is None:
            self.profile = profile
        return self

    def __str__(self) -> str:
        where = []
        if self.origin:
            where.append(self.origin if self.origin.startswith("default") else f"from {self.origin}")
        if self.profile:
            where.append(f"profile {self.profile}")
        context = f" ({', '.join(where)})" if where else ""
        # repr() keeps the message on one line: a newline in a value shows as \n.
        shown = self.value if isinstance(self.value, (int, float)) and not isinstance(self.value, bool) else repr(self.value)
        problem = " ".join(str(self.problem).split())
        fix = " ".join(str(self.fix).split())
        return f"{self.setting} = {shown}{context}: {problem}. Fix: {fix}"
