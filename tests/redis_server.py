"""A Redis server of the test session's own, on a free port.

Tests never flush, stop or restart a server they did not start: the machine's
Redis may be shared with other suites and people. This one keeps nothing on disk
and dies with the session."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The Redis databases the real stacks' brokers take in turn (db 0 stays the tests' own, redis_url). Kept here,
# not in tests/e2e/conftest.py: pytest imports that conftest as `e2e.conftest` while the sweeps' and web tests
# import it as `tests.e2e.conftest`, two modules with a counter each, so two live stacks once shared db 1 and
# one's worker ran the other's ticks (a sweep "done" with a trial that never got its run).
STACK_REDIS_DBS = itertools.cycle(range(1, 16))


class PrivateRedis:
    """One redis-server process; `restart()` keeps its port, as a supervised broker would."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="caddie-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--logfile", f"{self.dir}/redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        end = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"redis-server did not come up on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self, down_s: float = 0.5) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
