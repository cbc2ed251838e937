"""The architecture diagram of the README (Mermaid), generated from the component registry.

Stacks, the charts each enabled component renders, what each requires (the order they are
applied in) and the traffic paths: clients to each component's client Service and to a
chart's load balancer (``load_balancer``), and the calls a component declares
(``PlatformChart.calls``). ``python -m final_problem.readme``
writes it into the README; a test fails when it drifts.
"""

from __future__ import annotations

from typing import Any


def mermaid(settings: Any | None = None) -> str:
    from final_problem import components, config, manifests
    from final_problem.profiles import EKS
    from final_problem.tour.discovery import client_services

    if settings is None:
        components.load_bundled()
        settings = config.from_mapping({"components": list(components.COMPONENTS)})
    charts = manifests.render(settings, EKS.name)
    lines = [
        "```mermaid",
        "flowchart LR",
        '  user(["final-problem / apps"])',
        '  subgraph aws["AWS (cdk deploy)"]',
        '    network["Network stack: VPC, subnets, NAT, flow logs"]',
        '    cluster["Cluster stack: EKS, node group, add-ons"]',
        "  end",
        '  pi["k3s on Raspberry Pis (dist/pi)"]',
        "  network --> cluster",
    ]
    lines.append('  subgraph charts["charts (cdk8s, same YAML on both targets)"]')
    for name, chart in charts.items():
        lines.append(f'    {name}["{name}<br/>{type(chart).construct_id} {chart.version}"]')
    lines.append("  end")
    lines += ["  cluster -- applies --> charts", "  pi -- auto-deploys --> charts"]
    for name, chart in charts.items():
        for dep in chart.requires:
            lines.append(f"  {dep} -. before .-> {name}")
    refs = client_services(charts)
    for name, chart in charts.items():
        ref = refs.get(name)
        if ref is not None:
            lines.append(f'  user -- "{ref.service}:{ref.port}" --> {name}')
        if (entry := getattr(chart, "load_balancer", None)) is not None:
            lines.append(f'  user -- "{entry} (load balancer)" --> {name}')
        for target in getattr(chart, "calls", ()):
            if target in charts:
                lines.append(f"  {name} == calls ==> {target}")
    lines.append("```")
    return "\n".join(lines) + "\n"
