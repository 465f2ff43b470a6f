"""Tests for controller.config: defaults, full round-trip, and exact error locations."""

from __future__ import annotations

import os
import pickle
import textwrap
from pathlib import Path

import pytest

from controller.config import MAX_FILE_BYTES, Config, ConfigError, Device, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_defaults_for_empty_file_and_empty_mapping(tmp_path: Path) -> None:
    for text in ("", "{}\n", "# only a comment\n", "---\n"):
        cfg = load_config(write(tmp_path, text))
        assert cfg == Config(source=str(tmp_path / "cfg.yaml"))
    cfg = Config()
    assert cfg.source == "<defaults>"
    assert (cfg.ofp_host, cfg.ofp_port, cfg.api_host, cfg.api_port) == ("0.0.0.0", 6653, "127.0.0.1", 8080)
    assert cfg.api_token is None and cfg.devices == ()
    assert cfg.internal_subnets == ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    assert (cfg.idle_timeout, cfg.packet_in_rate, cfg.packet_in_burst) == (10, 1000, 200)
    assert (cfg.poll_interval, cfg.lldp_interval, cfg.state_dir) == (1.0, 1.0, "/var/lib/iotguard")


FULL = """\
openflow:
  listen_host: "::"
  port: 6633
api:
  listen_host: ::1
  port: 9090
  token: "abcdefghijklmnop-0123"
poll_interval: 2.5
state_dir: /tmp/iotguard-state
internal_subnets: [10.1.0.0/16, "fd00::/8"]
forwarding:
  idle_timeout: 30
  packet_in_rate: 1_000_000
  packet_in_burst: 50
lldp_interval: 0.5
devices:
  - name: Camera-1
    mac: "AA:BB:CC:DD:EE:F0"
    ip: 10.1.0.11
    tags: [camera, video_1]
  - name: plug.2
    mac: 52:54:00:12:34:56
    ips: [10.1.0.12, "FD00:0::12"]
  - name: sensor_3
    ips: [10.1.0.13]
"""


