"""The REST API: routing, bearer-token auth, JSON bodies and JSON errors.

`Api` is framework-free: `handle(method, target, headers, body)` returns
(status, body).  Routes are `(METHOD, path) -> fn(req)` with `req` =
{"query": str, "params": {name: str}, "body": parsed JSON or None}; a path
segment `{name}` matches any one non-empty segment.  A route returns the JSON
answer (200), or `(status, answer)` (e.g. 201), or raises ApiError.
`make_handler` adapts it to the standard library's HTTP request parsing; the
app serves it on the framework hub's StreamServer so it runs the same under
native threads and under eventlet.
"""

from __future__ import annotations

import hmac
import json
import math
import logging
import os
import re
import secrets
import socket
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

LOG = logging.getLogger("iotguard.api")

Route = Callable[[dict], object]
MAX_BODY = 64 * 1024               # bytes; requests are small commands, never uploads
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DIGITS = re.compile(r"[0-9]+")


class ApiError(Exception):
    """Raised by a route to answer with an error status and a JSON body.

    Keyword arguments become extra body fields (e.g. `problems=[...]`)."""

    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.extra = status, error, message, extra

    def body(self) -> dict:
        return {**self.extra, "error": self.error, "message": self.message}


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


# ------------------------------------------------------------------ request bodies

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean",
               list: "list", dict: "object", type(None): "null"}


def _json_type(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _is(value: Any, types: tuple[type, ...]) -> bool:
    """isinstance for JSON values: bool is not a number, an int is a float."""
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _expected(types: tuple[type, ...]) -> str:
    names = [_TYPE_NAMES.get(t, t.__name__) for t in types if not (t is int and float in types)]
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return text if text.startswith("null") else ("an " if text[0] in "aeiou" else "a ") + text


def body_fields(body: Any, required: dict[str, type | tuple[type, ...]],
                optional: dict[str, type | tuple[type, ...]] | None = None) -> dict:
    """Check a JSON object body field by field; ApiError(400) naming the first bad field.

    No body (None) counts as `{}`.  An optional field that is absent or null is
    None in the result, so callers can index every declared field."""
    optional = optional or {}
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", f"request body must be a JSON object, got {_json_type(body)}")
    allowed = {**required, **optional}
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise ApiError(400, "bad_request",
                       f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed)) or '(none)'}")
    missing = [k for k in required if k not in body]
    if missing:
        raise ApiError(400, "bad_request", "missing required field" + ("s " if len(missing) > 1 else " ")
                       + ", ".join(repr(k) for k in missing))
    out = {}
    for name, types in allowed.items():
        value = body.get(name)
        types = types if isinstance(types, tuple) else (types,)
        if value is None and name in optional:
            out[name] = None
        elif not _is(value, types):
            raise ApiError(400, "bad_request",
                           f"field {name!r} must be {_expected(types)}, got {_json_type(value)}")
        else:
            out[name] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range (finite numbers only)")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"field {key[:60]!r} is given twice")
        out[key] = value
    return out


