import json
import os
import socket
import stat
import threading
import urllib.request
from urllib.error import HTTPError

import pytest

from controller.api.rest import MAX_BODY, Api, load_or_create_token, make_handler, serve_connection

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


def test_the_token_file_appears_whole_and_a_concurrent_start_gets_the_winners_token(tmp_path, monkeypatch):
    path = tmp_path / "api-token"
    seen = []
    real_link = os.link

    def link(src, dst):
        seen.append(open(src).read())          # what a reader finds the instant it appears
        real_link(src, dst)
    monkeypatch.setattr(os, "link", link)
    tok = load_or_create_token(None, str(tmp_path))
    assert seen == [tok + "\n"] and path.read_text() == tok + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api-token"]      # no temporary left

    other = tmp_path / "other"
    other.mkdir()

    def lost(src, dst):                        # another start linked its token first
        with open(dst, "w") as f:
            f.write("the-other-start-won-the-race\n")
        raise FileExistsError(dst)
    monkeypatch.setattr(os, "link", lost)
    assert load_or_create_token(None, str(other)) == "the-other-start-won-the-race"
    assert sorted(p.name for p in other.iterdir()) == ["api-token"]


def test_short_token_file_is_an_error(tmp_path):
    (tmp_path / "api-token").write_text("abc\n")
    with pytest.raises(ValueError, match="shorter than 16"):
        load_or_create_token(None, str(tmp_path))


def test_query_errors_are_400_json():
    from controller.api.rest import ApiError, query_float

    def alerts(q):
        return {"since": query_float(q["query"], "since")}
    a = Api(TOKEN, {("GET", "/api/v1/alerts"): alerts})
    assert a.handle("GET", "/api/v1/alerts?since=12.5", auth()) == (200, {"since": 12.5})
    assert a.handle("GET", "/api/v1/alerts", auth()) == (200, {"since": None})
    status, body = a.handle("GET", "/api/v1/alerts?since=yesterday", auth())
    assert status == 400 and body["error"] == "bad_request" and "'since'" in body["message"]
    assert a.handle("GET", "/api/v1/alerts?since=nan", auth())[0] == 400
    assert isinstance(ApiError(400, "x", "y"), Exception)


# ------------------------------------------------------------------ path parameters and bodies

def echo(req):
    return {"params": req["params"], "body": req["body"], "query": req["query"]}


def rest_api(**extra):
    routes = {
        ("GET", "/api/v1/responses"): echo,
        ("POST", "/api/v1/responses"): lambda req: (201, echo(req)),
        ("GET", "/api/v1/responses/{id}"): echo,
        ("DELETE", "/api/v1/responses/{id}"): echo,
        ("GET", "/api/v1/responses/active"): lambda req: {"exact": True},
        ("GET", "/api/v1/{kind}/{id}/rules"): echo,
        ("GET", "/api/v1/devices/{id}/{what}"): echo,
    }
    routes.update(extra)
    return Api(TOKEN, routes)


def test_path_parameters_match_per_segment_and_are_decoded():
    a = rest_api()
    assert a.handle("DELETE", "/api/v1/responses/42", auth()) == \
        (200, {"params": {"id": "42"}, "body": None, "query": ""})
    assert a.handle("GET", "/api/v1/responses/a%20b/?x=1", auth())[1]["params"] == {"id": "a b"}
    assert a.handle("GET", "/api/v1/responses", auth())[1]["params"] == {}
    assert a.handle("GET", "/api/v1/alerts/7/rules", auth())[1]["params"] == {"kind": "alerts", "id": "7"}


def test_exact_and_literal_segments_win_over_parameters():
    a = rest_api()
    assert a.handle("GET", "/api/v1/responses/active", auth()) == (200, {"exact": True})
    # /devices/{id}/{what} is more specific than /{kind}/{id}/rules at the leftmost difference
    assert a.handle("GET", "/api/v1/devices/3/rules", auth())[1]["params"] == {"id": "3", "what": "rules"}


def test_path_parameter_404_401_405():
    a = rest_api()
    for target in ("/api/v1/responses/1/2", "/api/v1/responses//x", "/api/v2/responses/1"):
        assert a.handle("GET", target, auth())[0] == 404, target
    assert a.handle("DELETE", "/api/v1/responses/1", {})[0] == 401
    status, body = a.handle("PUT", "/api/v1/responses/1", auth())
    assert status == 405 and body["message"].endswith("allowed: ['DELETE', 'GET']")
    # the Allow list is every method of every route matching the path
    status, body = a.handle("POST", "/api/v1/responses/active", auth())
    assert status == 405 and body["message"].endswith("allowed: ['DELETE', 'GET']")


