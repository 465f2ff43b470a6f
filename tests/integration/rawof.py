"""A hand-made OpenFlow 1.3 "switch" over TCP, and a controller process on loopback.

No Open vSwitch or Mininet: `RawSwitch` speaks just enough of the protocol (HELLO,
FEATURES, barrier and multipart answers) to be a connected switch, and sends any
bytes a test wants.  `ControllerProcess` runs `iotguard run` on free loopback ports
with a temporary state directory and ends it by PID.  Every socket operation has a
timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
V = 4   # OpenFlow 1.3

HELLO, ERROR, ECHO_REQUEST, ECHO_REPLY, FEATURES_REQUEST, FEATURES_REPLY = 0, 1, 2, 3, 5, 6
PACKET_IN, FLOW_REMOVED, PORT_STATUS, PACKET_OUT, FLOW_MOD = 10, 11, 12, 13, 14
MULTIPART_REQUEST, MULTIPART_REPLY, BARRIER_REQUEST, BARRIER_REPLY = 18, 19, 20, 21
MP_FLOW, MP_PORT_STATS, MP_PORT_DESC = 1, 4, 13

SOCK_TIMEOUT = 5.0


# The messages (sent after HELLO and the FEATURES reply).
NO_IN_PORT = bytes.fromhex(
    "040a004c0000000cffffffff002a000110c601000000000000010004000000000000ffffffffffff02000000010108"
    "0600010800060400010200000001010a0009010000000000000a000902")
ALL_ONES_REMOVED = bytes.fromhex(
    "040b00400000200210c6030000ffffff006400010000000100000000000a0000ffffffffffffffffffffffffffffffff"
    "0001000c800000040000000100000000")
ALL_ONES = 2 ** 64 - 1


def header(msg_type: int, length: int, xid: int, version: int = V) -> bytes:
    return struct.pack("!BBHI", version, msg_type, length, xid)


def message(msg_type: int, body: bytes = b"", xid: int = 0) -> bytes:
    return header(msg_type, 8 + len(body), xid) + body


def oxm(field: int, value: bytes) -> bytes:
    return struct.pack("!HBB", 0x8000, field << 1, len(value)) + value


def match(*oxms: bytes) -> bytes:
    fields = b"".join(oxms)
    length = 4 + len(fields)
    return struct.pack("!HH", 1, length) + fields + b"\0" * ((8 - length % 8) % 8)


def in_port_oxm(port: int) -> bytes:
    return oxm(0, struct.pack("!I", port))


def mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def arp_frame(src: str, spa: str, tpa: str, dst: str = "ff:ff:ff:ff:ff:ff") -> bytes:
    ip = lambda s: bytes(map(int, s.split(".")))  # noqa: E731
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac(src), ip(spa), b"\0" * 6, ip(tpa))
    return mac(dst) + mac(src) + b"\x08\x06" + body


def packet_in(frame: bytes, port: int | None = 1, xid: int = 0, oxms: bytes | None = None,
              total_len: int | None = None) -> bytes:
    """OFPT_PACKET_IN, no buffer, reason no-match, table 0; `oxms` replaces the in_port OXM."""
    fields = in_port_oxm(port) if oxms is None and port is not None else (oxms or b"")
    body = struct.pack("!IHBBQ", 0xFFFFFFFF, len(frame) if total_len is None else total_len, 0, 0, 0)
    body += match(fields) if fields or oxms is not None or port is None else match()
    body += b"\0\0" + frame
    return message(PACKET_IN, body, xid)


def flow_removed(cookie: int, packets: int, nbytes: int, xid: int = 0, fields: bytes | None = None) -> bytes:
    body = struct.pack("!QHBBIIHHQQ", cookie, 100, 0, 0, 1, 0, 10, 0, packets, nbytes)
    body += match(in_port_oxm(1) if fields is None else fields)
    return message(FLOW_REMOVED, body, xid)


def multipart_reply(mp_type: int, body: bytes, xid: int, more: bool = False) -> bytes:
    return message(MULTIPART_REPLY, struct.pack("!HH4x", mp_type, 1 if more else 0) + body, xid)


def flow_stats_entry(cookie: int, packets: int, nbytes: int, duration: int = 1) -> bytes:
    m = match(in_port_oxm(1))
    return struct.pack("!HBxIIHHHH4xQQQ", 48 + len(m), 1, duration, 0, 200, 10, 0, 1,
                       cookie, packets, nbytes) + m


def port_desc(port: int) -> bytes:
    return struct.pack("!I4x6s2x16sIIIIIIII", port, bytes(6), f"p{port}".encode(), 0, 0,
                       0, 0, 0, 0, 0, 0)


class RawSwitch:
    """One switch connection.  `handshake()` completes HELLO and FEATURES; `pump()` reads
    what the controller sent, answering barriers and port-desc requests on the way."""

    def __init__(self, port: int, dpid: int = 1, host: str = "127.0.0.1", ports=(1, 2, 3)) -> None:
        self.sock = socket.create_connection((host, port), timeout=SOCK_TIMEOUT)
        self.sock.settimeout(SOCK_TIMEOUT)
        self.dpid = dpid
        self.ports = ports
        self.buf = b""
        self.received: list[tuple[int, int, bytes]] = []   # (type, xid, whole message)
        self.xid = 0x1000
        self.replies: dict[int, bytes] = {}   # multipart type -> the reply body to answer with (tests' hook)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def next_xid(self) -> int:
        self.xid += 1
        return self.xid

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_one(self, deadline: float) -> tuple[int, int, bytes] | None:
        while True:
            if len(self.buf) >= 8:
                length = struct.unpack_from("!H", self.buf, 2)[0]
                if length < 8:
                    raise AssertionError(f"controller sent a message of length {length}")
                if len(self.buf) >= length:
                    msg, self.buf = self.buf[:length], self.buf[length:]
                    return msg[1], struct.unpack_from("!I", msg, 4)[0], msg
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, SOCK_TIMEOUT))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                raise ConnectionError("controller closed the connection")
            self.buf += chunk

    def _answer(self, t: int, xid: int, msg: bytes) -> None:
        if t == BARRIER_REQUEST:
            self.send(message(BARRIER_REPLY, b"", xid))
        elif t == ECHO_REQUEST:
            self.send(message(ECHO_REPLY, msg[8:], xid))
        elif t == MULTIPART_REQUEST:
            mp = struct.unpack_from("!H", msg, 8)[0]
            if mp in self.replies:
                self.send(multipart_reply(mp, self.replies[mp], xid))
            elif mp == MP_PORT_DESC:
                self.send(multipart_reply(MP_PORT_DESC, b"".join(port_desc(p) for p in self.ports), xid))
            elif mp == MP_FLOW:
                self.send(multipart_reply(MP_FLOW, b"", xid))
            elif mp == MP_PORT_STATS:
                self.send(multipart_reply(MP_PORT_STATS, b"", xid))

    def pump(self, seconds: float = 0.3, until=None) -> list[tuple[int, int, bytes]]:
        """Read for up to `seconds` (or until `until(type, xid, msg)` is true); answer requests."""
        deadline = time.monotonic() + seconds
        got = []
        while True:
            one = self._read_one(deadline)
            if one is None:
                return got
            got.append(one)
            self.received.append(one)
            self._answer(*one)
            if until is not None and until(*one):
                return got

    def handshake(self) -> None:
        t, _, _ = self._read_one(time.monotonic() + SOCK_TIMEOUT) or (None, None, None)
        assert t == HELLO, f"expected HELLO, got {t}"
        self.send(message(HELLO, b"", 1))
        got = self.pump(SOCK_TIMEOUT, until=lambda t, x, m: t == FEATURES_REQUEST)
        assert got and got[-1][0] == FEATURES_REQUEST, "no FEATURES_REQUEST"
        body = struct.pack("!QIBB2xII", self.dpid, 0, 254, 0, 0x4F, 0)
        self.send(message(FEATURES_REPLY, body, got[-1][1]))
        # the pipeline: deletes, meters, flows and a barrier; then a port-desc request
        self.pump(SOCK_TIMEOUT, until=lambda t, x, m: t == MULTIPART_REQUEST
                  and struct.unpack_from("!H", m, 8)[0] == MP_PORT_DESC)
        self.pump(0.3)

    def barrier(self, timeout: float = 3.0) -> bool:
        """Does the controller answer our barrier request?  (A controller never should be asked
        one by a switch, but os-ken's event loop must keep running: we check the echo instead.)"""
        xid = self.next_xid()
        self.send(message(ECHO_REQUEST, b"ping", xid))
        got = self.pump(timeout, until=lambda t, x, m: t == ECHO_REPLY and x == xid)
        return bool(got) and got[-1][0] == ECHO_REPLY and got[-1][1] == xid

    def forwards(self, src: str = "00:00:00:00:00:21", timeout: float = 3.0, port: int = 2) -> bool:
        """Does a normal packet-in (an ARP who-has) come back as a packet-out of that frame?
        (LLDP probes are packet-outs too: the frame, with its source MAC, tells them apart.)"""
        frame = arp_frame(src, "10.0.0.21", "10.0.0.99")
        self.send(packet_in(frame, port=port, xid=self.next_xid()))
        got = self.pump(timeout, until=lambda t, x, m: t == PACKET_OUT and m.endswith(frame))
        return bool(got) and got[-1][0] == PACKET_OUT and got[-1][2].endswith(frame)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ControllerProcess:
    """`iotguard run` on loopback; `stop()` ends it by PID (call it in `finally`)."""

    def __init__(self, env: dict | None = None, config: str = "", metrics_port: int = 0) -> None:
        self.dir = tempfile.mkdtemp(prefix="iotguard-fuzz-")
        self.ofp_port, self.api_port = free_port(), free_port()
        self.metrics_port = metrics_port
        cfg = os.path.join(self.dir, "config.yaml")
        with open(cfg, "w") as f:
            f.write(config or "poll_interval: 1.0\nlldp_interval: 1.0\n")
            f.write(f"metrics: {{listen_host: 127.0.0.1, port: {metrics_port}}}\n"
                    "openflow: {listen_host: 127.0.0.1}\n")
        self.log_path = os.path.join(self.dir, "controller.log")
        self.log = open(self.log_path, "wb")
        full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.api.cli", "run", "--config", cfg,
             "--ofp-port", str(self.ofp_port), "--api-port", str(self.api_port),
             "--state-dir", os.path.join(self.dir, "state"), "--log-level", "INFO"],
            stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
        self.token = None

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited: {self.tail()}")
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"controller not ready: {self.tail()}")

    def _token(self) -> str:
        if self.token is None:
            with open(os.path.join(self.dir, "state", "api-token")) as f:
                token = f.read().strip()
            if len(token) < 16:      # not there yet: never cache a partial read
                raise FileNotFoundError("api-token not written yet")
            self.token = token
        return self.token

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self._token()}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def health(self) -> dict:
        return self.api("GET", "/api/v1/health")

    def threads(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for ln in f:
                if ln.startswith("Threads:"):
                    return int(ln.split()[1])
        raise RuntimeError("no Threads line")

    def tail(self, n: int = 4000) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.log.close()

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
