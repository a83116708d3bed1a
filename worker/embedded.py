"""`caddie up`: the whole of caddie on one machine with the embedded defaults.

SQLite database (migrated to head), Kombu's SQLAlchemy broker on a SQLite file
(no server), the local launcher, the smoke corpus as the default training data.
Starts the API (uvicorn), a worker for the `runs` queue, a worker for the
`control` queue and beat as child processes; restarts a child that dies (as a
process supervisor would); stops everything on Ctrl-C, running trainers included
(their runs end CANCELLED, saying caddie was stopped).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from service.core.db import get_sessionmaker
from service.core.migrate import upgrade
from service.core.models import User
from service.core.settings import Settings
from service.teams.accounts import create_admin
from worker.launchers.local import LocalLauncher

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOKE_VOCAB = 1024
STOP_TIMEOUT_S = 20.0
# Checked by tests/cli/test_cli_tokens_teams.py: both commands must exist.
TOKEN_HINT = "caddie token create NAME --user USER` or, on this machine, `caddie admin create-token USER"
STOPPED_REASON = "stopped when caddie up was stopped (Ctrl-C)"
DOCTOR_HINT = "caddie doctor"  # checked by tests/cli/test_cli_doctor.py, as TOKEN_HINT


def embedded_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every child gets: the caller's, plus the embedded defaults for
    whatever the caller did not set (CADDIE_HOME made absolute)."""
    env = dict(os.environ if environ is None else environ)
    home = Path(env.get("CADDIE_HOME", ".caddie")).resolve()
    data = home / "data"
    env["CADDIE_HOME"] = str(home)
    env.setdefault("CADDIE_DATABASE_URL", f"sqlite:///{home / 'caddie.db'}")
    env.setdefault("CADDIE_BROKER_URL", f"sqla+sqlite:///{home / 'broker.sqlite'}")
    env.setdefault("CADDIE_LAUNCHER", "local")
    env.setdefault("CADDIE_ON_SUBMIT_HOOK", "worker.notify:runs_submitted")
    env.setdefault("CADDIE_DATA_ROOT", str(data))
    # What run_embedded builds (a smoke corpus per stack's vocabulary), so a spec for another variant is
    # refused at submit, naming the variants, instead of failing at its launch.
    env.setdefault("CADDIE_DATA_VARIANTS", ",".join(f"sp{v}" for v in smoke_vocabs()))
    env.setdefault("CADDIE_SCHEDULER_TICK_S", "2")
    env.setdefault("CADDIE_JANITOR_TICK_S", "10")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def ensure_smoke_corpus(data_path: Path, tokenizer_path: Path, out_dir: Path, vocab_size: int = SMOKE_VOCAB) -> bool:
    """Build the offline smoke corpus into out_dir unless its tokenizer and a val shard exist. True if built."""
    if tokenizer_path.is_file() and any(data_path.glob("fineweb_val_*.bin")):
        return False
    from trainer.data import build_smoke_corpus  # torch and sentencepiece: only when needed

    build_smoke_corpus(out_dir, vocab_size=vocab_size)
    return True


def smoke_vocabs() -> list[int]:
    """The vocabularies of the stack presets (sp1024 for 2026-03-23, sp8192 for the default 2026-04-27):
    a smoke corpus of each, so a spec of either stack finds its data variant."""
    from trainer.config import STACKS, TrainerConfig

    return sorted({TrainerConfig.for_stack(stack).vocab_size for stack in STACKS})


def ensure_admin(database_url: str) -> str | None:
    """Create team `default`, admin user `admin` and a token if the database has no user yet.
    Returns the new token (shown once), or None when users already exist."""
    with get_sessionmaker(database_url)() as session:
        if session.scalar(select(User.id).limit(1)) is not None:
            return None
        token = create_admin(session, "default", "admin", "caddie up")
        session.commit()
        return token


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


