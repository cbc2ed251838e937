"""The README's settings tables are generated from the settings' own declarations."""

from __future__ import annotations

from final_problem import readme, settings
from tests.conftest import ROOT


def test_readme_settings_tables_match_the_declarations() -> None:
    text = (ROOT / "README.md").read_text()
    assert readme.render(text) == text, "README drifted: run `.venv/bin/python -m final_problem.readme`"


def test_every_component_setting_is_documented() -> None:
    body = settings.reference_markdown()
    from final_problem import components

    for name, cls in components.COMPONENTS.items():
        for info in cls.settings_class.infos() if cls.settings_class else ():
            assert info.doc.strip(), f"{name}.{info.name} has no doc"
            assert f"`{name}.{info.name}`" in body


def test_per_profile_defaults_are_shown_per_profile() -> None:
    assert "| `zookeeper.memory_mib` | eks 2048, pi 320 |" in settings.reference_markdown()