def parse_body(method: str, headers, body: bytes) -> Any:
    """The request's JSON body, or None when the method takes none or it is empty."""
    if len(body) > MAX_BODY:
        raise ApiError(413, "too_large", f"request body is {len(body)} bytes; the limit is {MAX_BODY}")
    if method not in BODY_METHODS or not body:
        return None
    ctype = (headers.get("Content-Type") or "").partition(";")[0].strip().lower()
    if ctype and ctype != "application/json":
        raise ApiError(415, "unsupported_media_type", f"request body must be JSON with 'Content-Type: "
                                                      f"application/json', got {ctype[:60]!r}")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constants, parse_float=_finite,
                          object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as e:
        raise ApiError(400, "bad_request", f"request body is not UTF-8: {e.reason} at byte {e.start}") from None
    except RecursionError:
        raise ApiError(400, "bad_request", "request body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError names line, column and char position
        raise ApiError(400, "bad_request", f"request body is not valid JSON: {e}") from None


# ------------------------------------------------------------------ routing


def _segments(path: str) -> tuple[tuple[bool, str], ...]:
    """A route path as (is_param, literal-or-name) per segment."""
    out = []
    for seg in path.split("/"):
        m = _PARAM.fullmatch(seg)
        if m is None and ("{" in seg or "}" in seg):
            raise ValueError(f"route {path!r}: a parameter must be a whole segment like {{name}}")
        out.append((True, m.group(1)) if m else (False, seg))
    names = [s for is_param, s in out if is_param]
    if len(names) != len(set(names)):
        raise ValueError(f"route {path!r}: duplicate parameter name")
    return tuple(out)


class Api:
    def __init__(self, token: str, routes: dict[tuple[str, str], Route]) -> None:
        self.token = token
        self.routes = routes
        self._compiled = [(m, _segments(p), fn) for (m, p), fn in routes.items()]

    def _match(self, path: str) -> dict[str, tuple[Route, dict[str, str]]]:
        """method -> (route, params) for `path`; per method the most specific route
        wins: a literal segment beats a {param}, leftmost segment first."""
        parts = path.split("/")
        best: dict[str, tuple[tuple[bool, ...], Route, dict[str, str]]] = {}
        for method, segs, fn in self._compiled:
            if len(segs) != len(parts):
                continue
            params: dict[str, str] = {}
            for (is_param, text), part in zip(segs, parts):
                if not is_param and text != part or is_param and not part:
                    break
                if is_param:
                    params[text] = unquote(part)
            else:
                rank = tuple(is_param for is_param, _ in segs)
                if method not in best or rank < best[method][0]:
                    best[method] = (rank, fn, params)
        return {m: (fn, params) for m, (_, fn, params) in best.items()}

    def _resolve(self, method: str, path: str, headers) -> tuple[int, dict] | tuple[Route, dict]:
        """(route, params), or the (status, body) of a 404, 401 or 405 - in that order."""
        found = self._match(path)
        if not found:
            return 404, {"error": "not_found", "message": f"no such resource: {path}"}
        auth = headers.get("Authorization", "") or ""
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 self.token.encode()):
            return 401, {"error": "unauthorized",
                         "message": "missing or wrong 'Authorization: Bearer <token>' header"}
        if method not in found:
            return 405, {"error": "method_not_allowed",
                         "message": f"{method} is not allowed on {path}; allowed: {sorted(found)}"}
        return found[method]

    def check(self, method: str, target: str, headers) -> tuple[int, dict] | None:
        """The 404/401/405 answer for a request, or None: lets the HTTP handler refuse
        before it reads a body."""
        resolved = self._resolve(method, urlsplit(target).path.rstrip("/") or "/", headers)
        return resolved if isinstance(resolved[0], int) else None  # type: ignore[return-value]

    def handle(self, method: str, target: str, headers, body: bytes = b"") -> tuple[int, Any]:
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        resolved = self._resolve(method, path, headers)
        if isinstance(resolved[0], int):
            return resolved  # type: ignore[return-value]
        route, params = resolved
        try:
            req = {"query": url.query, "params": params, "body": parse_body(method, headers, body)}
            result = route(req)  # type: ignore[operator]
            if isinstance(result, tuple) and len(result) == 2 and type(result[0]) is int:
                if not 200 <= result[0] <= 599:
                    raise ValueError(f"route returned HTTP status {result[0]}")
                return result
            return 200, result
        except ApiError as e:
            return e.status, e.body()
        except Exception:  # noqa: BLE001 - a bug must not kill the server thread
            LOG.exception("API handler failed for %s %s", method, path)
            return 500, {"error": "internal", "message": "internal error; see the controller log"}


# ------------------------------------------------------------------ HTTP adapter


def _content_length(headers) -> tuple[int, tuple[int, dict] | None]:
    """The body length, or the error answer when the request cannot be framed."""
    if headers.get("Transfer-Encoding") is not None:
        return 0, (411, {"error": "length_required",
                         "message": "chunked transfer encoding is not supported; send a Content-Length"})
    values = {v.strip() for v in headers.get_all("Content-Length") or []}
    if not values:
        return 0, None
    value = values.pop()
    if values or not _DIGITS.fullmatch(value):
        return 0, (400, {"error": "bad_request",
                         "message": f"Content-Length must be one non-negative integer, got {value[:20]!r}"})
    return int(value), None


