import json
import subprocess
import sys

import pytest

from controller.api import cli


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "controller.api.cli", *args], capture_output=True,
                          text=True, timeout=30)


def test_help_explains_every_run_option():
    out = run_cli("run", "--help").stdout
    for opt in ("--config", "--ofp-port", "--api-port", "--state-dir", "--log-level"):
        assert opt in out
    top = run_cli("--help").stdout
    assert "run" in top and "config" in top


def test_no_command_prints_help_and_fails():
    r = run_cli()
    assert r.returncode == 2 and "COMMAND" in r.stdout


def test_run_with_bad_config_names_file_line_field_and_exits_nonzero(tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text("poll_interval: 1\napi:\n  port: 99999\n")
    r = run_cli("run", "--config", str(bad))
    assert r.returncode == 2
    assert f"{bad}:3: api.port:" in r.stderr and "65535" in r.stderr


def test_bad_port_override_is_refused_before_anything_starts(tmp_path):
    r = run_cli("run", "--ofp-port", "0", "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 2 and "--ofp-port" in r.stderr
    assert not (tmp_path / "s").exists()


def test_config_command_prints_effective_settings(tmp_path):
    good = tmp_path / "ok.yaml"
    good.write_text("poll_interval: 2\n")
    r = run_cli("config", str(good))
    assert r.returncode == 0 and json.loads(r.stdout)["poll_interval"] == 2.0


def test_overrides_apply(tmp_path):
    args = cli._parser().parse_args(["run", "--api-port", "9000", "--state-dir", str(tmp_path)])
    cfg = cli.effective_config(args)
    assert cfg.api_port == 9000 and cfg.state_dir == str(tmp_path) and cfg.ofp_port == 6653


@pytest.mark.parametrize("missing", ["/nonexistent/iotguard.yaml"])
def test_missing_config_file(missing):
    r = run_cli("config", missing)
    assert r.returncode == 2 and missing in r.stderr and "not found" in r.stderr


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"api: {{port: {port}}}\nstate_dir: {tmp_path / 'state'}\n")
        r = run_cli("run", "--config", str(cfg), "--ofp-port", str(port + 1 if port < 65535 else 1024))
    assert r.returncode == 1
    assert f"cannot listen for the REST API on 127.0.0.1:{port}" in r.stderr


def test_unusable_state_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("run", "--state-dir", str(blocker / "state"))
    assert r.returncode == 1 and "cannot use state directory" in r.stderr


def test_playbook_validate_command(tmp_path):
    import os
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    ok = run_cli("playbook", "validate", os.path.join(root, "playbooks"))
    assert ok.returncode == 0 and "quarantine-scanner" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("playbooks:\n  - name: x\n    when: {kinds: [bogus]}\n    do: []\n")
    r = run_cli("playbook", "validate", str(bad))
    assert r.returncode == 2
    assert f"{bad}:3:20: playbooks[0].when.kinds[0]: unknown alert kind 'bogus'" in r.stderr
    assert f"{bad}:4:9: playbooks[0].do: must list at least one action" in r.stderr


# ------------------------------------------------------------------ commands for a running controller

from tests.unit.test_client import TOKEN, FakeApi, free_port  # noqa: E402

RESPONSE = {"id": 7, "action": "quarantine", "mode": "enforce", "playbook": "", "mac": "02:00:00:00:00:01",
            "entity": {"mac": "02:00:00:00:00:01", "ip": "10.0.0.5", "prefix": None}, "params": {},
            "created": 1700000000.0, "expires": 1700000600.0, "ttl": 600.0, "remaining": 598.7,
            "repeats": 0, "state": "active", "dpids": [1, 2], "confirmed": [1], "reason": "manual",
            "cookie": "0x0100000000000007"}
BLOCK = {**RESPONSE, "id": 8, "action": "block_ip", "playbook": "block-c2", "mac": "02:00:00:00:00:09",
         "entity": {"mac": None, "ip": None, "prefix": "203.0.113.7"}, "remaining": 3600.0,
         "dpids": [1], "confirmed": [1]}


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.delenv("IOTGUARD_TOKEN", raising=False)
    f = FakeApi()
    yield f
    f.close()


def api_cli(fake, capsys, *args):
    """Run `iotguard ARGS --api FAKE --token T` in-process: (exit status, stdout, stderr)."""
    status = cli.main([*args, "--api", fake.url, "--token", TOKEN])
    out, err = capsys.readouterr()
    return status, out, err


def created(*responses, outcome="sent", error=None):
    actions = [{"action": r["action"], "playbook": "", "mode": r["mode"], "response_id": r["id"],
                "outcome": outcome, **({"error": error} if error else {})} for r in responses]
    return {"responses": list(responses), "actions": actions}


def test_quarantine_posts_the_response_and_prints_id_outcome_ttl(fake, capsys):
    fake.answer("POST", "/api/v1/responses", 201, created(RESPONSE))
    status, out, err = api_cli(fake, capsys, "quarantine", "cam1", "--ttl", "10m", "--reason", "scan",
                               "--dry-run")
    assert status == 0 and err == ""
    req, = fake.requests
    assert req["method"] == "POST" and req["path"] == "/api/v1/responses"
    assert req["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert req["body"] == {"device": "cam1", "action": "quarantine", "ttl": "10m", "reason": "scan",
                           "dry_run": True}
    assert out.splitlines() == ["ID  ACTION      DEVICE             MODE     OUTCOME  TTL",
                                "7   quarantine  02:00:00:00:00:01  enforce  sent     10m0s"]


def test_quarantine_minimal_body_and_numeric_ttl(fake, capsys):
    fake.answer("POST", "/api/v1/responses", 201, created(RESPONSE))
    assert api_cli(fake, capsys, "quarantine", "10.0.0.5")[0] == 0
    assert api_cli(fake, capsys, "quarantine", "10.0.0.5", "--ttl", "600")[0] == 0
    assert [r["body"] for r in fake.requests] == [{"device": "10.0.0.5", "action": "quarantine"},
                                                  {"device": "10.0.0.5", "action": "quarantine", "ttl": 600}]


def test_respond_sends_typed_params(fake, capsys):
    fake.answer("POST", "/api/v1/responses", 201, created(RESPONSE))
    status, _, _ = api_cli(fake, capsys, "respond", "redirect", "cam1", "--param", "to=honeypot",
                           "--param", "ports=[22,23]", "--param", "kbps=1000", "--param", "dns=false",
                           "--param", "port=1:3", "--param", "x=NaN", "--param", "note=a=b")
    assert status == 0
    assert fake.requests[0]["body"] == {
        "device": "cam1", "action": "redirect",
        "params": {"to": "honeypot", "ports": [22, 23], "kbps": 1000, "dns": False, "port": "1:3",
                   "x": "NaN", "note": "a=b"}}


def test_respond_block_ip_without_device(fake, capsys):
    fake.answer("POST", "/api/v1/responses", 201, created(BLOCK))
    status, out, _ = api_cli(fake, capsys, "respond", "block_ip", "-", "--param", "ip=203.0.113.7",
                             "--ttl", "1h")
    assert status == 0 and out.splitlines()[1].split() == ["8", "block_ip", "203.0.113.7", "enforce", "sent",
                                                            "10m0s"]
    assert fake.requests[0]["body"] == {"action": "block_ip", "params": {"ip": "203.0.113.7"}, "ttl": "1h"}


@pytest.mark.parametrize("args,message", [
    (["respond", "quarantine", "-"], "DEVICE '-' (no device) is only for block_ip"),
    (["respond", "rate_limit", "cam", "--param", "kbps"], "--param 'kbps': write KEY=VALUE"),
    (["respond", "rate_limit", "cam", "--param", "=1"], "--param '=1': write KEY=VALUE"),
    (["respond", "rate_limit", "cam", "--param", "kbps=1", "--param", "kbps=2"], "--param 'kbps' is given twice"),
    (["audit", "--since", "yesterday"], "--since 'yesterday': give unix seconds"),
])
def test_usage_errors_exit_2_and_send_nothing(fake, capsys, args, message):
    status, out, err = api_cli(fake, capsys, *args)
    assert status == 2 and err == f"iotguard: {message}" + err.split(message, 1)[1] and not fake.requests


def test_unknown_action_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["respond", "shutdown", "cam1"])
    assert e.value.code == 2 and "invalid choice: 'shutdown'" in capsys.readouterr().err


