"""Limits before work (issue 17 item 4): a real uvicorn answers 413 and 401 before it reads a body.

Raw sockets, so the test controls what is sent: a request announces a body it never sends (or
sends only part of), and the answer must come anyway: proof the server did not wait to read it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from service.api.app import create_app
from service.core.settings import Settings
from tests.world import World

LIMIT = 4096


@pytest.fixture
def server(settings: Settings, world: World) -> Iterator[int]:
    app = create_app(settings.model_copy(update={"max_body_bytes": LIMIT}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    thread.join(10)


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head + rest


def _request(port: int, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    """Send the head (and ``body``, possibly less than announced) and read the status line."""
    sock = socket.create_connection(("127.0.0.1", port))
    with sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock.sendall(head.encode() + body)
        return _answer(sock)


def test_content_length_over_limit_is_413_unread(server: int, world: World) -> None:
    # 1 GB announced, nothing sent: the answer comes without waiting for it.
    status, raw = _request(server, "/api/v1/tokens", {**world.h("alice"), "Content-Type": "application/json", "Content-Length": str(10**9)})
    assert status == 413
    assert f"over {LIMIT} bytes".encode() in raw


def test_run_submission_has_the_larger_script_limit(server: int, world: World, settings: Settings) -> None:
    # A body the small limit refuses is allowed on POST /runs (script files), up to max_request_bytes.
    status, _ = _request(server, "/api/v1/runs", {**world.h("alice"), "Content-Type": "application/json", "Content-Length": "10"}, b"{}" + b" " * 8)
    assert status == 422  # read and parsed: within the limit
    status, raw = _request(server, "/api/v1/runs", {**world.h("alice"), "Content-Length": str(settings.max_request_bytes + 1)})
    assert status == 413
    assert str(settings.max_request_bytes).encode() in raw


def test_chunked_body_over_limit_is_413_after_the_limit(server: int, world: World) -> None:
    sock = socket.create_connection(("127.0.0.1", server))
    with sock:
        head = "POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        head += f"Authorization: {world.h('alice')['Authorization']}\r\n\r\n"
        sock.sendall(head.encode())
        chunk = b"x" * 1024
        sent = 0
        status = None
        sock.settimeout(0.2)
        try:
            while sent < 10**8:  # far past the limit: the server must stop it long before
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break
                except (TimeoutError, BlockingIOError):
                    pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _ = _answer(sock)
    assert status == 413
    assert sent < 1024 * 1024  # refused near the 4 kB limit, not after the whole body


def test_chunked_body_within_limit_is_served(server: int, world: World) -> None:
    body = b'{"name": "ci"}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    status, _ = _request(server, "/api/v1/tokens", {**world.h("alice"), "Content-Type": "application/json", "Transfer-Encoding": "chunked"}, chunked)
    assert status == 201


@pytest.mark.parametrize("who", [None, "garbage", "carol"])  # none, unknown, revoked
def test_unauthenticated_body_is_401_unread(server: int, world: World, who: str | None) -> None:
    # A body within the limit is announced and never sent: the 401 must not wait for it.
    status, raw = _request(server, "/api/v1/runs", {**world.h(who), "Content-Type": "application/json", "Content-Length": "1000"})
    assert status == 401
    assert b"www-authenticate: bearer" in raw.lower()


def test_web_form_without_session_goes_to_signin_unread(server: int) -> None:
    status, raw = _request(server, "/runs/new", {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "1000"})
    assert status == 303
    assert b"location: /signin" in raw.lower()


def test_signin_is_read_without_a_session(server: int, world: World) -> None:
    body = f"token={world.tokens['alice']}".encode()
    status, raw = _request(server, "/signin", {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": str(len(body))}, body)
    assert status == 303
    assert b"set-cookie: caddie_session=" in raw.lower()  # the form was read and the token accepted


def test_a_submission_looks_its_token_up_once(settings: Settings, world: World, spec) -> None:  # noqa: ANN001
    """The limits sign a request with a body in before reading it; the route takes that caller
    instead of asking the database again (issue 23: a query and a thread hop per submit). The
    size check's and the quota's figures come with the team: a trainer submission reads the
    token, the team and its new runs back, nothing more."""
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    with TestClient(create_app(settings)) as client:
        # Not counted: the token's last_used_at (written once a minute) and the size check's first
        # reading of the team's figures (kept by the process until a run of the team succeeds).
        assert client.post("/api/v1/runs", json=spec(name="first"), headers=world.h("alice")).status_code == 201
        engine = client.app.state.sessionmaker.kw["bind"]  # type: ignore[attr-defined]
        reads: list[str] = []

        def count(conn, cursor, statement: str, *rest) -> None:  # noqa: ANN001, ANN002
            if statement.lstrip().upper().startswith("SELECT"):
                reads.append(statement)

        transactions: list[str] = []  # of the write sessions (the sign-in reads on an autocommit connection: no transaction)

        def transaction(name: str):  # noqa: ANN202
            return lambda conn, *a: transactions.append(name) if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT" else None

        hooks = {"before_cursor_execute": count, **{name: transaction(name) for name in ("begin", "commit", "rollback")}}
        for name, hook in hooks.items():
            event.listen(engine, name, hook)
        try:
            r = client.post("/api/v1/runs", json=spec(), headers=world.h("alice"))
            keyed = client.post("/api/v1/runs", json=spec(name="keyed"), headers={**world.h("alice"), "Idempotency-Key": "k-1"})
            replay = client.post("/api/v1/runs", json=spec(name="keyed"), headers={**world.h("alice"), "Idempotency-Key": "k-1"})
        finally:
            for name, hook in hooks.items():
                event.remove(engine, name, hook)
    assert r.status_code == 201 and keyed.status_code == 201 and replay.status_code == 201, (r.text, keyed.text, replay.text)
    assert r.json()["runs"][0]["user"] == "alice" and replay.json()["runs"] == keyed.json()["runs"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    first, second, third = reads[:3], reads[3:6], reads[6:]
    assert len([q for q in first if "FROM api_tokens" in q]) == 1 and len(first) == 3, reads
    assert "team_storage" in first[1] and "FROM teams" in first[1]
    # An Idempotency-Key costs no read of its own: whether it was used comes with the team (EXISTS) ...
    assert len(second) == 3 and "idempotency_key" in second[1], second
    # ... and only a retry reads the key's runs.
    assert "idempotency_key" in third[-1] and len(third) == 3, third
    # One transaction per submit: the new runs are read back inside it, not in a second one closed by a rollback.
    assert transactions == ["begin", "commit"] * 2 + ["begin", "rollback"], transactions  # the replay writes nothing
