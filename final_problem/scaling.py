"""Membership changes: the steps that grow or shrink a quorum on a live platform.

A setting that is a quorum's membership (ZooKeeper's members, Kafka's controllers and
brokers, Redis's replicas and Sentinels, Consul's servers) cannot change by a deploy alone:
a deploy renders the new member list and rolls every pod onto it, while each system wants
members added and removed one at a time, data moved first, and the quorum kept at every
step. The component that owns such a setting registers a **procedure** for it with
:func:`membership`: a function of the deployed settings, the new ones and the namespace
that returns the :class:`Step` list, or raises :class:`Refused` (one line) for a change no
procedure makes safe (a step below a quorum, a broker still holding partitions).

``final-problem scale COMPONENT.SETTING=VALUE`` prints the steps and, with ``--apply``,
runs them against the cluster of the kubeconfig (:class:`KubectlRunner`); the tests run
the same steps on real servers (a runner over :mod:`final_problem.local.rollout`). The
plan names the command in the setting's change rule (:func:`membership_change`). Steps:

- :class:`Exec`: a command in a container of a pod (a membership command, a script the
  chart renders); its standard output is kept for the steps after it;
- :class:`Scale`: a StatefulSet's ``replicas`` (the controller adds or deletes pods,
  the highest ordinal first, each deletion a full termination with its preStop);
- :class:`WaitReady`: until that many pods of the workload are Ready.

The core knows no component: each registers its procedures when its module is imported.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, Union

from final_problem.changes import Verdict, procedure


class Refused(Exception):
    """A membership change no procedure makes safe; the message is the one line to print."""


#: The exit status of a step's command that refuses (a check finding the change unsafe now,
#: its one line the last it prints): ``kubectl exec`` passes it on.
REFUSED_STATUS = 3


class StepFailed(Exception):
    """A step failed on the running platform; the message is one line (what, why, fix)."""


@dataclass(frozen=True)
class Exec:
    """Run ``command`` in container ``container`` of pod ``pod``; ``why``: one line."""

    pod: str
    container: str
    command: tuple[str, ...]
    why: str
    namespace: str = ""

    def describe(self) -> str:
        return f"in {self.pod}/{self.container}: {' '.join(self.command)}  # {self.why}"


@dataclass(frozen=True)
class Scale:
    """Set StatefulSet ``name``'s ``replicas``."""

    name: str
    replicas: int
    why: str
    namespace: str = ""

    def describe(self) -> str:
        return f"scale statefulset/{self.name} to {self.replicas}  # {self.why}"


@dataclass(frozen=True)
class WaitReady:
    """Wait until ``replicas`` pods of StatefulSet ``name`` are Ready (at most ``timeout_s``)."""

    name: str
    replicas: int
    why: str
    namespace: str = ""
    timeout_s: float = 600

    def describe(self) -> str:
        return f"wait for {self.replicas} ready pods of statefulset/{self.name}  # {self.why}"


Step = Union[Exec, Scale, WaitReady]

#: A procedure: (deployed settings, new settings, namespace) -> its steps.
Procedure = Callable[[object, object, str], list[Step]]

PROCEDURES: dict[tuple[str, str], Procedure] = {}


def membership(component: str, setting: str) -> Callable[[Procedure], Procedure]:
    """Register the procedure that changes ``component``'s ``setting`` on a live platform."""

    def register(fn: Procedure) -> Procedure:
        PROCEDURES[(component, setting)] = fn
        return fn

    return register


def membership_change(component: str, setting: str, reason: str) -> Verdict:
    """The change rule of a membership setting: a procedure, run by ``final-problem scale``."""
    return procedure(reason, f"run `final-problem scale {component}.{setting}={{new}} --apply` before the deploy "
                             f"(`final-problem scale {component}.{setting}={{new}}` prints its steps)")


def steps_for(component: str, setting: str, old: object, new: object, namespace: str) -> list[Step]:
    """The steps that take ``component``'s ``setting`` from the deployed settings ``old`` to
    ``new``; :class:`Refused` when none is safe, ``KeyError`` for a setting without one."""
    return PROCEDURES[(component, setting)](old, new, namespace)


class Runner(Protocol):
    """Runs steps on a platform: a cluster through kubectl, or real servers in the tests."""

    def exec(self, step: Exec) -> str: ...

    def scale(self, step: Scale) -> None: ...

    def wait_ready(self, step: WaitReady) -> None: ...


def run(steps: Sequence[Step], runner: Runner, *, echo: Callable[[str], None] = lambda _: None) -> list[str]:
    """Run ``steps`` in order; the output of each :class:`Exec` (empty for the others)."""
    outputs = []
    for number, step in enumerate(steps, 1):
        echo(f"[{number}/{len(steps)}] {step.describe()}")
        if isinstance(step, Exec):
            outputs.append(runner.exec(step))
        elif isinstance(step, Scale):
            runner.scale(step)
            outputs.append("")
        else:
            runner.wait_ready(step)
            outputs.append("")
    return outputs


class KubectlRunner:
    """Steps run through ``kubectl`` against the cluster of ``kubeconfig``."""

    def __init__(self, kubeconfig: str | None = None, kubectl: str = "kubectl") -> None:
        self.base = [kubectl, *(["--kubeconfig", kubeconfig] if kubeconfig else [])]

    def _kubectl(self, args: list[str], what: str, timeout_s: float = 900) -> str:
        try:
            done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout_s)
        except FileNotFoundError as e:
            raise StepFailed(f"{what}: kubectl not found; install it or put it on PATH") from e
        except subprocess.TimeoutExpired as e:
            raise StepFailed(f"{what}: no answer within {timeout_s:.0f} s; check the cluster, then run the command "
                             "again (every step is safe to repeat)") from e
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
            if done.returncode == REFUSED_STATUS and args[0] == "exec":
                raise Refused(last)
            raise StepFailed(f"{what}: {last}; fix it, then run the command again (every step is safe to repeat)")
        return done.stdout

    def exec(self, step: Exec) -> str:
        return self._kubectl(["exec", "-n", step.namespace, step.pod, "-c", step.container, "--", *step.command],
                             f"in {step.pod}")

    def scale(self, step: Scale) -> None:
        self._kubectl(["scale", "-n", step.namespace, f"statefulset/{step.name}", f"--replicas={step.replicas}"],
                      f"scaling {step.name}")

    def wait_ready(self, step: WaitReady) -> None:
        deadline = time.monotonic() + step.timeout_s
        while True:
            ready = self._kubectl(["get", "-n", step.namespace, f"statefulset/{step.name}",
                                   "-o", "jsonpath={.status.readyReplicas}"], f"reading {step.name}")
            if int(ready or 0) >= step.replicas:
                return
            if time.monotonic() > deadline:
                raise StepFailed(f"{step.name}: {ready or 0} of {step.replicas} pods Ready after {step.timeout_s:.0f} s; "
                                 "see kubectl describe, then run the command again")
            time.sleep(5)

    def annotate_namespace(self, namespace: str, key: str, value: str) -> None:
        self._kubectl(["annotate", "namespace", namespace, f"{key}={value}", "--overwrite"],
                      f"recording the change on namespace {namespace}")