def test_failed_action_exits_1(fake, capsys):
    fake.answer("POST", "/api/v1/responses", 201,
                created(RESPONSE, outcome="failed", error="switch 1 refused the meter"))
    status, out, err = api_cli(fake, capsys, "respond", "rate_limit", "cam1", "--param", "kbps=1000")
    assert status == 1 and "failed" in out
    assert err == "iotguard: quarantine failed: switch 1 refused the meter\n"


def test_api_error_prints_status_error_message(fake, capsys):
    fake.answer("POST", "/api/v1/responses", 400, {"error": "bad_request", "message": "no device named 'cam9'"})
    status, out, err = api_cli(fake, capsys, "quarantine", "cam9")
    assert (status, out, err) == (1, "", "iotguard: 400 bad_request: no device named 'cam9'\n")


def test_release(fake, capsys):
    fake.answer("DELETE", "/api/v1/responses/7", 200, {"released": 7, "rules_removed": 3})
    assert api_cli(fake, capsys, "release", "7", "--reason", "false alarm") == \
        (0, "released response 7: 3 rules removed\n", "")
    assert api_cli(fake, capsys, "release", "7")[0] == 0
    with_reason, without = fake.requests
    assert with_reason["method"] == "DELETE" and with_reason["path"] == "/api/v1/responses/7"
    assert with_reason["body"] == {"reason": "false alarm"} and without["body"] is None
    status, _, err = api_cli(fake, capsys, "release", "99")
    assert status == 1 and err.startswith("iotguard: 404 not_found: ")
    assert api_cli(fake, capsys, "release", "a/b")[0] == 1
    assert fake.requests[-1]["path"] == "/api/v1/responses/a%2Fb"