@pytest.mark.parametrize("path", ["/a/{id", "/a/x{id}", "/a/{1d}", "/a/{x}/{x}"])
def test_bad_route_patterns_are_refused(path):
    with pytest.raises(ValueError, match="route"):
        Api(TOKEN, {("GET", path): echo})


def test_json_body_is_parsed_for_body_methods():
    a = rest_api()
    status, body = a.handle("POST", "/api/v1/responses", auth(), b'{"device": "cam", "ttl": 600}')
    assert status == 201 and body["body"] == {"device": "cam", "ttl": 600}
    assert a.handle("POST", "/api/v1/responses", auth())[1]["body"] is None
    assert a.handle("DELETE", "/api/v1/responses/3", auth(), b'{"reason": "x"}')[1]["body"] == {"reason": "x"}
    # GET takes no body: it is ignored, not parsed
    assert a.handle("GET", "/api/v1/responses", auth(), b"not json")[1]["body"] is None
    ctype = {**auth(), "Content-Type": "Application/JSON; charset=utf-8"}
    assert a.handle("POST", "/api/v1/responses", ctype, b"[1]")[1]["body"] == [1]


@pytest.mark.parametrize("data,fragment", [
    (b'{"device": ', "not valid JSON: Expecting value: line 1 column 12 (char 11)"),
    (b'{"a": 1} x', "not valid JSON: Extra data: line 1 column 10 (char 9)"),
    (b'{"ttl": NaN}', "not valid JSON: NaN is not valid JSON"),
    (b'"\xff"', "not UTF-8: invalid start byte at byte 1"),
    (b"[" * 50000, "nested too deeply"),
])
def test_bad_json_body_is_400_with_position(data, fragment):
    called = []
    a = Api(TOKEN, {("POST", "/x"): called.append})
    status, body = a.handle("POST", "/x", auth(), data)
    assert status == 400 and body["error"] == "bad_request" and fragment in body["message"], body
    assert not called


def test_body_size_media_type_and_auth_order():
    called = []
    a = Api(TOKEN, {("POST", "/x"): called.append})
    status, body = a.handle("POST", "/x", auth(), b" " * (MAX_BODY + 1))
    assert status == 413 and body == {"error": "too_large",
                                      "message": f"request body is {MAX_BODY + 1} bytes; the limit is 65536"}
    status, body = a.handle("POST", "/x", {**auth(), "Content-Type": "text/plain"}, b"{}")
    assert status == 415 and body["error"] == "unsupported_media_type" and "'text/plain'" in body["message"]
    # unauthenticated: 401 whatever the body, and nothing is parsed or called
    assert a.handle("POST", "/x", {}, b"{bad")[0] == 401
    assert a.handle("POST", "/x", {"Content-Type": "text/plain"}, b" " * (MAX_BODY + 1))[0] == 401
    assert a.handle("POST", "/x", auth(), b" " * MAX_BODY)[0] == 400  # at the limit: parsed (blank = invalid)
    assert not called


def test_route_status_tuple_and_error_extras():
    from controller.api.rest import ApiError

    def invalid(req):
        raise ApiError(422, "invalid_playbooks", "2 problems", problems=["a:1:1: x: bad"])
    a = Api(TOKEN, {("POST", "/made"): lambda req: (201, {"id": 1}),
                    ("POST", "/nothing"): lambda req: (204, {}),
                    ("GET", "/list"): lambda req: [1, 2],
                    ("GET", "/tuple"): lambda req: (1, 2, 3),
                    ("GET", "/gone"): lambda req: (410, {"error": "gone", "message": "x"}),
                    ("GET", "/wrong"): lambda req: (99, {}),
                    ("POST", "/invalid"): invalid})
    assert a.handle("POST", "/made", auth()) == (201, {"id": 1})
    assert a.handle("POST", "/nothing", auth()) == (204, {})
    assert a.handle("GET", "/list", auth()) == (200, [1, 2])
    assert a.handle("GET", "/tuple", auth()) == (200, (1, 2, 3))
    assert a.handle("GET", "/gone", auth()) == (410, {"error": "gone", "message": "x"})
    assert a.handle("GET", "/wrong", auth())[0] == 500  # not an HTTP status: a bug
    assert a.handle("POST", "/invalid", auth()) == (422, {"error": "invalid_playbooks", "message": "2 problems",
                                                          "problems": ["a:1:1: x: bad"]})