def test_full_file_round_trips_every_field(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    cfg = load_config(path)
    assert cfg == Config(
        source=str(path),
        ofp_host="::",
        ofp_port=6633,
        api_host="::1",
        api_port=9090,
        api_token="abcdefghijklmnop-0123",
        poll_interval=2.5,
        state_dir="/tmp/iotguard-state",
        internal_subnets=("10.1.0.0/16", "fd00::/8"),
        idle_timeout=30,
        packet_in_rate=1_000_000,
        packet_in_burst=50,
        lldp_interval=0.5,
        devices=(
            Device("Camera-1", "aa:bb:cc:dd:ee:f0", ("10.1.0.11",), ("camera", "video_1")),
            Device("plug.2", "52:54:00:12:34:56", ("10.1.0.12", "fd00::12"), ()),
            Device("sensor_3", None, ("10.1.0.13",), ()),
        ),
    )
    assert isinstance(cfg.poll_interval, float) and isinstance(cfg.ofp_port, int)
    with pytest.raises(AttributeError):
        cfg.ofp_port = 1  # type: ignore[misc]
    assert hash(cfg) == hash(load_config(path))


def test_normalisation() -> None:
    cfg = parse_config("devices:\n  - {name: a, mac: 'AA-BB-CC-DD-EE-00', ip: '2001:DB8:0:0::1'}\n")
    assert cfg.devices[0].mac == "aa:bb:cc:dd:ee:00"
    assert cfg.devices[0].ips == ("2001:db8::1",)
    assert cfg.source == "<string>"


def test_lookups() -> None:
    cfg = parse_config(FULL, "full.yaml")
    cam, plug, sensor = cfg.devices
    assert cfg.device_by_mac("aa:bb:cc:dd:ee:f0") is cam
    assert cfg.device_by_mac("AA-BB-CC-DD-EE-F0") is cam
    assert cfg.device_by_mac("52:54:00:12:34:56") is plug
    assert cfg.device_by_mac("00:00:00:00:00:09") is None
    assert cfg.device_by_mac("not-a-mac") is None
    assert cfg.device_by_ip("10.1.0.13") is sensor
    assert cfg.device_by_ip("fd00::12") is plug
    import ipaddress

    assert cfg.device_by_ip(ipaddress.ip_address("10.1.0.11")) is cam
    assert cfg.device_by_ip("10.1.0.99") is None
    assert cfg.device_by_ip("garbage") is None
    assert Config().device_by_mac("aa:bb:cc:dd:ee:f0") is None


def test_example_file_loads() -> None:
    cfg = load_config(REPO / "iotguard.example.yaml")
    assert [d.name for d in cfg.devices] == ["camera-1", "thermostat", "hub.living-room"]
    assert cfg.device_by_ip("10.0.0.11") is cfg.device_by_mac("00:00:00:00:00:01")


def test_docs_mention_every_key() -> None:
    doc = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    for key in ("openflow.listen_host", "openflow.port", "api.listen_host", "api.port", "api.token",
                "poll_interval", "state_dir", "internal_subnets", "forwarding.idle_timeout",
                "forwarding.packet_in_rate", "forwarding.packet_in_burst", "lldp_interval",
                "devices[].name", "devices[].mac", "devices[].ip", "devices[].ips", "devices[].tags",
                "metrics.listen_host", "metrics.port"):
        assert f"`{key}`" in doc, key


DEVICES_OK = """\
devices:
  - name: cam
    mac: "00:00:00:00:00:01"
    ip: 10.0.0.1
"""

# (id, yaml text, line, field, distinctive message fragment)
BAD = [
    ("unknown-top", "poll_intervall: 1\n", 1, "poll_intervall",
     "unknown key 'poll_intervall' (did you mean 'poll_interval'?); allowed keys: openflow, api,"),
    ("unknown-nested", "api:\n  port: 80\n  tokn: x\n", 3, "api.tokn",
     "allowed keys: listen_host, port, token"),
    ("bool-yes-not-int", "openflow:\n  port: yes\n", 2, "openflow.port",
     "expected an integer, got a boolean ('yes')"),
    ("bool-true-not-int", "forwarding:\n  idle_timeout: true\n", 2, "forwarding.idle_timeout",
     "expected an integer, got a boolean ('true')"),
    ("quoted-int", "api:\n  port: '8080'\n", 2, "api.port", "expected an integer, got a string ('8080')"),
    ("float-not-int", "forwarding:\n  idle_timeout: 1.5\n", 2, "forwarding.idle_timeout",
     "expected an integer, got a float ('1.5')"),
    ("port-range", "openflow:\n  port: 70000\n", 2, "openflow.port", "must be between 1 and 65535, got 70000"),
    ("rate-zero", "forwarding:\n  packet_in_rate: 0\n", 2, "forwarding.packet_in_rate",
     "must be between 1 and 1000000, got 0"),
    ("poll-range", "poll_interval: 0.05\n", 1, "poll_interval", "must be between 0.1 and 3600, got 0.05"),
    ("lldp-range", "lldp_interval: 61\n", 1, "lldp_interval", "must be between 0.1 and 60, got 61"),
    ("poll-bool", "poll_interval: off\n", 1, "poll_interval", "expected a number, got a boolean ('off')"),
    ("bad-host", "api:\n  listen_host: localhost\n", 2, "api.listen_host",
     "not an IPv4/IPv6 address: 'localhost'"),
    ("short-token", "api:\n  token: abc\n", 2, "api.token", "must be at least 16 characters, got 3"),
    ("space-token", "api:\n  token: 'abcdefgh ijklmnopq'\n", 2, "api.token",
     "must be printable ASCII without whitespace"),
    ("empty-state-dir", "state_dir: ''\n", 1, "state_dir", "must be a non-empty path"),
    ("state-dir-list", "state_dir: [a]\n", 1, "state_dir", "expected a string, got a list"),
    ("bad-cidr", "internal_subnets:\n  - 10.0.0.0/8\n  - 10.0.0.0/33\n", 3, "internal_subnets[1]",
     "not a CIDR network (like 10.0.0.0/8): '10.0.0.0/33'"),
    ("host-bits", "internal_subnets: [192.168.1.1/24]\n", 1, "internal_subnets[0]",
     "host bits set in '192.168.1.1/24' (did you mean '192.168.1.0/24'?)"),
    ("empty-subnets", "\ninternal_subnets: []\n", 2, "internal_subnets", "must not be empty"),
    ("bad-mac", DEVICES_OK + "  - name: x\n    mac: 00:11:22:33:44\n", 6, "devices[1].mac",
     "not a MAC address (like 00:11:22:33:44:55): '00:11:22:33:44'"),
    ("multicast-mac", DEVICES_OK + "  - name: x\n    mac: '01:00:5e:00:00:01'\n", 6, "devices[1].mac",
     "01:00:5e:00:00:01 is a multicast/broadcast MAC"),
    ("broadcast-mac", DEVICES_OK + "  - name: x\n    mac: FF:FF:FF:FF:FF:FF\n", 6, "devices[1].mac",
     "ff:ff:ff:ff:ff:ff is a multicast/broadcast MAC"),
    ("bad-ip", DEVICES_OK + "  - name: x\n    ips: [10.0.0.2, 10.0.0.300]\n", 6, "devices[1].ips[1]",
     "not an IPv4/IPv6 address: '10.0.0.300'"),
    ("dup-name", DEVICES_OK + "  - name: cam\n    ip: 10.0.0.2\n", 5, "devices[1].name",
     "duplicate device name 'cam' (first on line 2)"),
    ("dup-mac", DEVICES_OK + "  - name: x\n    mac: '00-00-00-00-00-01'\n", 6, "devices[1].mac",
     "duplicate MAC 00:00:00:00:00:01: already used by device 'cam' (line 3)"),
    ("dup-ip", DEVICES_OK + "  - name: x\n    ips: ['10.0.0.2', '10.0.0.1']\n", 6, "devices[1].ips[1]",
     "duplicate IP 10.0.0.1: already used by device 'cam' (line 4)"),
    ("no-address", DEVICES_OK + "  - name: lonely\n    tags: [x]\n", 5, "devices[1]",
     "device needs at least one of 'mac', 'ip' or 'ips'"),
    ("missing-name", DEVICES_OK + "  - ip: 10.0.0.2\n", 5, "devices[1].name", "required key 'name' is missing"),
    ("bad-name", DEVICES_OK + "  - name: cam 2\n    ip: 10.0.0.2\n", 5, "devices[1].name",
     "invalid name 'cam 2'"),
    ("bad-tag", DEVICES_OK + "    tags: [ok, Camera]\n", 5, "devices[0].tags[1]", "invalid tag 'Camera'"),
    ("ip-and-ips", DEVICES_OK + "    ips: [10.0.0.2]\n", 5, "devices[0].ips", "use either 'ip' or 'ips', not both"),
    ("devices-not-list", "devices:\n  name: cam\n", 2, "devices", "expected a list, got a mapping"),
    ("top-level-list", "- a\n- b\n", 1, None, "the top level must be a mapping, got a list"),
    ("top-level-scalar", "hello\n", 1, None, "the top level must be a mapping, got a string ('hello')"),
    ("yaml-bad-indent", "api:\n  port: 80\n token: x\n", 3, None, "YAML syntax error: expected <block end>"),
    ("yaml-unclosed", "api:\n  token: [unclosed\nstate_dir: x\n", 3, None,
     "YAML syntax error: expected ',' or ']', but got ':' (while parsing a flow sequence on line 2)"),
    ("duplicate-key", "api:\n  port: 80\n  port: 81\n", 3, "api.port", "duplicate key 'port' (first on line 2)"),
    ("alias", "x_base: &base 80\nopenflow:\n  port: *base\n", 3, None, "aliases are not allowed"),
    ("merge-key", "openflow:\n  <<: {port: 80}\n", 2, "openflow.<<", "merge keys ('<<') are not allowed"),
    ("custom-tag", "state_dir: !secret /x\n", 1, "state_dir", "tag '!secret' is not allowed"),
    ("binary-tag", "api:\n  token: !!binary aGVsbG8=\n", 2, "api.token", "tag '!!binary' is not allowed"),
    ("two-documents", "api: {}\n---\napi: {}\n", 2, None, "only one YAML document is allowed"),
    ("control-char", "state_dir: a\x07b\n", 1, None, "invalid character '\\x07'"),
    ("metrics-port-string", "metrics:\n  port: '9108'\n", 2, "metrics.port",
     "expected an integer, got a string ('9108')"),
    ("metrics-port-bool", "metrics:\n  port: off\n", 2, "metrics.port", "expected an integer, got a boolean ('off')"),
    ("metrics-port-range", "metrics:\n  port: 65536\n", 2, "metrics.port", "must be between 0 and 65535, got 65536"),
    ("metrics-port-negative", "metrics:\n  port: -1\n", 2, "metrics.port", "must be between 0 and 65535, got -1"),
    ("metrics-bad-host", "metrics:\n  listen_host: localhost\n", 2, "metrics.listen_host",
     "not an IPv4/IPv6 address: 'localhost'"),
    ("metrics-unknown-key", "metrics:\n  port: 9108\n  listen_hots: 0.0.0.0\n", 3, "metrics.listen_hots",
     "unknown key 'listen_hots' (did you mean 'listen_host'?); allowed keys: listen_host, port"),
    ("metrics-not-mapping", "metrics: 9108\n", 1, "metrics", "expected a mapping, got an integer ('9108')"),
]


@pytest.mark.parametrize(("text", "line", "field", "fragment"),
                         [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config(tmp_path: Path, text: str, line: int, field: str | None, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    assert fragment in err.message
    prefix = f"{path}:{line}: " + (f"{field}: " if field else "")
    assert str(err) == prefix + err.message


def test_metrics_section() -> None:
    assert (Config().metrics_host, Config().metrics_port) == ("127.0.0.1", 9108)  # loopback by default
    cfg = parse_config("metrics:\n  listen_host: '::'\n  port: 9200\n")
    assert (cfg.metrics_host, cfg.metrics_port) == ("::", 9200)
    assert parse_config("metrics:\n  port: 0\n").metrics_port == 0  # 0 = exporter disabled
    assert parse_config("metrics:\n  listen_host: 0.0.0.0\n").metrics_port == 9108
    assert parse_config("metrics:\n") == parse_config("{}")


def test_python_tag_is_rejected_without_executing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    calls: list[object] = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    path = write(tmp_path, f"state_dir: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.line, info.value.field) == (1, "state_dir")
    assert "tag '!!python/object/apply:os.system' is not allowed" in info.value.message
    assert calls == [] and not marker.exists()


def test_tag_under_unknown_key_still_rejected_first() -> None:
    with pytest.raises(ConfigError, match="is not allowed") as info:
        parse_config("x: 1\nbogus:\n  - !!python/name:os.system ''\n")
    assert (info.value.line, info.value.field) == (3, "bogus[0]")


def test_token_value_never_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("api:\n  token: 'secret with spaces'\n")
    assert "secret" not in str(info.value)


def test_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: file not found"
    assert info.value.line is None and info.value.field is None


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(tmp_path)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: chmod 000 does not stop root, and tests may run as root."""
    import controller.config as config_module

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    path = write(tmp_path, "{}\n")
    monkeypatch.setattr(config_module, "open", deny, raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read file: permission denied"


def test_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match=r"file is larger than 1 MiB \(1048577 bytes\)"):
        load_config(path)
    path.write_bytes(b"#" * MAX_FILE_BYTES)  # exactly at the limit is fine
    assert load_config(path).devices == ()


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"api:\n  token: \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 2 and "not valid UTF-8" in info.value.message


def test_aliases_cannot_expand() -> None:
    bomb = 'a: &a ["x","x"]\nb: &b [*a,*a]\nc: &c [*b,*b]\n'
    with pytest.raises(ConfigError, match="aliases are not allowed"):
        parse_config(bomb)


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_config("x: " + "[" * 100_000)


def test_optional_keys_without_value_mean_unset() -> None:
    cfg = parse_config("api:\n  token:\nforwarding:\ndevices:\n  - {name: a, mac: '00:00:00:00:00:02', ip: }\n")
    assert cfg.api_token is None and cfg.idle_timeout == 10
    assert cfg.devices == (Device("a", "00:00:00:00:00:02", (), ()),)


def test_error_str_and_pickle() -> None:
    err = ConfigError("cfg.yaml", 3, "devices[2].mac", "bad")
    assert str(err) == "cfg.yaml:3: devices[2].mac: bad"
    assert str(ConfigError("cfg.yaml", None, None, "file not found")) == "cfg.yaml: file not found"
    assert str(ConfigError("cfg.yaml", 7, None, "oops")) == "cfg.yaml:7: oops"
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.line, again.field, again.message) == ("cfg.yaml", 3, "devices[2].mac", "bad")