def test_responses_table_and_json(fake, capsys):
    fake.answer("GET", "/api/v1/responses", 200, {"responses": [RESPONSE, BLOCK]})
    status, out, _ = api_cli(fake, capsys, "responses")
    assert status == 0 and out.splitlines() == [
        "ID  ACTION      DEVICE             MODE     REMAINING  PLAYBOOK  CONFIRMED",
        "7   quarantine  02:00:00:00:00:01  enforce  9m58s      -         1 (1 unconfirmed)",
        "8   block_ip    203.0.113.7        enforce  1h0m0s     block-c2  1"]
    status, out, _ = api_cli(fake, capsys, "responses", "--json")
    assert status == 0 and json.loads(out) == {"responses": [RESPONSE, BLOCK]}
    fake.answer("GET", "/api/v1/responses", 200, {"responses": []})
    assert api_cli(fake, capsys, "responses") == (0, "no active responses\n", "")


def test_audit_since_and_lines(fake, capsys):
    import re
    import time
    events = [{"time": 1700000000.5, "event": "decision", "action": "quarantine", "response_id": 7,
               "outcome": "decided", "error": None},
              {"time": 1700000001.0, "event": "failed", "action": "rate_limit", "response_id": None,
               "outcome": "failed", "error": "no such switch"}]
    fake.answer("GET", "/api/v1/audit", 200, {"events": events})
    status, out, _ = api_cli(fake, capsys, "audit", "--since", "1700000000")
    assert status == 0 and fake.requests[-1]["path"] == "/api/v1/audit?since=1700000000"
    header, first, second = out.splitlines()
    assert header.split() == ["TIME", "EVENT", "ACTION", "RESPONSE", "OUTCOME", "ERROR"]
    assert re.fullmatch(r"2023-11-1\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d  decision  quarantine  7         decided  -", first)
    assert second.split()[1:] == ["failed", "rate_limit", "-", "failed", "no", "such", "switch"]
    t0 = time.time()
    api_cli(fake, capsys, "audit", "--since", "-10m")
    since = float(fake.requests[-1]["path"].split("since=")[1])
    assert t0 - 601 < since < time.time() - 599
    api_cli(fake, capsys, "audit")
    assert fake.requests[-1]["path"] == "/api/v1/audit"
    fake.answer("GET", "/api/v1/audit", 200, {"events": []})
    assert api_cli(fake, capsys, "audit")[1] == "no audit events\n"