def child_commands(host: str, port: int, runs_concurrency: int) -> list[Child]:
    py = sys.executable
    celery = [py, "-m", "celery", "-A", "worker.celery_app"]
    return [
        Child("api", [py, "-m", "uvicorn", "--factory", "service.api.app:create_app", "--host", host, "--port", str(port), "--log-level", "warning"]),
        Child("runs-worker", [*celery, "worker", "-Q", "runs", "-P", "threads", "-c", str(runs_concurrency), "-n", "runs@%h",
                              "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]),
        Child("control-worker", [*celery, "worker", "-Q", "control", "-P", "solo", "-n", "control@%h",
                                 "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]),
        Child("beat", [*celery, "beat", "--loglevel", "WARNING"]),
    ]  # fmt: skip


def run_embedded(host: str = "127.0.0.1", port: int = 8000, *, out=sys.stdout) -> None:
    """Prepare the embedded setup, start the children, supervise them until Ctrl-C / SIGTERM."""
    env = embedded_environment()
    home = Path(env["CADDIE_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    settings = Settings(_env_file=None, home=home, database_url=env["CADDIE_DATABASE_URL"], data_root=Path(env["CADDIE_DATA_ROOT"]))
    data_root = Path(env["CADDIE_DATA_ROOT"])

    print(f"caddie home: {home}", file=out, flush=True)
    upgrade(settings.database_url)
    for vocab in smoke_vocabs():
        smoke = (data_root / "datasets" / f"fineweb10B_sp{vocab}", data_root / "tokenizers" / f"fineweb_{vocab}_bpe.model")
        if ensure_smoke_corpus(*smoke, data_root, vocab):
            print(f"built the smoke corpus (sp{vocab}) in {data_root}", file=out, flush=True)
    token = ensure_admin(settings.database_url)

    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    children = child_commands(host, port, max(1, int(env.get("CADDIE_MAX_CONCURRENT_RUNS", "1"))))
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def start(child: Child) -> None:
        log = open(logs / f"{child.name}.log", "ab")
        # Own process group: a Ctrl-C in the terminal reaches only us, and we stop the children in order.
        child.proc = subprocess.Popen(child.argv, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    for child in children:
        start(child)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    print(f"caddie is up at {url}  (API docs: {url}/docs; logs in {logs})", file=out, flush=True)
    print(f"web pages: {url}/runs  (sign in with an API token)", file=out, flush=True)
    if token:
        print(f"admin token (shown once): {token}", file=out)
        print(f"  export CADDIE_URL={url} CADDIE_TOKEN={token}", file=out, flush=True)
    else:
        print(f"users exist already: use your token (an admin can make one with `{TOKEN_HINT}`)", file=out, flush=True)
    # From this folder: CADDIE_HOME defaults to ./.caddie, so the doctor reads the children's settings.
    print(f"check the setup: `{DOCTOR_HINT}` (in another shell, from this folder)", file=out, flush=True)
    print("Ctrl-C stops everything.", file=out, flush=True)

    def stop_jobs() -> None:
        # Trainers live in their own sessions (a worker restart must not kill them),
        # so a Ctrl-C does not reach them: stop them here, or they run on unseen.
        try:
            stopped = LocalLauncher(settings).stop_all(STOPPED_REASON)
        except Exception as exc:  # noqa: BLE001 (stopping the rest matters more)
            print(f"could not stop running jobs: {exc}", file=out, flush=True)
            return
        if stopped:
            print(f"stopped {stopped} running job(s)", file=out, flush=True)

    try:
        while not stopping:
            time.sleep(0.5)
            for child in children:
                if stopping or child.proc is None or child.proc.poll() is None:
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                if len(child.restarts) > 5:
                    print(f"{child.name} keeps exiting (see {logs / (child.name + '.log')}); stopping", file=out, flush=True)
                    stopping = True
                    break
                print(f"{child.name} exited with code {child.proc.returncode}; restarting it", file=out, flush=True)
                start(child)
    finally:
        stop_jobs()  # first: their executors conclude the runs as CANCELLED while the workers still run
        stop_children(children)
        stop_jobs()  # a job started in between
        print("caddie stopped.", file=out, flush=True)


def stop_children(children: list[Child]) -> None:
    """SIGTERM every child's group (warm shutdown), SIGKILL whatever is left after STOP_TIMEOUT_S.
    Training jobs live in their own sessions: run_embedded stops them (LocalLauncher.stop_all)."""
    running = [c.proc for c in children if c.proc is not None and c.proc.poll() is None]
    for proc in running:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + STOP_TIMEOUT_S
    for proc in running:
        try:
            proc.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
