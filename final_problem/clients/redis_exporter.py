"""Serve a Redis server's ``INFO`` as Prometheus metrics; standard library only.

No official image ships a Redis exporter, so the chart runs this script in the pinned
official ``python`` image as a sidecar. It logs in as the ``metrics`` ACL user (allowed
PING and INFO only), reads ``INFO`` on every scrape and exposes each numeric field as a
gauge named ``redis_<field>``, plus ``redis_up`` and ``redis_role_primary``.

Environment: ``REDIS_PORT`` (default 6379), ``REDIS_METRICS_PASSWORD``, ``METRICS_PORT``
(default 9121), ``METRICS_BIND`` (default ``0.0.0.0``; the NetworkPolicy decides who
reaches it).
Sources: Redis docs, "INFO" and "Redis serialization protocol specification";
Prometheus docs, "Exposition formats" (text format 0.0.4).
"""

from __future__ import annotations

import os
import re
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USER = "metrics"
_NAME = re.compile(r"[^a-zA-Z0-9_]")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def _command(sock: socket.socket, *args: str) -> bytes:
    """Send one command as a RESP array and return the raw reply."""
    out = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    sock.sendall(out)
    reader = sock.makefile("rb")
    line = reader.readline()
    if line.startswith(b"-"):
        raise RuntimeError(line[1:].strip().decode(errors="replace"))
    if line.startswith(b"$"):
        length = int(line[1:])
        return reader.read(length + 2)[:-2] if length >= 0 else b""
    return line[1:].strip()


def read_info(*, host: str, port: int, password: str, timeout_s: float = 3) -> dict[str, str]:
    """``INFO`` of the server as field -> value (keyspace lines are flattened)."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        _command(sock, "AUTH", USER, password)
        text = _command(sock, "INFO").decode(errors="replace")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        if key.startswith("db") and "=" in value:  # db0:keys=1,expires=0,avg_ttl=0
            for part in value.split(","):
                sub, _, number = part.partition("=")
                fields[f"{key}_{sub}"] = number
        else:
            fields[key] = value
    return fields


def to_prometheus(fields: dict[str, str] | None) -> str:
    """Prometheus text exposition of an INFO mapping (``None``: the server is down)."""
    if fields is None:
        return "redis_up 0\n"
    lines = ["redis_up 1", f"redis_role_primary {1 if fields.get('role') == 'master' else 0}"]
    if "master_link_status" in fields:
        lines.append(f"redis_master_link_up {1 if fields['master_link_status'] == 'up' else 0}")
    for key in sorted(fields):
        value = fields[key]
        if _NUMBER.match(value):
            lines.append(f"redis_{_NAME.sub('_', key)} {value}")
    return "\n".join(lines) + "\n"


def serve(*, redis_port: int, password: str, bind: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server answering ``/metrics`` (scrape) and ``/healthz`` (the exporter runs)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/healthz":
                body, status = b"ok\n", 200
            elif self.path == "/metrics":
                try:
                    fields: dict[str, str] | None = read_info(host="127.0.0.1", port=redis_port, password=password)
                except (OSError, RuntimeError):
                    fields = None
                body, status = to_prometheus(fields).encode(), 200
            else:
                body, status = b"not found\n", 404
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
            return

    return ThreadingHTTPServer((bind, port), Handler)


def main() -> int:
    password = os.environ.get("REDIS_METRICS_PASSWORD")
    if not password:
        print("REDIS_METRICS_PASSWORD is not set", file=sys.stderr)
        return 2
    server = serve(
        redis_port=int(os.environ.get("REDIS_PORT", "6379")),
        password=password,
        bind=os.environ.get("METRICS_BIND", "0.0.0.0"),
        port=int(os.environ.get("METRICS_PORT", "9121")),
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
