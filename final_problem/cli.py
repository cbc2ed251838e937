"""``final-problem``: one command for the running platform.

    final-problem endpoints                 # what was found, and where
    final-problem demo consistency          # one concept, narrated
    final-problem --local --json demo all   # every concept on local real servers, as JSON
    final-problem zookeeper status          # a component's own client (its subcommands)
    final-problem redis example

Where the platform is: ``--local`` (start the real servers on this machine), explicit
addresses (``--zookeeper``, ``--redis-sentinels``), the clients' environment variables,
the cluster's DNS when run in a pod, a kubeconfig (``--kubeconfig``; port-forwards), or
AWS (``--aws``: the cluster stack's outputs and the EKS API). Credentials come from the
environment or the cluster's Secrets, never from flags. See docs/CONCEPTS.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from contextlib import ExitStack
from typing import Sequence

from final_problem.tour import discovery
from final_problem.tour.discovery import DiscoveryError, Endpoints

#: Component to its location flag (argparse's attribute name) and the environment variable
#: its client reads; the flag wins over the variable.
LOCATIONS = {"zookeeper": ("zookeeper", "ZOOKEEPER_HOSTS"), "redis": ("redis_sentinels", "REDIS_SENTINELS"),
             "kafka": ("kafka", "KAFKA_BOOTSTRAP_SERVERS"), "cadence": ("cadence", "CADENCE_FRONTEND")}

#: Component name to the module whose ``main(argv)`` is its command line.
CLIENTS = {
    "zookeeper": "final_problem.clients.zookeeper",
    "redis": "final_problem.clients.redis",
    "kafka": "final_problem.clients.kafka",
    "cadence": "final_problem.clients.cadence",
}


def _parser() -> argparse.ArgumentParser:
    from final_problem.tour.demos import CONCEPTS, DEMOS

    parser = argparse.ArgumentParser(prog="final-problem", description=__doc__.split("\n")[0])
    where = parser.add_argument_group("where the platform is (first match wins)")
    where.add_argument("--local", action="store_true", help="start the real servers on this machine (sudo make system-deps)")
    where.add_argument("--zookeeper", metavar="H:P,...", help="ZooKeeper members")
    where.add_argument("--redis-sentinels", metavar="H:P,...", help="Redis Sentinels")
    where.add_argument("--kafka", metavar="H:P,...", help="Kafka bootstrap servers")
    where.add_argument("--cadence", metavar="H:P", help="Cadence frontend (gRPC)")
    where.add_argument("--kubeconfig", help="kubeconfig of the cluster (default: KUBECONFIG, ~/.kube/config, k3s's)")
    where.add_argument("--aws", action="store_true", help="find the EKS cluster through the stacks' outputs")
    where.add_argument("--cluster-name", default="final-problem", help="with --aws: the cluster_name setting")
    where.add_argument("--region", help="with --aws: the AWS region (default: AWS_REGION)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("endpoints", help="print what was found")
    demo = sub.add_parser("demo", help="demonstrate a concept", description="; ".join(
        f"{name}: {summary}" for name, (_, summary, _) in DEMOS.items()))
    demo.add_argument("concept", choices=(*CONCEPTS, "all"))
    for name in CLIENTS:
        client = sub.add_parser(name, help=f"the {name} client (its own subcommands)", add_help=False)
        client.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def find(args: argparse.Namespace, stack: ExitStack) -> Endpoints:
    """The endpoints, from the first source that applies."""
    explicit = {component: getattr(args, flag) or os.environ.get(variable)
                for component, (flag, variable) in LOCATIONS.items()}
    if args.local:
        from final_problem.tour.local import LocalPlatform

        local = stack.enter_context(LocalPlatform())
        endpoints = local.endpoints()
        endpoints.local = local  # type: ignore[attr-defined]
        return endpoints
    if all(explicit.values()):
        return Endpoints(source="flags and environment", addresses=dict(explicit))  # type: ignore[arg-type]
    explicit = {k: v for k, v in explicit.items() if v}
    if discovery.in_cluster():
        endpoints = discovery.from_cluster_dns(discovery.service_refs())
    elif args.aws:
        endpoints = discovery.from_aws(args.cluster_name, args.region or os.environ.get("AWS_REGION"), discovery.service_refs())
    else:
        kubeconfig = args.kubeconfig or discovery.default_kubeconfig()
        if kubeconfig is None:
            raise DiscoveryError(
                "no platform found: give --kubeconfig (k3s: /etc/rancher/k3s/k3s.yaml), --aws for EKS, "
                "addresses (--zookeeper, --redis-sentinels), or --local"
            )
        discovery.check_reachable(kubeconfig)
        endpoints = discovery.from_kubeconfig(kubeconfig, discovery.service_refs())
    stack.callback(endpoints.close)
    endpoints.addresses.update(explicit)
    return endpoints


def main(argv: Sequence[str] | None = None) -> int:
    # kazoo logs every dropped connection; the demos report what matters themselves.
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in CLIENTS:
            # The component's own command line, flags and all (its --help included).
            return _client(argv[0], argv[1:])
        args = _parser().parse_args(argv)
        if args.command in CLIENTS:
            # Location flags given before a client's subcommand reach it as its environment.
            for flag, variable in LOCATIONS.values():
                if getattr(args, flag):
                    os.environ[variable] = getattr(args, flag)
            return _client(args.command, args.args)
        return _main(args)
    except ModuleNotFoundError as e:
        if not missing_client_library(e):
            raise
        print(f"error: the Python package '{e.name}' is missing: pip install 'final-problem[clients]'", file=sys.stderr)
        return 2


#: Top-level modules of the libraries in the package's ``clients`` extra (pyproject.toml).
CLIENT_LIBRARIES = frozenset({"boto3", "botocore", "kazoo", "kafka", "redis", "cadence", "grpc"})


def missing_client_library(error: ModuleNotFoundError) -> bool:
    """Whether ``error`` is a library of the optional ``clients`` extra not being installed."""
    return (error.name or "").split(".")[0] in CLIENT_LIBRARIES


def _client(name: str, argv: list[str]) -> int:
    return int(importlib.import_module(CLIENTS[name]).main(argv) or 0)


def _main(args: argparse.Namespace) -> int:
    try:
        with ExitStack() as stack:
            endpoints = find(args, stack)
            if args.command == "endpoints":
                if args.json:
                    print(json.dumps({"source": endpoints.source, "addresses": endpoints.addresses}, indent=2))
                else:
                    print(f"found through {endpoints.source}:")
                    for name, address in endpoints.addresses.items():
                        print(f"  {name:12} {address}")
                return 0
            return _demo(args, endpoints)
    except DiscoveryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace, endpoints: Endpoints) -> int:
    from final_problem.tour import demos

    say = (lambda _line: None) if args.json else print
    ctx = demos.Context(endpoints=endpoints, local=getattr(endpoints, "local", None), say=say)
    concepts = demos.CONCEPTS if args.concept == "all" else (args.concept,)
    reports = []
    for concept in concepts:
        try:
            reports.append(demos.run(concept, ctx))
        except DiscoveryError:
            raise
        except Exception as e:  # noqa: BLE001 - a demo that cannot run is reported, the rest go on
            if isinstance(e, ModuleNotFoundError) and missing_client_library(e):
                raise  # one line for the whole command (main)
            report = demos.Report(concept=concept, component=demos.DEMOS[concept][0])
            report.steps.append(demos.Step(action="run", observed=f"{type(e).__name__}: {e}", ok=False))
            say(f"  ✗ could not run: {type(e).__name__}: {e}")
            reports.append(report)
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