# ------------------------------------------------------------------ body_fields

REQUIRED = {"device": str, "action": str}
OPTIONAL = {"ttl": (str, float), "params": dict, "dry_run": bool, "count": int}


def fields_error(body, required=REQUIRED, optional=OPTIONAL):
    from controller.api.rest import ApiError, body_fields
    with pytest.raises(ApiError) as e:
        body_fields(body, required, optional)
    assert e.value.status == 400 and e.value.error == "bad_request"
    return e.value.message


def test_body_fields_accepts_and_fills_optional():
    from controller.api.rest import body_fields
    got = body_fields({"device": "cam", "action": "quarantine", "ttl": 600, "dry_run": True},
                      REQUIRED, OPTIONAL)
    assert got == {"device": "cam", "action": "quarantine", "ttl": 600, "params": None, "dry_run": True,
                   "count": None}
    assert body_fields({"device": "d", "action": "a", "ttl": "10m", "params": None}, REQUIRED, OPTIONAL)["ttl"] == "10m"
    assert body_fields({"device": "d", "action": "a", "ttl": 1.5}, REQUIRED, OPTIONAL)["ttl"] == 1.5
    assert body_fields(None, {}, {"reason": str}) == {"reason": None}


def test_body_fields_errors_name_the_field():
    assert fields_error([1]) == "request body must be a JSON object, got list"
    assert fields_error("x") == "request body must be a JSON object, got string"
    assert fields_error({"device": "cam"}) == "missing required field 'action'"
    assert fields_error({}) == "missing required fields 'device', 'action'"
    assert fields_error(None) == "missing required fields 'device', 'action'"
    assert fields_error({"devcie": "cam", "action": "q"}) == \
        "unknown field 'devcie'; allowed: action, count, device, dry_run, params, ttl"
    assert fields_error({"device": "c", "action": "q", "ttl": [1]}) == \
        "field 'ttl' must be a string or number, got list"
    assert fields_error({"device": "c", "action": "q", "ttl": True}) == \
        "field 'ttl' must be a string or number, got boolean"
    assert fields_error({"device": "c", "action": "q", "count": True}) == \
        "field 'count' must be an integer, got boolean"
    assert fields_error({"device": "c", "action": "q", "count": 1.0}) == \
        "field 'count' must be an integer, got number"
    assert fields_error({"device": "c", "action": "q", "dry_run": 1}) == \
        "field 'dry_run' must be a boolean, got integer"
    assert fields_error({"device": None, "action": "q"}) == "field 'device' must be a string, got null"
    assert fields_error({"device": "c", "action": "q", "params": []}) == \
        "field 'params' must be an object, got list"
    assert fields_error({"x": 1}, {}, {}) == "unknown field 'x'; allowed: (none)"
    assert fields_error({"a": 1}, {"a": (str, type(None), list)}, {}) == \
        "field 'a' must be a string, null or list, got integer"


# ------------------------------------------------------------------ over real HTTP

