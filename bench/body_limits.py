"""Eight 1 GB request bodies at once against a real uvicorn API: its peak RSS (issue 17 item 4).

    python bench/body_limits.py [--out bench/results/body_limits.md]

Starts the API (uvicorn, one process, default settings) on a fresh PostgreSQL database of the
shared server (created and dropped here), then sends, all at once, eight 1 GB bodies over raw
sockets, two of each kind: authenticated POST /api/v1/runs with Content-Length, authenticated
chunked POST /api/v1/runs (no Content-Length), unauthenticated POST /api/v1/tokens with
Content-Length, unauthenticated chunked POST /api/v1/runs. Each client sends 1 MiB pieces until
the server answers or closes. The figure is the API's peak RSS (VmHWM of the uvicorn process).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service.core.db import get_sessionmaker  # noqa: E402
from service.teams import accounts  # noqa: E402
from tests.fresh_db import fresh_database  # noqa: E402

GB = 10**9
PIECE = b"x" * (1 << 20)


def _rss_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def send_body(port: int, path: str, token: str | None, chunked: bool, out: list[str]) -> None:
    """Send a 1 GB body; record the status the server answered and how much it took first."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {GB}\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    sent = 0
    status = "none"
    try:
        sock.sendall((head + "\r\n").encode())
        sock.setblocking(False)
        while sent < GB:
            piece = b"%x\r\n%s\r\n" % (len(PIECE), PIECE) if chunked else PIECE
            view = memoryview(piece)
            while view:
                try:
                    view = view[sock.send(view):]
                except BlockingIOError:
                    if _answered(sock):
                        raise StopIteration from None
                    time.sleep(0.001)
            sent += len(PIECE)
            if _answered(sock):
                break
    except (StopIteration, BrokenPipeError, ConnectionResetError):
        pass
    sock.setblocking(True)
    sock.settimeout(10)
    try:
        data = sock.recv(4096)
        status = data.split(b" ")[1].decode() if data else "closed"
    except OSError as exc:
        status = type(exc).__name__
    sock.close()
    out.append(f"| POST {path} | {'chunked' if chunked else 'Content-Length 1 GB'} | {'yes' if token else 'no'} | {status} | {sent / 2**20:.0f} MiB |")


def _answered(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    except OSError:
        return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/body_limits.md")
    args = parser.parse_args()
    with fresh_database() as url:
        with get_sessionmaker(url)() as session:
            team = accounts.create_team(session, "bench")
            user = accounts.create_user(session, "bench")
            accounts.add_member(session, team, user)
            token = accounts.create_token(session, user, "bench")[1]
            session.commit()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        home = Path(os.environ.get("TMPDIR", "/tmp")) / f"caddie-bench-limits-{os.getpid()}"
        env = {**os.environ, "CADDIE_DATABASE_URL": url, "CADDIE_HOME": str(home)}
        api = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app", "--port", str(port), "--log-level", "warning"],
                               cwd=REPO, env=env)
        try:
            for _ in range(200):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            idle = _rss_mib(api.pid, "VmRSS")
            rows: list[str] = []
            kinds = [("/api/v1/runs", token, False), ("/api/v1/runs", token, True), ("/api/v1/tokens", None, False), ("/api/v1/runs", None, True)] * 2
            threads = [threading.Thread(target=send_body, args=(port, path, tok, chunked, rows)) for path, tok, chunked in kinds]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.monotonic() - started
            peak = _rss_mib(api.pid, "VmHWM")
            after = httpx.get(f"http://127.0.0.1:{port}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).status_code
        finally:
            api.terminate()
            api.wait(10)
    text = f"""# Eight 1 GB request bodies at once (issue 17 item 4)

Command: `.venv/bin/python bench/body_limits.py` (one uvicorn API process, default settings:
CADDIE_MAX_BODY_BYTES 1,048,576; POST /runs up to max_request_bytes, the script files' limit in base64).
Machine: {os.cpu_count()} CPUs shared with other work, PostgreSQL 127.0.0.1:5432.

- API RSS idle: **{idle:.0f} MiB**; peak (VmHWM) over the eight bodies: **{peak:.0f} MiB** (limit asked: under 500 MB).
- All eight answered in {took:.1f} s; the API then answered GET /users/me with {after}.

| request | body | token | answer | sent before the answer |
|---|---|---|---|---|
{chr(10).join(sorted(rows))}

"Sent" counts what the client pushed into its socket before the answer or a reset; the kernel's
socket buffers hold part of it, the API reads none of a refused Content-Length body and at most
its limit of a chunked one. Before this change one 1 GB body took an API worker from 323 MiB to 3,139 MiB.
"""
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