def test_playbook_reload_ok_and_invalid(fake, capsys):
    fake.answer("POST", "/api/v1/playbooks/reload", 200,
                {"loaded": ["quarantine-scanner", "block-c2"], "files": ["/etc/iotguard/playbooks/a.yaml"]})
    status, out, _ = api_cli(fake, capsys, "playbook", "reload")
    assert status == 0 and out == ("loaded 2 playbooks: quarantine-scanner, block-c2\n"
                                   "  from /etc/iotguard/playbooks/a.yaml\n")
    assert fake.requests[0]["method"] == "POST" and fake.requests[0]["body"] is None
    fake.answer("POST", "/api/v1/playbooks/reload", 422, {
        "error": "invalid_playbooks", "message": "2 problems; the running playbooks are unchanged",
        "problems": ["a.yaml:3:20: playbooks[0].when.kinds[0]: unknown alert kind 'bogus'",
                     {"file": "b.yaml", "line": 4, "col": 9, "field": "playbooks[0].do", "message": "empty"}]})
    status, out, err = api_cli(fake, capsys, "playbook", "reload")
    assert status == 2 and out == ""
    assert err.splitlines() == [
        "iotguard: 422 invalid_playbooks: 2 problems; the running playbooks are unchanged",
        "a.yaml:3:20: playbooks[0].when.kinds[0]: unknown alert kind 'bogus'",
        "b.yaml:4:9: playbooks[0].do: empty"]


def test_connection_refused_exits_1(capsys, monkeypatch):
    monkeypatch.delenv("IOTGUARD_TOKEN", raising=False)
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["responses", "--api", url, "--token", TOKEN]) == 1
    assert capsys.readouterr().err == (f"iotguard: cannot reach the iotguard API at {url}: connection refused; "
                                       "is 'iotguard run' running?\n")


def test_bad_api_url_is_a_usage_error(capsys):
    assert cli.main(["responses", "--api", "ftp://x", "--token", TOKEN]) == 2
    assert "--api: API URL must look like http://HOST:PORT" in capsys.readouterr().err


def test_token_and_address_come_from_option_env_config_state_dir(fake, capsys, tmp_path, monkeypatch):
    fake.answer("GET", "/api/v1/responses", 200, {"responses": []})
    port = fake.url.rsplit(":", 1)[1]
    state = tmp_path / "state"
    state.mkdir()
    (state / "api-token").write_text("file-token-0123456789\n")
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"api: {{port: {port}}}\nstate_dir: {state}\n")
    with_token = tmp_path / "token.yaml"
    with_token.write_text(f"api: {{port: {port}, token: config-token-0123456}}\nstate_dir: {state}\n")

    def token_sent(*args):
        assert cli.main(["responses", *args]) == 0, capsys.readouterr().err
        return fake.requests[-1]["headers"]["Authorization"].split(" ", 1)[1]

    assert token_sent("--config", str(plain)) == "file-token-0123456789"
    assert token_sent("--config", str(with_token)) == "config-token-0123456"
    monkeypatch.setenv("IOTGUARD_TOKEN", "env-token-0123456789")
    assert token_sent("--config", str(with_token)) == "env-token-0123456789"
    assert token_sent("--config", str(with_token), "--token", "option-token") == "option-token"
    monkeypatch.delenv("IOTGUARD_TOKEN")
    other = tmp_path / "other"
    other.mkdir()
    (other / "api-token").write_text("other-token-0123456\n")
    assert token_sent("--config", str(plain), "--state-dir", str(other)) == "other-token-0123456"
    capsys.readouterr()
    assert cli.main(["responses", "--config", str(plain), "--state-dir", str(tmp_path / "none")]) == 1
    assert f"{tmp_path / 'none' / 'api-token'} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("command,options", [
    (["quarantine"], ["--ttl", "--reason", "--dry-run"]),
    (["respond"], ["--ttl", "--reason", "--dry-run", "--param", "block_ip"]),
    (["release"], ["--reason"]),
    (["responses"], []),
    (["audit"], ["--since"]),
    (["playbook", "reload"], []),
])
def test_api_commands_help_explains_every_option(command, options):
    out = run_cli(*command, "--help").stdout
    for opt in options + ["--config", "--state-dir", "--api", "--token", "--json", "IOTGUARD_TOKEN"]:
        assert opt in out, (command, opt)