@pytest.fixture
def http_api():
    """Serve rest_api() on 127.0.0.1 until the test ends; yields its base URL."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    handler = make_handler(rest_api())

    def loop():
        while True:
            try:
                s, addr = srv.accept()
            except OSError:
                return
            serve_connection(handler, s, addr)

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()


def request(url, method="GET", data=None, headers=None):
    headers = {**auth(), "Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.load(r)
    except HTTPError as e:
        with e:
            return e.code, json.load(e)


def raw(base, data: bytes, shut=True):
    """Send raw request bytes; (status, JSON body)."""
    host, port = base.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_bodies_over_real_http(http_api):
    url = http_api + "/api/v1/responses"
    assert request(url, "POST", b'{"device": "cam"}', {"Content-Type": "application/json"}) == \
        (201, {"params": {}, "body": {"device": "cam"}, "query": ""})
    assert request(url + "/9", "DELETE") == (200, {"params": {"id": "9"}, "body": None, "query": ""})
    status, body = request(url, "POST", b'{"device": ')
    assert status == 400 and "line 1 column 12" in body["message"]
    status, body = request(url, "POST", b"{}", {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and "'Content-Type: application/json'" in body["message"]  # curl -d's default
    status, body = request(url, "POST", b" " * (MAX_BODY + 1))
    assert (status, body["error"]) == (413, "too_large")
    status, body = request(url, "POST", b"{}", {"Authorization": "Bearer nope"})
    assert status == 401
    assert request(url + "/1", "PUT", b"{}")[0] == 405


def test_framing_errors_over_real_http(http_api):
    head = f"POST /api/v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    status, body = raw(http_api, (head + "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n").encode())
    assert status == 411 and body["error"] == "length_required"
    for bad in ("-1", "ten", "1e3", "5, 6"):
        status, body = raw(http_api, (head + f"Content-Length: {bad}\r\n\r\n{{}}").encode())
        assert status == 400 and "Content-Length" in body["message"], bad
    status, body = raw(http_api, (head + "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}").encode())
    assert status == 400
    status, body = raw(http_api, (head + "Content-Length: 10\r\n\r\n{}").encode())
    assert status == 400 and body["message"] == "request body ended after 2 of 10 bytes"
    status, body = raw(http_api, (head + "Content-Length: 2\r\n\r\n{}").encode())
    assert status == 201 and body["body"] == {}
    # no Content-Length: no body
    assert raw(http_api, (head + "\r\n").encode())[1]["body"] is None


def test_huge_or_unauthorised_body_is_refused_unread(http_api):
    """A client announcing a giant body, or without a token, gets its answer at once:
    the server does not wait for (or read) the body."""
    import time
    head = "POST /api/v1/responses HTTP/1.1\r\nHost: x\r\n"
    t0 = time.monotonic()
    status, body = raw(http_api, (head + f"Authorization: Bearer {TOKEN}\r\n"
                                  "Content-Length: 1000000000\r\n\r\n{").encode(), shut=False)
    assert status == 413 and body["error"] == "too_large" and "1000000000 bytes" in body["message"]
    status, body = raw(http_api, (head + "Content-Length: 60000\r\n\r\n{").encode(), shut=False)
    assert status == 401
    assert time.monotonic() - t0 < 5  # well under the 10 s socket timeout per request


@pytest.mark.parametrize("data, message", [
    (b'{"score": 1e999}', "number 1e999 is out of range (finite numbers only)"),
    (b'{"score": -1e400}', "number -1e400 is out of range"),
    (b'{"ttl": 5, "ttl": 600}', "field 'ttl' is given twice"),
    (b'{"params": {"kbps": 1, "kbps": 2}}', "field 'kbps' is given twice"),
    (b'{"score": NaN}', "NaN is not valid JSON"),
])
def test_non_finite_numbers_and_duplicate_fields_are_400(data, message):
    headers = {**auth(), "Content-Type": "application/json"}
    status, body = rest_api().handle("POST", "/api/v1/responses", headers, data)
    assert status == 400 and body["error"] == "bad_request" and message in body["message"], body


def raw_http(request: bytes) -> tuple[int, str, dict]:
    """Send raw bytes to a real handler; (status, content type, JSON body)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    handler = make_handler(api())

    def serve():
        s, addr = srv.accept()
        serve_connection(handler, s, addr)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    with socket.create_connection(srv.getsockname(), timeout=5) as c:
        c.sendall(request)
        c.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    th.join(5)
    srv.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    ctype = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("content-type:")), "")
    return int(lines[0].split()[1]), ctype, json.loads(body)


@pytest.mark.parametrize("request_bytes, status, error", [
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
    (b"GET /api/v1/health HTTP/1.1\r\n" + b"X-Big: " + b"b" * 70000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"BREW /api/v1/health HTTP/1.1\r\n\r\n", 501, "not_implemented"),
    (b"GET /api/v1/health HTTP/2.0\r\n\r\n", 505, "http_version_not_supported"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 binary\r\n\r\n", 400, "bad_request"),
])
def test_errors_from_the_http_layer_are_json_too(request_bytes, status, error):
    got, ctype, body = raw_http(request_bytes)
    assert (got, ctype, body["error"]) == (status, "application/json", error)
    assert isinstance(body["message"], str) and body["message"]
