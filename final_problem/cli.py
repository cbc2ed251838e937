"""``final-problem``: one command for the running platform.

    final-problem endpoints                 # what was found, and where
    final-problem demo consistency          # one concept, narrated
    final-problem --local --json demo all   # every concept on local real servers, as JSON
    final-problem zookeeper status          # a component's own client (its subcommands)
    final-problem redis example
    final-problem plan --live               # what the next deploy would do (final_problem/plan.py)
    final-problem scale zookeeper.replicas=5 --live --apply   # a quorum's membership (final_problem/scale.py)
    final-problem backup restore postgres|redis|zookeeper|consul [--to TIME] --data-dir DIR   # final_problem/backup.py

Where the platform is: ``--local`` (start the real servers on this machine), explicit
addresses (``--zookeeper``, ``--redis-sentinels``), the clients' environment variables,
the cluster's DNS when run in a pod, a kubeconfig (``--kubeconfig``; port-forwards), or
AWS (``--aws``: the cluster stack's outputs and the EKS API). Credentials come from the
environment or the cluster's Secrets, never from flags. See docs/CONCEPTS.md.

Options go before or after the subcommand (``final-problem demo all --json``). Every
connection and request waits at most ``--timeout`` seconds (default 5); a failure is one
line on stderr saying what was unreachable or missing and what to set, with exit status 1
(a demo step not as the concept predicts, a request refused), 2 (something to set or give:
an address, a password, a kubeconfig) or 3 (a server unreachable or not serving); Ctrl-C
stops after cleaning up, status 130. ``FINAL_PROBLEM_TRACEBACK=1`` shows a traceback instead.
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

from final_problem.clients import TIMEOUT_ENV, Unreachable, run_command, seconds, timeout_from_env
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


def _options(*, after_subcommand: bool) -> argparse.ArgumentParser:
    """The options of ``final-problem`` itself, accepted before the subcommand and again
    after it. After it, they default to ``argparse.SUPPRESS``: a value given before the
    subcommand stands unless given again."""
    def default(value: object) -> object:
        return argparse.SUPPRESS if after_subcommand else value

    options = argparse.ArgumentParser(add_help=False)
    where = options.add_argument_group("where the platform is (first match wins)")
    where.add_argument("--local", action="store_true", default=default(False),
                       help="start the real servers on this machine (sudo make system-deps)")
    where.add_argument("--zookeeper", metavar="H:P,...", default=default(None),
                       help="ZooKeeper members (default: ZOOKEEPER_HOSTS)")
    where.add_argument("--redis-sentinels", metavar="H:P,...", default=default(None),
                       help="Redis Sentinels (default: REDIS_SENTINELS)")
    where.add_argument("--kafka", metavar="H:P,...", default=default(None),
                       help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)")
    where.add_argument("--cadence", metavar="H:P", default=default(None),
                       help="Cadence frontend, gRPC (default: CADENCE_FRONTEND)")
    where.add_argument("--kubeconfig", metavar="FILE", default=default(None),
                       help="kubeconfig of the cluster (default: KUBECONFIG, ~/.kube/config, k3s's); "
                            "the clients read passwords from its Secrets")
    where.add_argument("--aws", action="store_true", default=default(False),
                       help="find the EKS cluster through the stacks' outputs")
    where.add_argument("--cluster-name", metavar="NAME", default=default("final-problem"),
                       help="with --aws: the cluster_name setting (default: final-problem)")
    where.add_argument("--region", default=default(None), help="with --aws: the AWS region (default: AWS_REGION)")
    output = options.add_argument_group("output and waiting")
    output.add_argument("--json", action="store_true", default=default(False), help="print results as JSON")
    output.add_argument("--timeout", type=seconds, metavar="SECONDS", default=default(None),
                        help=f"seconds to wait for a connection or a request (default: ${TIMEOUT_ENV}, else 5)")
    return options


def _parser() -> argparse.ArgumentParser:
    from final_problem.tour.demos import CONCEPTS, DEMOS

    parser = argparse.ArgumentParser(prog="final-problem", description=__doc__.split("\n")[0].replace("``", ""),
                                     parents=[_options(after_subcommand=False)])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    after = [_options(after_subcommand=True)]
    sub.add_parser("endpoints", help="print what was found", parents=after)
    demo = sub.add_parser("demo", help="demonstrate a concept", parents=after, description="; ".join(
        f"{name}: {d.summary}" for name, d in DEMOS.items()))
    demo.add_argument("concept", choices=(*CONCEPTS, "all"), metavar="CONCEPT",
                      help=f"one of {', '.join(CONCEPTS)}, or all of them in turn")
    plan = sub.add_parser("plan", add_help=False,
                          help="what the next deploy would do: `final-problem plan --help` (exit 1 on a refused change)")
    plan.add_argument("args", nargs=argparse.REMAINDER, help="--from DIR or --live, and the plan's options")
    scale = sub.add_parser("scale", add_help=False,
                           help="change a quorum's membership, one member at a time: `final-problem scale --help`")
    scale.add_argument("args", nargs=argparse.REMAINDER, help="COMPONENT.SETTING=VALUE, --live or --from DIR, --apply")
    backup = sub.add_parser("backup", add_help=False,
                            help="list a component's backups and restore one to a time: `final-problem backup --help`")
    backup.add_argument("args", nargs=argparse.REMAINDER, help="list COMPONENT, or restore COMPONENT --to TIME --data-dir DIR")
    for name in CLIENTS:
        client = sub.add_parser(name, help=f"the {name} client: `final-problem {name} --help` lists its subcommands",
                                add_help=False)
        client.add_argument("args", nargs=argparse.REMAINDER, help=f"the {name} client's subcommand and its arguments")
    return parser


def _not_given(component: str) -> str:
    flag, variable = LOCATIONS[component]
    return f"not given: give --{flag.replace('_', '-')} H:P or set {variable}"


def find(args: argparse.Namespace, stack: ExitStack) -> Endpoints:
    """The endpoints, from the first source that applies. Addresses given for some
    components only are used as they are when no cluster is found: the demos then run for
    those components and skip the others."""
    explicit = {component: getattr(args, flag) or os.environ.get(variable)
                for component, (flag, variable) in LOCATIONS.items()}
    timeout = args.timeout or timeout_from_env()
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
        endpoints = discovery.from_aws(args.cluster_name, args.region or os.environ.get("AWS_REGION"),
                                       discovery.service_refs(), timeout_s=timeout)
    else:
        kubeconfig = args.kubeconfig or discovery.default_kubeconfig()
        if kubeconfig is None:
            if explicit:
                return Endpoints(source="flags and environment", addresses=explicit,
                                 unreachable={c: _not_given(c) for c in LOCATIONS if c not in explicit})
            raise DiscoveryError(
                "no platform found: give --kubeconfig (k3s: /etc/rancher/k3s/k3s.yaml), --aws for EKS, "
                "addresses (--zookeeper, --redis-sentinels, --kafka, --cadence), or --local"
            )
        endpoints = discovery.from_kubeconfig(kubeconfig, discovery.service_refs(), timeout_s=timeout)
    stack.callback(endpoints.close)
    endpoints.addresses.update(explicit)
    return endpoints


def main(argv: Sequence[str] | None = None) -> int:
    """The command; every failure ends in one line on stderr (:func:`~final_problem.clients.run_command`)."""
    # kazoo logs every dropped connection; the demos report what matters themselves.
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command(lambda: _command(argv))


def _command(argv: list[str]) -> int:
    try:
        if argv and argv[0] == "plan":
            # Its own command line: it compares renders, it finds no servers.
            from final_problem import plan

            return plan.main(argv[1:])
        if argv and argv[0] == "scale":
            from final_problem import scale

            return scale.main(argv[1:])
        if argv and argv[0] == "backup":
            from final_problem import backup

            return backup.main(argv[1:])
        if argv and argv[0] in CLIENTS:
            # The component's own command line, flags and all (its --help included).
            return _client(argv[0], argv[1:])
        args = _parser().parse_args(argv)
        if args.command in CLIENTS:
            # Options given before a client's subcommand reach it as its environment.
            for flag, variable in (*LOCATIONS.values(), ("kubeconfig", "KUBECONFIG")):
                if getattr(args, flag):
                    os.environ[variable] = getattr(args, flag)
            if args.timeout:
                os.environ[TIMEOUT_ENV] = str(args.timeout)
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
    with ExitStack() as stack:
        endpoints = find(args, stack)
        if args.command == "endpoints":
            if args.json:
                print(json.dumps({"source": endpoints.source, "addresses": endpoints.addresses,
                                  "skipped": endpoints.unreachable}, indent=2))
            else:
                print(f"found through {endpoints.source}:")
                for name, address in endpoints.addresses.items():
                    print(f"  {name:12} {address}")
                for name, reason in endpoints.unreachable.items():
                    print(f"  {name:12} ({reason})")
            return 0
        return _demo(args, endpoints)


def _demo(args: argparse.Namespace, endpoints: Endpoints) -> int:
    """Run the concepts asked for on the components that answer, skipping the others' parts;
    when none of the components they need answers, one line saying why, status 2 or 3."""
    from final_problem.tour import demos

    concepts = demos.CONCEPTS if args.concept == "all" else (args.concept,)
    needed = list(dict.fromkeys(c for concept in concepts for c in demos.DEMOS[concept].components))
    unavailable = demos.preflight(endpoints, needed, timeout_s=args.timeout or timeout_from_env())
    if len(unavailable) == len(needed):
        what = "; ".join(reason if reason.startswith(component) else f"{component}: {reason}"
                         for component, reason in unavailable.items())
        given = [c for c in needed if c in endpoints.addresses]
        error = Unreachable if given else DiscoveryError
        raise error(f"demo {args.concept}: no component it needs is there ({what})")
    say = (lambda _line: None) if args.json else print
    ctx = demos.Context(endpoints=endpoints, local=getattr(endpoints, "local", None), say=say, unavailable=unavailable,
                        timeout_s=args.timeout or timeout_from_env())
    reports = [demos.run(concept, ctx) for concept in concepts]
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
