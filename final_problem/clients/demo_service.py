"""The demo service: reached through the edge Envoy, it calls Redis through its mesh sidecar.

Standard library only (the official ``python`` image runs it). ``GET /`` connects to
127.0.0.1:``REDIS_UPSTREAM_PORT`` (the consul-dataplane sidecar's upstream to the
``redis`` mesh service, mTLS to Redis's own sidecar, allowed by an intention), logs in as
Redis's ``app`` ACL user and answers ``PING`` and the value of ``demo:greeting`` (reads:
the upstream may be any Redis member, primary or replica). ``GET /healthz`` answers 200
while the process serves; it does not call Redis, so a Redis outage never takes the demo
out of the edge's rotation — ``GET /`` reports it as 502 instead.

The ``app`` password is read once at start from Secret ``redis/redis-auth`` through the
Kubernetes API (the demo's service account may ``get`` that one Secret), or from
``REDIS_PASSWORD`` when set (tests). Environment: ``PORT`` (8080), ``REDIS_UPSTREAM_PORT``,
``DRAIN_SECONDS``.

SIGTERM (a pod being replaced) starts a drain: ``/healthz`` answers 503 so the edge's
active health checks take the pod out of rotation, every other request is still served
(with ``Connection: close``, so the edge's pooled connections end cleanly), and after
``DRAIN_SECONDS`` the server stops accepting, finishes the requests in flight and exits 0,
well within the pod's grace period. Without it, Python as PID 1 ignores SIGTERM and is
SIGKILLed at the end of the grace period while the edge may still route to it (issue 22).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Seconds a draining pod keeps serving. The edge marks a host unhealthy after 2 failed
#: checks 5 s apart, each up to 1 s, plus 0.1 s jitter (renderers/envoy.py EdgeOptions):
#: at most 11.1 s; 15 s leaves room and fits the default 30 s grace period (Kubernetes
#: docs, "Pod Lifecycle", termination of Pods).
DRAIN_SECONDS = 15.0


def _command(sock: socket.socket, reader, *args: str) -> str:  # type: ignore[no-untyped-def]
    out = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    sock.sendall(out)
    line = reader.readline()
    if line.startswith(b"-"):
        raise RuntimeError(line[1:].strip().decode(errors="replace"))
    if line.startswith(b"$"):
        length = int(line[1:])
        return reader.read(length + 2)[:-2].decode(errors="replace") if length >= 0 else ""
    return line[1:].strip().decode(errors="replace")


def call_redis(port: int, password: str) -> dict[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        reader = sock.makefile("rb")
        _command(sock, reader, "AUTH", "app", password)
        return {"ping": _command(sock, reader, "PING"), "greeting": _command(sock, reader, "GET", "demo:greeting")}


def redis_password() -> str:
    if "REDIS_PASSWORD" in os.environ:
        return os.environ["REDIS_PASSWORD"]
    sa = os.environ.get("SA_DIR", SA_DIR)
    token = Path(sa, "token").read_text().strip()
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    request = urllib.request.Request(f"https://{host}:{port}/api/v1/namespaces/redis/secrets/redis-auth",
                                     headers={"Authorization": f"Bearer {token}"})
    context = ssl.create_default_context(cafile=os.path.join(sa, "ca.crt"))
    with urllib.request.urlopen(request, context=context, timeout=15) as response:
        return base64.b64decode(json.loads(response.read())["data"]["app-password"]).decode()


def main() -> int:
    port = int(os.environ.get("PORT", "8080"))
    upstream = int(os.environ.get("REDIS_UPSTREAM_PORT", "16379"))
    drain_s = float(os.environ.get("DRAIN_SECONDS", DRAIN_SECONDS))
    password = redis_password()
    draining = threading.Event()
    in_flight = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802
            with lock:
                in_flight[0] += 1
            try:
                self._get()
            finally:
                with lock:
                    in_flight[0] -= 1

        def _get(self) -> None:
            if self.path == "/healthz":
                if draining.is_set():
                    self._send(503, {"status": "draining"})
                else:
                    self._send(200, {"status": "ok"})
                return
            try:
                self._send(200, {"service": "demo", "redis": call_redis(upstream, password)})
            except (OSError, RuntimeError) as e:
                self._send(502, {"service": "demo", "error": f"redis: {e}"})

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if draining.is_set():
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True

    def drain(*_: object) -> None:
        if draining.is_set():
            return
        draining.set()
        print(json.dumps({"msg": "SIGTERM: draining", "seconds": drain_s}), flush=True)
        # shutdown() waits for serve_forever, which runs in this (the main) thread.
        threading.Timer(drain_s, server.shutdown).start()

    signal.signal(signal.SIGTERM, drain)
    print(json.dumps({"msg": "demo listening", "port": port, "redis_upstream": upstream}), flush=True)
    server.serve_forever()
    server.server_close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock:
            if in_flight[0] == 0:
                break
        time.sleep(0.05)
    print(json.dumps({"msg": "drained, exiting"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
