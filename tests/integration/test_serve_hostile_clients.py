"""The attacks that broke the stdlib server, replayed byte for byte against a real ``coordinator-stub serve``.

Framing (request smuggling through Content-Length/Transfer-Encoding, malformed
and conflicting lengths, chunked bodies), errors in the contract's JSON shape
for every refusal, slow clients (a trickled head, a trickled body, idle
connections), descriptor exhaustion by half-sent unauthenticated requests, and
the graceful stop while a client trickles. Each probe talks raw TCP, so
nothing between the test and the server fixes the bytes up.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from jsonschema import Draft202012Validator

from tests.stubutil import STUB_ARGV, RunningStub, running_stub, stub_env

TOKEN = "hostile-probe-token"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"
OPENAPI = yaml.safe_load((Path(__file__).parents[2] / "docs" / "openapi.yaml").read_text())
ERROR = Draft202012Validator({**OPENAPI, "$ref": "#/components/schemas/Error"})
WAIT_S = 30.0  # an upper bound on waiting for the server to act, never a speed requirement


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStub]:
    with running_stub(tmp_path_factory.mktemp("hostile") / "coord", token=TOKEN, lease_ttl_s=600,
                      extra_args=["--header-timeout", "1", "--body-timeout", "1", "--keep-alive", "1"]) as s:
        yield s


def address(stub: RunningStub) -> tuple[str, int]:
    host, port = stub.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def exchange(stub: RunningStub, data: bytes, half_close: bool = False) -> bytes:
    """Send raw bytes; read until the server closes (or WAIT_S passes)."""
    with socket.create_connection(address(stub), timeout=WAIT_S) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_to_close(sock)


def read_to_close(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of responses (each with Content-Length) into (status, headers, body)."""
    out = []
    rest = raw
    while rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        rest = rest[n:]
    return out


def one_json_error(raw: bytes, status: int) -> dict[str, Any]:
    """Exactly one answer: ``status``, the contract's error body, and the connection closed after it."""
    got = responses(raw)
    assert len(got) == 1, raw
    code, headers, body = got[0]
    assert code == status, raw
    assert headers["content-type"] == "application/json"
    assert headers.get("connection") == "close"
    doc: dict[str, Any] = json.loads(body)
    ERROR.validate(doc)
    return doc


def post(path: str, body: bytes, *headers: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\n{AUTH}" + "".join(h + "\r\n" for h in headers)
            + "\r\n").encode() + body


def jobs(stub: RunningStub) -> list[str]:
    r = requests.get(stub.url + "/v1/fleet/jobs", headers=stub.headers(), timeout=WAIT_S)
    return [v["job"]["id"] for v in r.json()["jobs"]]


# ------------------------------------------------------------------ framing


def test_content_length_with_transfer_encoding_is_refused_and_nothing_is_smuggled(stub: RunningStub) -> None:
    smuggled = f"POST /v1/fleet/jobs HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Length: 39\r\n\r\n".encode() + \
        b'{"id": "smuggled", "command": ["true"]}'
    body = b"0\r\n\r\n" + smuggled
    raw = exchange(stub, post("/v1/fleet/jobs", body, f"Content-Length: {len(body)}", "Transfer-Encoding: chunked"))
    err = one_json_error(raw, 400)
    assert "Transfer-Encoding" in err["error"]["message"]
    assert "smuggled" not in jobs(stub)
    # The other order of the two headers, and the same with the lengths the other way round.
    raw = exchange(stub, post("/v1/fleet/jobs", body, "Transfer-Encoding: chunked", f"Content-Length: {len(body)}"))
    one_json_error(raw, 400)
    raw = exchange(stub, post("/v1/fleet/jobs", b"3\r\nabc\r\n0\r\n\r\n" + smuggled, "Content-Length: 3",
                              "Transfer-Encoding: chunked"))
    one_json_error(raw, 400)
    assert "smuggled" not in jobs(stub)


