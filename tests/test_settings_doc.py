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
    # The eks profile's two sizes (cluster setting size), then pi's one.
    assert "| `zookeeper.memory_mib` | eks 512 (production 2048), pi 320 |" in settings.reference_markdown()


def test_the_diagram_draws_the_traffic_the_charts_wire() -> None:
    """Calls come from the charts' own wiring: the edge's routes, the demo's mesh upstreams,
    Cadence's database; with a component disabled, the calls to it go too."""
    from final_problem import config, diagram

    full = diagram.mermaid()
    for edge in ("envoy == calls ==> demo", "envoy == calls ==> cadence", "demo == calls ==> redis",
                 "cadence == calls ==> postgres", 'user -- "envoy:80,8088 (load balancer)" --> envoy'):
        assert edge in full, edge
    without_cadence = diagram.mermaid(config.from_mapping(
        {"components": ["base", "consul", "redis", "demo", "envoy"]}))
    assert "envoy == calls ==> demo" in without_cadence and "cadence" not in without_cadence
    assert 'user -- "envoy:80 (load balancer)" --> envoy' in without_cadence
