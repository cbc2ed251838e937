"""Kubernetes control-plane benchmark: how long the platform takes to land on each profile.

For each profile, with final_problem.local.kube (the integration tests' control plane:
etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK on loopback, built
by ``make kube-binaries``), prints the seconds from start until:

- the control plane answers (API server ready, controller manager's first ServiceAccount);
- every object of ``dist/<profile>/`` is applied (server-side apply, rendered in-process);
- every pod is bound to a node (workload controllers, volume provisioning, scheduler);
- every workload reports its pods ready or done (KWOK playing the kubelets).

    .venv/bin/python -m bench.kube          (or: make bench)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from final_problem import config
from final_problem.local.kube import missing_binaries, platform

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    missing = missing_binaries()
    if missing:
        print(f"kube: missing {', '.join(missing)}: run `make kube-binaries`")
        return 1
    settings = config.from_mapping(json.loads((ROOT / "cdk.json").read_text())["context"])
    print("Kubernetes control plane on loopback: seconds from start")
    print(f"  {'profile':<8} {'ready':>6} {'applied':>8} {'bound':>6} {'running':>8}  pods")
    for profile in settings.profiles:
        with tempfile.TemporaryDirectory(prefix=f"bench-kube-{profile}-") as workdir:
            start = time.monotonic()
            with platform(Path(workdir), settings, profile) as running:
                applied = time.monotonic() - start
                ready = running.control_plane.started_s
                pods = running.wait_for_pods(bound=True)
                bound = time.monotonic() - start
                running.control_plane.wait_for("every pod running", lambda p=running: all(
                    pod["status"].get("phase") in ("Running", "Succeeded")
                    for group in p.wait_for_pods(bound=True, timeout_s=0).values() for pod in group),
                    timeout_s=120, interval_s=0.2)
                done = time.monotonic() - start
                count = sum(len(group) for group in pods.values())
                print(f"  {profile:<8} {ready:>6.1f} {applied:>8.1f} {bound:>6.1f} {done:>8.1f}  {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
