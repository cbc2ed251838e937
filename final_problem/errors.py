"""The one error type raised for bad settings."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A setting has a value the platform cannot be built with.

    The message always names the setting, the value received and how to fix it, so a
    failed ``make synth`` tells the user what to change without reading the code.
    """

    def __init__(self, setting: str, value: Any, problem: str, fix: str) -> None:
        self.setting = setting
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"{setting} = {value!r}: {problem}. Fix: {fix}")
