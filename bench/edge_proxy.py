"""The edge Envoy's cost: latency it adds, and requests per second per core.

Starts one local HTTP backend (its own process) and the edge Envoy with the chart's
configuration (final_problem.local.envoy, one worker thread), then drives the same
closed-loop load generator (keep-alive HTTP/1.1, sequential requests) first directly at
the backend, then through Envoy, and prints p50/p99 of each and the difference. Requests
per second per core is the number of requests Envoy proxied divided by the CPU time its
process used (user + system, /proc/PID/stat), so it does not depend on how fast the
Python load generator is.

    .venv/bin/python bench/edge_proxy.py [--requests 5000]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from final_problem.charts.envoy import EnvoyProps, chart_config
from final_problem.local import LOOPBACK, free_ports, limits, wait_for
from final_problem.local.envoy import LocalEdge, envoy_version
from final_problem.profiles import EKS


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def run_load(port: int, requests: int) -> tuple[list[float], float]:
    """Sequential GETs on one keep-alive connection: latencies (ms) and elapsed seconds."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    samples = []
    for _ in range(50):  # warm up the connection and both processes
        conn.request("GET", "/bench")
        conn.getresponse().read()
    start = time.perf_counter()
    for _ in range(requests):
        t0 = time.perf_counter()
        conn.request("GET", "/bench")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
        samples.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - start
    conn.close()
    return samples, elapsed


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    (port,) = free_ports(1)
    backend = subprocess.Popen([sys.executable, "-m", "final_problem.local.envoy", str(port)])
    try:
        import socket

        wait_for("the backend", lambda: socket.create_connection((LOOPBACK, port), timeout=1).close() or True,
                 timeout_s=15, retry_on=(OSError,))
        options, routes = chart_config(EnvoyProps.for_profile(EKS), ("base", "demo"))
        with tempfile.TemporaryDirectory(prefix="envoy-bench-") as tmp, LocalEdge(
            workdir=Path(tmp), routes=routes, backends={"demo": [(LOOPBACK, port)]}, options=options, profile=EKS,
        ) as edge:
            edge.wait_healthy("demo", 1)
            direct, direct_s = run_load(port, args.requests)
            assert edge.proc is not None
            cpu_before = cpu_seconds(edge.proc.pid)
            proxied, proxied_s = run_load(edge.options.port, args.requests)
            cpu = cpu_seconds(edge.proc.pid) - cpu_before
            usage = limits.report("envoy eks", edge.groups)
        print(f"envoy {envoy_version()} edge config (1 worker), {args.requests} sequential keep-alive GETs each, "
              f"on {os.cpu_count()} shared cores")
        for name, samples, elapsed in (("direct", direct, direct_s), ("via envoy", proxied, proxied_s)):
            print(f"  {name:9s} p50 {percentile(samples, 50):6.3f} ms  p99 {percentile(samples, 99):6.3f} ms  "
                  f"{len(samples) / elapsed:7.0f} req/s")
        print(f"  added     p50 {percentile(proxied, 50) - percentile(direct, 50):6.3f} ms  "
              f"p99 {percentile(proxied, 99) - percentile(direct, 99):6.3f} ms")
        per_core = args.requests / cpu if cpu > 0 else float("inf")
        print(f"  envoy used {cpu:.2f} CPU-s for {args.requests} requests: {per_core:,.0f} requests/s per core")
        for line in usage:
            print(f"  {line}")
    finally:
        backend.terminate()
        backend.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