_HTTP_ERRORS = {400: "bad_request", 414: "uri_too_long", 431: "headers_too_large", 501: "not_implemented",
                505: "http_version_not_supported"}


def make_handler(api: Api):
    class Handler(BaseHTTPRequestHandler):
        server_version = "iotguard"
        sys_version = ""
        timeout = 10  # a slow client cannot hold a handler forever

        def _serve(self) -> None:
            length, error = _content_length(self.headers)
            error = error or api.check(self.command, self.path, self.headers)
            if error is None and length > MAX_BODY:
                error = 413, {"error": "too_large",
                              "message": f"request body is {length} bytes; the limit is {MAX_BODY}"}
            if error is not None:
                self._reply(*error)
                if length or self.headers.get("Transfer-Encoding") is not None:
                    self._linger()
                return
            body = self.rfile.read(length) if length else b""
            if len(body) < length:
                self._reply(400, {"error": "bad_request",
                                  "message": f"request body ended after {len(body)} of {length} bytes"})
                return
            self._reply(*api.handle(self.command, self.path, self.headers, body))

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """Errors of the HTTP layer itself (a bad request line, 414, 431, 501, 505)
            answer in JSON like every other error, never in the server's HTML."""
            self.close_connection = True
            if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
                self.request_version = "HTTP/1.0"   # a request we could not parse still gets headers
            try:
                phrase = HTTPStatus(code).phrase
            except ValueError:
                phrase = "error"
            error = _HTTP_ERRORS.get(code, phrase.lower().replace(" ", "_").replace("-", "_"))
            try:
                self._reply(code, {"error": error, "message": message or phrase})
            except OSError:
                pass

        def _reply(self, status: int, body: Any) -> None:
            data = b"" if status == 204 else (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="iotguard"')
            if status == 405:
                allowed = body["message"].rsplit("allowed: ", 1)[-1]
                self.send_header("Allow", ", ".join(m.strip("[]' ") for m in allowed.split(",")))
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
                self.wfile.write(data)

        def _linger(self) -> None:
            """Drain (a bounded amount of) the unread body before closing: closing
            with unread input sends a TCP reset that can destroy our answer."""
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(1)
                for _ in range(16):
                    if not self.rfile.read1(MAX_BODY):
                        break
            except OSError:
                pass

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

        def log_message(self, fmt, *args) -> None:
            LOG.debug("%s " + fmt, self.client_address[0], *args)

    return Handler


LINGER_BYTES = 256 * 1024          # unread request bytes discarded before closing
LINGER_SECONDS = 1.0               # ... for at most this long


def serve_connection(handler_cls, sock, addr) -> None:
    """Run one HTTP connection to completion (called per accepted socket)."""
    try:
        sock.settimeout(handler_cls.timeout)
        handler_cls(sock, addr, None)
    except Exception as e:  # noqa: BLE001
        LOG.debug("API connection from %s ended: %s", addr, e)
    finally:
        _linger_close(sock)


def _linger_close(sock) -> None:
    """Close after the answer has gone: stop sending, then read and drop what the client
    still sends (bounded in bytes and time).  Closing with unread input makes the kernel
    reset the connection, and a client still sending a 70 KB URI gets the reset instead of
    our 414 (seen in CI)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline, left = time.monotonic() + LINGER_SECONDS, LINGER_BYTES
        while left > 0:
            wait = deadline - time.monotonic()
            if wait <= 0:
                break
            sock.settimeout(wait)
            chunk = sock.recv(min(65536, left))
            if not chunk:
                break                       # the client closed too: nothing to reset
            left -= len(chunk)
    except OSError:
        pass
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
    if os.path.lexists(path):
        return _read_token(path)
    # Written in full to a private file, then linked into place: the link is atomic and
    # fails if the file exists, so no reader (a client, a second start) ever sees it empty.
    token = secrets.token_urlsafe(32)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.link(tmp, path)
    except FileExistsError:
        return _read_token(path)      # another start won the race: its token it is
    finally:
        os.unlink(tmp)
    return token


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read(4096).strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the API token file is not UTF-8 text; delete it to regenerate it, "
                         "or set api.token in the config") from None
    if len(token) < 16:
        raise ValueError(f"{path}: token is shorter than 16 characters; delete the file to regenerate it")
    return token
