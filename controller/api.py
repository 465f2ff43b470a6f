"""The REST API: routing, bearer-token auth and JSON errors.

`Api` is framework-free: `handle(method, path, headers)` returns (status,
body).  `make_handler` adapts it to the standard library's HTTP request
parsing; the app serves it on the framework hub's StreamServer so it runs the
same under native threads and under eventlet.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
from http.server import BaseHTTPRequestHandler
from typing import Callable
from urllib.parse import parse_qs, urlsplit

LOG = logging.getLogger("iotguard.api")

Route = Callable[[dict], object]


class ApiError(Exception):
    """Raised by a route to answer with an error status and a JSON body."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def query_float(query: str, name: str) -> float | None:
    """A numeric query parameter, or None; ApiError(400) if it is not a number."""
    values = parse_qs(query, keep_blank_values=True).get(name)
    if not values:
        return None
    try:
        value = float(values[-1])
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise ApiError(400, "bad_request", f"query parameter {name!r} must be a number "
                                           f"(unix seconds), got {values[-1][:40]!r}")
    return value


class Api:
    def __init__(self, token: str, routes: dict[tuple[str, str], Route]) -> None:
        self.token = token
        self.routes = routes

    def handle(self, method: str, target: str, headers) -> tuple[int, dict]:
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        methods = {m for (m, p) in self.routes if p == path}
        if not methods:
            return 404, {"error": "not_found", "message": f"no such resource: {path}"}
        auth = headers.get("Authorization", "") or ""
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 self.token.encode()):
            return 401, {"error": "unauthorized",
                         "message": "missing or wrong 'Authorization: Bearer <token>' header"}
        if method not in methods:
            return 405, {"error": "method_not_allowed",
                         "message": f"{method} is not allowed on {path}; allowed: {sorted(methods)}"}
        try:
            return 200, self.routes[(method, path)]({"query": url.query})
        except ApiError as e:
            return e.status, {"error": e.error, "message": e.message}
        except Exception:  # noqa: BLE001 - a bug must not kill the server thread
            LOG.exception("API handler failed for %s %s", method, path)
            return 500, {"error": "internal", "message": "internal error; see the controller log"}


def make_handler(api: Api):
    class Handler(BaseHTTPRequestHandler):
        server_version = "iotguard"
        sys_version = ""
        timeout = 10  # a slow client cannot hold a handler forever

        def _serve(self) -> None:
            status, body = api.handle(self.command, self.path, self.headers)
            data = (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="iotguard"')
            if status == 405:
                allowed = body["message"].rsplit("allowed: ", 1)[-1]
                self.send_header("Allow", ", ".join(m.strip("[]' ") for m in allowed.split(",")))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

        def log_message(self, fmt, *args) -> None:
            LOG.debug("%s " + fmt, self.client_address[0], *args)

    return Handler


def serve_connection(handler_cls, sock, addr) -> None:
    """Run one HTTP connection to completion (called per accepted socket)."""
    try:
        sock.settimeout(handler_cls.timeout)
        handler_cls(sock, addr, None)
    except Exception as e:  # noqa: BLE001
        LOG.debug("API connection from %s ended: %s", addr, e)
    finally:
        try:
            sock.close()
        except OSError:
            pass


def load_or_create_token(configured: str | None, state_dir: str) -> str:
    """The configured token, else `<state_dir>/api-token` (created 0600 at first start)."""
    if configured:
        return configured
    path = os.path.join(state_dir, "api-token")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path) as f:
            token = f.read().strip()
        if len(token) < 16:
            raise ValueError(f"{path}: token is shorter than 16 characters; delete the file to regenerate it")
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token
