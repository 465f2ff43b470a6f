import json
import subprocess
import sys

import pytest

from controller import cli


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True,
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
