import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controller.api.client import Client, ClientError, api_url, resolve_token
from controller.config import Config

TOKEN = "s" * 32


class FakeApi:
    """A real HTTP server on 127.0.0.1 answering canned (status, JSON) per
    (method, path) and recording every request it gets."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], tuple[int, object]] = {}
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                fake.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                      "body": json.loads(data) if data else None})
                status, body = fake.answers.get((self.command, self.path.split("?")[0]),
                                                (404, {"error": "not_found", "message": "no such resource"}))
                out = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def answer(self, method: str, path: str, status: int, body: object) -> None:
        self.answers[(method, path)] = (status, body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    f = FakeApi()
    yield f
    f.close()


def free_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_get_post_delete_send_method_path_body_and_token(fake):
    fake.answer("GET", "/api/v1/responses", 200, {"responses": []})
    fake.answer("POST", "/api/v1/responses", 201, {"responses": [{"id": 1}], "actions": []})
    fake.answer("DELETE", "/api/v1/responses/1", 200, {"released": 1, "rules_removed": 2})
    c = Client(fake.url + "/", TOKEN)
    assert c.get("/api/v1/responses") == {"responses": []}
    assert c.post("/api/v1/responses", {"device": "cam", "action": "quarantine"})["responses"] == [{"id": 1}]
    assert c.delete("/api/v1/responses/1") == {"released": 1, "rules_removed": 2}
    get, post, delete = fake.requests
    assert [r["method"] for r in fake.requests] == ["GET", "POST", "DELETE"]
    assert all(r["headers"]["Authorization"] == f"Bearer {TOKEN}" for r in fake.requests)
    assert get["body"] is None and "Content-Type" not in get["headers"]
    assert post["body"] == {"device": "cam", "action": "quarantine"}
    assert post["headers"]["Content-Type"] == "application/json"
    assert delete["path"] == "/api/v1/responses/1" and delete["body"] is None


def test_server_errors_become_client_errors_with_its_message(fake):
    fake.answer("DELETE", "/api/v1/responses/9", 404,
                {"error": "not_found", "message": "no active response 9"})
    with pytest.raises(ClientError) as e:
        Client(fake.url, TOKEN).delete("/api/v1/responses/9")
    assert (e.value.status, e.value.error, e.value.message) == (404, "not_found", "no active response 9")
    assert str(e.value) == "404 not_found: no active response 9"
    problems = {"error": "invalid_playbooks", "message": "1 problem", "problems": ["x.yaml:1:1: bad"]}
    fake.answer("POST", "/api/v1/playbooks/reload", 422, problems)
    with pytest.raises(ClientError) as e:
        Client(fake.url, TOKEN).post("/api/v1/playbooks/reload")
    assert e.value.status == 422 and e.value.body == problems


def test_non_json_answers_are_clear_errors(fake):
    fake.answer("GET", "/html", 502, b"<html>Bad Gateway</html>")
    fake.answer("GET", "/text", 200, b"hello")
    with pytest.raises(ClientError) as e:
        Client(fake.url, TOKEN).get("/html")
    assert e.value.status == 502 and e.value.error == "http_error" and "Bad Gateway" in e.value.message
    with pytest.raises(ClientError, match="not JSON: b'hello'"):
        Client(fake.url, TOKEN).get("/text")


def test_connection_refused_says_what_to_do():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ClientError) as e:
        Client(url, TOKEN).get("/api/v1/responses")
    assert e.value.status is None
    assert str(e.value) == (f"cannot reach the iotguard API at {url}: connection refused; "
                            "is 'iotguard run' running?")


def test_no_answer_is_a_timeout_error():
    with socket.socket() as srv:  # accepts (backlog) but never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        with pytest.raises(ClientError, match=r"no answer within 0.2 s"):
            Client(url, TOKEN, timeout=0.2).get("/api/v1/responses")


def test_proxy_settings_are_ignored(fake, monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    fake.answer("GET", "/x", 200, {"ok": True})
    assert Client(fake.url, TOKEN).get("/x") == {"ok": True}


@pytest.mark.parametrize("bad", ["ftp://host", "http://", "/just/a/path"])
def test_bad_base_url(bad):
    with pytest.raises(ValueError, match="http://HOST:PORT"):
        Client(bad, TOKEN)


def test_api_url_from_config_or_override():
    assert api_url(Config()) == "http://127.0.0.1:8080"
    assert api_url(Config(api_host="0.0.0.0", api_port=9000)) == "http://127.0.0.1:9000"
    assert api_url(Config(api_host="::")) == "http://[::1]:8080"
    assert api_url(Config(api_host="fd00::1")) == "http://[fd00::1]:8080"
    assert api_url(Config(api_host="ctl.example")) == "http://ctl.example:8080"
    assert api_url(Config(), "https://ctl:8443") == "https://ctl:8443"
    assert api_url(Config(), "10.0.0.1:8080") == "http://10.0.0.1:8080"


def test_token_resolution_order(tmp_path, monkeypatch):
    (tmp_path / "api-token").write_text("from-file-token-123\n")
    cfg = Config(state_dir=str(tmp_path), api_token="from-config-token-1")
    monkeypatch.setenv("IOTGUARD_TOKEN", "from-env-token-1234")
    assert resolve_token("from-option", cfg) == "from-option"
    assert resolve_token(None, cfg) == "from-env-token-1234"
    monkeypatch.delenv("IOTGUARD_TOKEN")
    assert resolve_token(None, cfg) == "from-config-token-1"
    assert resolve_token(None, Config(state_dir=str(tmp_path))) == "from-file-token-123"
    other = tmp_path / "other"
    other.mkdir()
    (other / "api-token").write_text("other-dir-token-12")
    assert resolve_token(None, Config(state_dir=str(tmp_path)), str(other)) == "other-dir-token-12"
    monkeypatch.setenv("IOTGUARD_TOKEN", "")  # empty means unset
    assert resolve_token(None, Config(state_dir=str(tmp_path))) == "from-file-token-123"


def test_token_file_problems_name_the_path(tmp_path, monkeypatch):
    monkeypatch.delenv("IOTGUARD_TOKEN", raising=False)
    path = tmp_path / "api-token"
    with pytest.raises(ClientError, match=f"{path} does not exist .*--token or set IOTGUARD_TOKEN"):
        resolve_token(None, Config(state_dir=str(tmp_path)))
    path.write_text("\n")
    with pytest.raises(ClientError, match=f"the API token file {path} is empty"):
        resolve_token(None, Config(state_dir=str(tmp_path)))
    path.unlink()
    path.mkdir()
    with pytest.raises(ClientError, match=f"cannot read the API token from {path}: Is a directory"):
        resolve_token(None, Config(state_dir=str(tmp_path)))
    path.rmdir()
    path.write_text("tok")
    path.chmod(0)
    try:
        if os.geteuid() != 0:  # root reads anything
            with pytest.raises(ClientError, match=f"cannot read the API token from {path}: Permission denied"):
                resolve_token(None, Config(state_dir=str(tmp_path)))
    finally:
        path.chmod(0o600)