def test_top_level_help_lists_the_api_commands():
    top = run_cli("--help").stdout
    for command in ("quarantine", "respond", "release", "responses", "audit", "playbook reload"):
        assert f"'{command}" in top or f"  {command} " in top, command


def test_human_duration_and_since():
    assert [cli.human_duration(s) for s in (0, 5, 59.9, 60, 598.7, 3600, 90061, -3, None, True)] == \
        ["0s", "5s", "59s", "1m0s", "9m58s", "1h0m0s", "1d1h1m1s", "0s", "-", "-"]
    assert cli.parse_since("-90", now=1000) == 910
    assert cli.parse_since("-2h", now=10000) == 2800
    assert cli.parse_since("-1.5m", now=1000) == 910
    assert cli.parse_since("1700000000.25") == 1700000000.25
    assert cli.parse_since("10m", now=1000) == 400
    assert cli._since_ago(["audit", "--since", "-10m", "--reason", "", "--", "--since", "-1h"]) == \
        ["audit", "--since=-10m", "--reason", "", "--", "--since", "-1h"]


def test_cli_actions_match_the_engine():
    from controller.response.actions import REGISTRY
    assert set(cli.response_actions()) == {a.name for a in REGISTRY.installing()}


def test_run_refuses_invalid_playbooks_with_every_problem(tmp_path, capsys):
    from controller.api.cli import main
    books = tmp_path / "books"
    books.mkdir()
    (books / "bad.yaml").write_text("playbooks:\n  - name: x\n    description: d\n    when: {kinds: [scan]}\n"
                                    "    do: [{quarantine: {ttl: 5}}]\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {tmp_path}/state\nresponses: {{playbooks: [{books}]}}\n")
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "not starting" in err and "bad.yaml:4:" in err and "unknown alert kind 'scan'" in err
    assert "bad.yaml:5:" in err and "a duration needs a unit" in err
    assert not (tmp_path / "state").exists(), "nothing is created before the playbooks are valid"


def test_report_help_explains_every_option():
    out = run_cli("report", "--help").stdout
    for opt in ("ALERT_ID", "--last", "-o FILE, --output FILE", "--state-dir", "--config"):
        assert opt in out
    assert "report" in run_cli("--help").stdout


def test_report_on_a_missing_state_dir_exits_1(tmp_path):
    r = run_cli("report", "--last", "--state-dir", str(tmp_path / "none"))
    assert r.returncode == 1 and r.stderr.startswith("iotguard: no state directory")


def test_two_listeners_on_one_port_are_a_config_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api: {port: 9100}\nmetrics: {port: 9100}\n")
    for command in (["config", str(cfg)], ["run", "--config", str(cfg)]):
        r = run_cli(*command)
        assert r.returncode == 2
        assert r.stderr.strip() == (f"iotguard: configuration error: {cfg}:2: metrics.port: port 9100 is also "
                                    "api.port (127.0.0.1); each listener needs its own")


def test_config_refuses_what_run_refuses(tmp_path):
    bad = tmp_path / "books"
    bad.mkdir()
    (bad / "x.yaml").write_text("playbooks:\n  - name: x\n    when: {kinds: [bogus]}\n    do: []\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"responses: {{playbooks: [{bad}]}}\n")
    r = run_cli("config", str(cfg))
    assert r.returncode == 2 and "run would refuse to start" in r.stderr
    assert "unknown alert kind 'bogus'" in r.stderr


def test_two_sigterms_in_a_row_still_exit_cleanly(tmp_path):
    import os
    import signal
    import time
    ofp, api = free_port(), free_port()
    p = subprocess.Popen([sys.executable, "-m", "controller.api.cli", "run", "--ofp-port", str(ofp),
                          "--api-port", str(api), "--state-dir", str(tmp_path / "state")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and p.poll() is None:
            import socket
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", api)) == 0:
                    break
            time.sleep(0.2)
        assert p.poll() is None, p.stderr.read()
        p.send_signal(signal.SIGTERM)
        time.sleep(0.002)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