@pytest.mark.parametrize("lengths", [
    ["+2"], ["1_0"], ["0x2"], ["-1"], ["2 2"], ["2, 3"], ["2", "3"], ["99999999999999999999999"], [""],
], ids=lambda v: repr(v))
def test_malformed_or_conflicting_content_length_is_refused(stub: RunningStub, lengths: list[str]) -> None:
    raw = exchange(stub, post("/v1/fleet/claim", b'{}' + b"GET /v1/fleet/status HTTP/1.1\r\n\r\n",
                              *(f"Content-Length: {v}" for v in lengths)))
    one_json_error(raw, 400)


@pytest.mark.parametrize("encoding", [["gzip"], ["chunked", "chunked"], ["gzip, chunked"], ["identity"]],
                         ids=lambda v: repr(v))
def test_a_transfer_coding_other_than_one_chunked_is_refused(stub: RunningStub, encoding: list[str]) -> None:
    raw = exchange(stub, post("/v1/fleet/claim", b"0\r\n\r\n", *(f"Transfer-Encoding: {v}" for v in encoding)))
    one_json_error(raw, 501)


def test_chunked_bodies_are_decoded_and_the_connection_stays_in_step(stub: RunningStub) -> None:
    spec = b'{"id": "chunky", "command": ["true"], "priority": 3}'
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(spec[i:i + 7]), spec[i:i + 7]) for i in range(0, len(spec), 7))
    data = post("/v1/fleet/jobs", chunked + b"0\r\n\r\n", "Transfer-Encoding: chunked")
    then = f"GET /v1/fleet/jobs/chunky HTTP/1.1\r\nHost: t\r\n{AUTH}Connection: close\r\n\r\n".encode()
    got = responses(exchange(stub, data + then))
    assert [g[0] for g in got] == [201, 200]
    assert json.loads(got[1][2])["job"]["priority"] == 3


def test_a_bad_chunk_is_a_json_400_and_changes_nothing(stub: RunningStub) -> None:
    raw = exchange(stub, post("/v1/fleet/jobs", b"zz\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked"))
    one_json_error(raw, 400)


# ------------------------------------------------------------------ every error is JSON


@pytest.mark.parametrize(("data", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /v1/fleet/status HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", 400),
    (b"GET /v1/fleet/status HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 431),
    (b"GET /v1/fleet/status HTTP/9.9\r\nHost: t\r\n\r\n", 505),
    (b"GET /v1/fleet/status HTTP/1.1\r\n\r\n", 400),
], ids=["garbage", "header-without-colon", "huge-header", "huge-target", "bad-version", "no-host"])
def test_refused_requests_get_the_contract_s_json_error(stub: RunningStub, data: bytes, status: int) -> None:
    one_json_error(exchange(stub, data), status)


@pytest.mark.parametrize(("request_line", "status", "code"), [
    ("GET /nowhere", 404, "not_found"),
    ("GET /static/none.js", 404, "not_found"),
    ("FROB /v1/fleet/status", 405, "method_not_allowed"),
    ("DELETE /v1/fleet/jobs", 405, "method_not_allowed"),
    ("GET /v1/fleet", 404, "not_found"),
])
def test_routes_the_app_refuses_answer_json(stub: RunningStub, request_line: str, status: int, code: str) -> None:
    raw = exchange(stub, f"{request_line} HTTP/1.1\r\nHost: t\r\n{AUTH}Connection: close\r\n\r\n".encode())
    (got_status, headers, body), = responses(raw)
    assert got_status == status and headers["content-type"] == "application/json"
    doc = json.loads(body)
    ERROR.validate(doc)
    assert doc["error"]["code"] == code


# ------------------------------------------------------------------ slow clients


def test_a_trickled_head_is_cut_with_a_json_408(stub: RunningStub) -> None:
    with socket.create_connection(address(stub), timeout=WAIT_S) as sock:
        sock.sendall(b"GET /v1/fleet/healthz HTTP/1.1\r\n")
        deadline = time.monotonic() + WAIT_S
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while time.monotonic() < deadline:  # one header byte at a time, never the blank line
                sock.sendall(b"X")
                if sock_closed_or_answered(sock):
                    break
        raw = read_to_close(sock)
    one_json_error(raw, 408)


def test_a_trickled_body_is_cut_with_a_json_408(stub: RunningStub) -> None:
    with socket.create_connection(address(stub), timeout=WAIT_S) as sock:
        sock.sendall(post("/v1/fleet/claim", b'{"factoryId"', "Content-Length: 1000"))
        deadline = time.monotonic() + WAIT_S
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while time.monotonic() < deadline:
                sock.sendall(b" ")
                if sock_closed_or_answered(sock):
                    break
        raw = read_to_close(sock)
    assert "body" in one_json_error(raw, 408)["error"]["message"]


def test_an_idle_keep_alive_connection_is_closed_after_its_answers(stub: RunningStub) -> None:
    with socket.create_connection(address(stub), timeout=WAIT_S) as sock:
        for _ in range(3):  # kept alive between requests...
            sock.sendall(f"GET /v1/fleet/status HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n".encode())
            assert read_response(sock)[0] == 200
        assert read_to_close(sock) == b""  # ...and closed once idle for --keep-alive


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Exactly one response (with Content-Length) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head = data.partition(b"\r\n\r\n")[0]
    n = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))  # type: ignore[union-attr]
    while len(data) - len(head) - 4 < n:
        data += sock.recv(65536)
    return responses(data)[0]


