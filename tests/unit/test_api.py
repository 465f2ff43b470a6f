import json
import os
import socket
import stat
import threading
import urllib.request
from urllib.error import HTTPError

import pytest

from controller.api import Api, load_or_create_token, make_handler, serve_connection

TOKEN = "t" * 32


def api():
    return Api(TOKEN, {("GET", "/api/v1/health"): lambda q: {"status": "ok", "q": q["query"]}})


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def test_routes_and_errors():
    a = api()
    assert a.handle("GET", "/api/v1/health?x=1", auth()) == (200, {"status": "ok", "q": "x=1"})
    status, body = a.handle("GET", "/api/v1/health", {})
    assert status == 401 and body["error"] == "unauthorized"
    assert a.handle("GET", "/api/v1/health", auth("wrong" * 8))[0] == 401
    assert a.handle("GET", "/api/v1/health", {"Authorization": TOKEN})[0] == 401
    status, body = a.handle("DELETE", "/api/v1/health", auth())
    assert status == 405 and "DELETE is not allowed" in body["message"]
    status, body = a.handle("GET", "/api/v1/nope", auth())
    assert status == 404 and body == {"error": "not_found", "message": "no such resource: /api/v1/nope"}


def test_handler_bug_becomes_500_json():
    a = Api(TOKEN, {("GET", "/boom"): lambda q: 1 / 0})
    status, body = a.handle("GET", "/boom", auth())
    assert status == 500 and body["error"] == "internal"


def test_over_real_http():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    handler = make_handler(api())

    def loop():
        for _ in range(3):
            s, addr = srv.accept()
            serve_connection(handler, s, addr)

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}/api/v1/health"
    with urllib.request.urlopen(urllib.request.Request(url, headers=auth()), timeout=5) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        assert json.load(r)["status"] == "ok"
    with pytest.raises(HTTPError) as e:
        urllib.request.urlopen(url, timeout=5)
    assert e.value.code == 401 and json.load(e.value)["error"] == "unauthorized"
    with pytest.raises(HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(url, method="POST", headers=auth()), timeout=5)
    assert e.value.code == 405 and e.value.headers["Allow"] == "GET"
    th.join(5)
    srv.close()


def test_token_generated_0600_then_reused(tmp_path):
    tok = load_or_create_token(None, str(tmp_path))
    path = tmp_path / "api-token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(tok) >= 32
    assert load_or_create_token(None, str(tmp_path)) == tok
    assert load_or_create_token("configured-token-123", str(tmp_path)) == "configured-token-123"


def test_short_token_file_is_an_error(tmp_path):
    (tmp_path / "api-token").write_text("abc\n")
    with pytest.raises(ValueError, match="shorter than 16"):
        load_or_create_token(None, str(tmp_path))


def test_query_errors_are_400_json():
    from controller.api import ApiError, query_float

    def alerts(q):
        return {"since": query_float(q["query"], "since")}
    a = Api(TOKEN, {("GET", "/api/v1/alerts"): alerts})
    assert a.handle("GET", "/api/v1/alerts?since=12.5", auth()) == (200, {"since": 12.5})
    assert a.handle("GET", "/api/v1/alerts", auth()) == (200, {"since": None})
    status, body = a.handle("GET", "/api/v1/alerts?since=yesterday", auth())
    assert status == 400 and body["error"] == "bad_request" and "'since'" in body["message"]
    assert a.handle("GET", "/api/v1/alerts?since=nan", auth())[0] == 400
    assert isinstance(ApiError(400, "x", "y"), Exception)
