"""A small client for the controller's REST API (what the CLI's commands use).

Standard library only, so operators can drive a running controller from any
host with Python.  Every failure is a `ClientError` whose message says what to
do about it; proxies from the environment are ignored because the API is a
local management endpoint.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from controller.config import Config

TOKEN_ENV = "IOTGUARD_TOKEN"


class ClientError(Exception):
    """A failed API call: `status` is the HTTP status, None when no answer came."""

    def __init__(self, status: int | None, error: str, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.body = status, error, message, body

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.status} {self.error}: {self.message}"


class Client:
    def __init__(self, base_url: str, token: str, timeout: float = 10) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"API URL must look like http://HOST:PORT, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request (`body` as JSON unless None); the decoded JSON answer."""
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as r:
                return self._decode(r.status, r.read())
        except urllib.error.HTTPError as e:
            with e:
                raise self._failure(e.code, e.reason, e.read()) from None
        except urllib.error.URLError as e:
            raise self._unreachable(e.reason) from None
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from None

    def _decode(self, status: int, data: bytes) -> Any:
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise ClientError(status, "bad_response", f"the API at {self.base_url} answered with "
                                                      f"something that is not JSON: {data[:80]!r}") from None

    def _failure(self, status: int, reason: str, data: bytes) -> ClientError:
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        if isinstance(body, dict) and "error" in body:
            return ClientError(status, str(body["error"]), str(body.get("message", "")), body)
        text = data.decode("utf-8", "replace").strip()[:200]
        return ClientError(status, "http_error", f"{reason}{': ' + text if text else ''}", body)

    def _unreachable(self, reason: Any) -> ClientError:
        where = f"cannot reach the iotguard API at {self.base_url}"
        if isinstance(reason, ConnectionRefusedError):
            return ClientError(None, "unreachable", f"{where}: connection refused; is 'iotguard run' running?")
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return ClientError(None, "timeout", f"{where}: no answer within {self.timeout:g} s")
        if isinstance(reason, (http.client.RemoteDisconnected, ConnectionResetError)):
            return ClientError(None, "unreachable", f"{where}: it closed the connection without answering")
        text = getattr(reason, "strerror", None) or str(reason)
        return ClientError(None, "unreachable", f"{where}: {text}")


def api_url(config: Config, override: str | None = None) -> str:
    """`--api URL` (http:// if it names no scheme), else http://api_host:api_port
    from the config (a wildcard listen address means this host)."""
    if override:
        return override if "://" in override else "http://" + override
    host = config.api_host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{config.api_port}"
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    return f"http://[{ip}]:{config.api_port}" if ip.version == 6 else f"http://{ip}:{config.api_port}"


def resolve_token(option: str | None, config: Config, state_dir: str | None = None) -> str:
    """`--token`, else $IOTGUARD_TOKEN, else the config's api.token, else the
    token file `iotguard run` created in the state directory."""
    for token in (option, os.environ.get(TOKEN_ENV), config.api_token):
        if token and token.strip():
            return token.strip()
    path = os.path.join(state_dir or config.state_dir, "api-token")
    hint = f"pass --token or set {TOKEN_ENV}"
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except FileNotFoundError:
        raise ClientError(None, "no_token", f"no API token: {path} does not exist (start 'iotguard run' "
                                            f"once to create it, use --state-dir, or {hint})") from None
    except OSError as e:
        raise ClientError(None, "no_token", f"cannot read the API token from {path}: "
                                            f"{e.strerror or e} (run as the controller's user, or {hint})") from None
    if not token:
        raise ClientError(None, "no_token", f"the API token file {path} is empty ({hint})")
    return token