def test_a_connection_that_never_speaks_is_closed(stub: RunningStub) -> None:
    with socket.create_connection(address(stub), timeout=WAIT_S) as sock:
        assert read_to_close(sock) == b""  # closed by the server, not by the test's timeout (that would raise)


def sock_closed_or_answered(sock: socket.socket, wait_s: float = 0.2) -> bool:
    """Whether the server sent something (or closed) within ``wait_s``; reads nothing."""
    import select

    readable, _, _ = select.select([sock], [], [], wait_s)
    return bool(readable)


def test_an_unauthorised_request_is_answered_and_its_connection_closed(stub: RunningStub) -> None:
    data = b"POST /v1/fleet/claim HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{"
    with socket.create_connection(address(stub), timeout=WAIT_S) as sock:
        sock.sendall(data)  # the body never comes: the 401 does not wait for it
        raw = read_to_close(sock)
    assert one_json_error(raw, 401)["error"]["code"] == "unauthorized"


# ------------------------------------------------------------------ many connections


def half_sent(stub: RunningStub, n: int) -> list[socket.socket]:
    """``n`` connections, each with an unauthenticated request head that never ends."""
    socks = []
    for _ in range(n):
        try:
            sock = socket.create_connection(address(stub), timeout=WAIT_S)
        except OSError:
            break
        with contextlib.suppress(OSError):
            sock.sendall(b"POST /v1/fleet/claim HTTP/1.1\r\nHost: t\r\nContent-Le")
        socks.append(sock)
    return socks


def cpu_seconds(pid: int) -> float | None:
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return None  # not Linux: no cheap way to read another process's CPU time
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(__import__("os").sysconf("SC_CLK_TCK"))


def test_half_sent_requests_past_the_descriptor_limit_never_starve_an_authorised_factory(tmp_path: Path) -> None:
    with running_stub(tmp_path / "coord", token=TOKEN, fd_limit=256, extra_args=["--header-timeout", "120"]) as s:
        with requests.Session() as factory:  # an authorised keep-alive connection, open before the flood
            factory.headers.update(s.headers())
            assert factory.get(s.url + "/v1/fleet/status", timeout=WAIT_S).status_code == 200
            flood = half_sent(s, 400)  # past the server's 256 descriptors
            try:
                assert len(flood) == 400
                cpu_before, t0 = cpu_seconds(s.proc.pid), time.monotonic()
                for i in range(20):  # the old connection, and fresh ones, are all served
                    assert factory.get(s.url + "/v1/fleet/status", timeout=WAIT_S).status_code == 200
                    r = requests.post(s.url + "/v1/fleet/jobs", json={"id": f"during-{i}", "command": ["true"]},
                                      headers=s.headers(), timeout=WAIT_S)
                    assert r.status_code == 201, r.text
                time.sleep(1.0)
                cpu_after, elapsed = cpu_seconds(s.proc.pid), time.monotonic() - t0
                if cpu_before is not None and cpu_after is not None:  # no core spinning on a full accept queue
                    assert cpu_after - cpu_before < 0.5 * elapsed + 0.5, (cpu_before, cpu_after, elapsed)
                answered = sum(1 for sock in flood if sock_closed_or_answered(sock, 0))
                assert answered >= 400 - 256, "connections over the bound were closed"
            finally:
                for sock in flood:
                    sock.close()
        assert s.proc.poll() is None
        assert not [ln for ln in s.stderr_lines if "Too many open files" in ln], s.stderr_lines[-5:]


def test_when_every_slot_is_authorised_a_newcomer_gets_a_json_503(tmp_path: Path) -> None:
    with running_stub(tmp_path / "coord", token=TOKEN, extra_args=["--max-connections", "3"]) as s:
        sessions = [requests.Session() for _ in range(3)]
        try:
            for h in sessions:
                assert h.get(s.url + "/v1/fleet/status", headers=s.headers(), timeout=WAIT_S).status_code == 200
            raw = exchange(s, f"GET /v1/fleet/status HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n".encode())
            assert one_json_error(raw, 503)["error"]["code"] == "too_many_connections"
            for h in sessions:  # the authorised ones were kept
                assert h.get(s.url + "/v1/fleet/status", headers=s.headers(), timeout=WAIT_S).status_code == 200
        finally:
            for h in sessions:
                h.close()


# ------------------------------------------------------------------ stopping


def test_sigterm_stops_within_the_grace_while_clients_trickle(tmp_path: Path) -> None:
    grace = 2.0
    with running_stub(tmp_path / "coord", token=TOKEN,
                      extra_args=["--grace", str(grace), "--body-timeout", "600", "--header-timeout", "600"]) as s:
        body = socket.create_connection(address(s), timeout=WAIT_S)
        head = socket.create_connection(address(s), timeout=WAIT_S)
        idle = socket.create_connection(address(s), timeout=WAIT_S)
        try:
            body.sendall(post("/v1/fleet/claim", b"{", "Content-Length: 100000"))
            head.sendall(b"GET /v1/fleet/status HTTP/1.1\r\nHost: t\r\n")
            idle.sendall(f"GET /v1/fleet/healthz HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n".encode())
            assert read_response(idle)[0] == 200
            body.sendall(b" ")
            s.proc.send_signal(signal.SIGTERM)
            stopped_at = None
            deadline = time.monotonic() + grace + WAIT_S
            while time.monotonic() < deadline and s.proc.poll() is None:
                with contextlib.suppress(OSError):
                    body.sendall(b" ")  # still trickling
                time.sleep(0.1)
            stopped_at = s.proc.poll()
            assert stopped_at == 0, s.stderr_lines[-10:]
        finally:
            for sock in (body, head, idle):
                sock.close()


# ------------------------------------------------------------------ what stays the same


def test_the_seam_imports_no_web_framework(tmp_path: Path) -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['coordinator-stub', '--state', sys.argv[1], 'call', 'GET', '/v1/fleet/status']\n"
        "try:\n    runpy.run_module('coordinator_stub', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = ('starlette', 'uvicorn', 'h11', 'anyio', 'prometheus_client', 'coordinator_stub.web')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], capture_output=True, env=stub_env(),
                          stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines()[-1] == "[]"


def test_serve_without_the_web_stack_says_what_to_install(tmp_path: Path) -> None:
    code = ("import sys\nsys.modules['uvicorn'] = None\n"  # an import of uvicorn now fails as if it were missing
            "from coordinator_stub.cli import main\n"
            "sys.exit(main(['--state', sys.argv[1], 'serve', '--port', '0']))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], capture_output=True, text=True,
                          env=stub_env(), stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"pip install 'agent-queue\[serve\]'", lines[0]), proc.stderr
    assert "uvicorn" in lines[0]
    assert not (tmp_path / "c").exists(), "nothing written"


def test_a_busy_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([*STUB_ARGV, "--state", str(tmp_path / "c"), "serve", "--port", str(port)],
                              capture_output=True, text=True, env=stub_env(), stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
