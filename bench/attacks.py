"""Replays the attacks of issue 17 against a real stack (run by hand, not a test).

    .venv/bin/python bench/attacks.py [--out bench/results/attacks.md]

Starts what tests/e2e starts: a fresh PostgreSQL database on the shared server,
the API under uvicorn, a `celery worker` and beat with the local launcher (the
SQLite broker under a temporary CADDIE_HOME: no shared Redis), then makes two
teams (team-a: an admin and a member; team-b: a member). Team b's member submits
a script run whose train_gpt.py tries every in-job escape and prints one
``ATTACK <name>: SUCCEEDED|REFUSED <detail>`` line each; the bench reads the lines
back through the API and acts on what leaked (forges a session cookie from a
leaked secret key). The other attacks are plain HTTP against the stack.
Each row: the attack, what a sealed caddie must do, what happened, and REFUSED
or NOT REFUSED. Rows are reported as they happen: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import Stack, _stack  # noqa: E402
from tests.fresh_db import fresh_database  # noqa: E402

# The in-job attacker: a team's own train_gpt.py. Paths and URLs an attacker could
# guess (the defaults of a `make up` deployment) come in through its env.
ATTACKER = r'''
import json, os, socket, subprocess, sys, glob
E = os.environ
def out(name, ok, detail=""):
    print(f"ATTACK {name}: {'SUCCEEDED' if ok else 'REFUSED'} {detail}"[:400], flush=True)

# 1. other processes' environment: the database URL of the API and the worker
found = []
for env_path in glob.glob("/proc/[0-9]*/environ"):
    try:
        data = open(env_path, "rb").read()
    except OSError:
        continue
    if b"CADDIE_DATABASE_URL=" in data:
        found.append(env_path.split("/")[2])
out("proc_environ", bool(found), f"CADDIE_DATABASE_URL read from pids {found[:5]}")

# 2. the database: every team's runs and token hashes
token_hash = ""
try:
    import psycopg
    with psycopg.connect(E["ATK_DB_URL"], connect_timeout=3) as c:
        runs = c.execute("select count(*), count(distinct team_id) from runs").fetchone()
        token_hash = c.execute("select t.token_hash from api_tokens t join users u on u.id = t.user_id where u.is_admin and t.revoked_at is null limit 1").fetchone()[0]
    out("db_read", True, f"runs={runs[0]} teams={runs[1]} admin_token_hash={token_hash}")
except Exception as e:
    out("db_read", False, type(e).__name__ + ": " + str(e)[:150])

# 3. the session key (to forge a cookie)
try:
    key = open(os.path.join(E["ATK_HOME"], "secret_key")).read().strip()
    out("secret_key_read", bool(key), "key=" + key)
except Exception as e:
    out("secret_key_read", False, type(e).__name__)

# 4. other teams' run folders and scripts
mine = os.path.realpath(os.getcwd())
others = []
for p in glob.glob(os.path.join(E["ATK_HOME"], "**", "*"), recursive=True):
    if os.path.isfile(p) and not os.path.realpath(p).startswith(mine):
        try:
            open(p, "rb").read(16)
            others.append(p)
        except OSError:
            pass
runs = [p for p in others if ("/runs/" in p or "script" in p) and "/data/" not in p]
out("other_runs_read", bool(runs), f"{len(others)} files under CADDIE_HOME readable, {len(runs)} of other runs, e.g. {runs[:2]}")

# 5. the shared trainer's code (opened for append, nothing written)
try:
    fd = os.open(E["ATK_TRAINER"], os.O_WRONLY | os.O_APPEND)
    os.close(fd)
    out("trainer_code_write", True, E["ATK_TRAINER"] + " opened for writing")
except OSError as e:
    out("trainer_code_write", False, type(e).__name__)

# 6. a signal to the API process
try:
    os.kill(int(E["ATK_API_PID"]), 0)
    out("signal_api", True, "kill(api, 0) allowed")
except OSError as e:
    out("signal_api", False, type(e).__name__)

# 7. the API and the database over the network
for name, host, port in (("net_api", "127.0.0.1", int(E["ATK_API_PORT"])), ("net_db", "127.0.0.1", 5432)):
    try:
        socket.create_connection((host, port), timeout=2).close()
        out(name, True, f"connected to {host}:{port}")
    except OSError as e:
        out(name, False, type(e).__name__)

# 8. a process left behind after the run
# the pid the job sees is its own namespace's; the host finds the process by a marker in its argv
marker = "caddie-leftover-" + E["ATK_MARKER"]
p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"LEFTOVER_MARKER {marker}", flush=True)
print("final_int8_zlib_roundtrip_exact val_loss:3.0 val_bpb:1.8", flush=True)
'''


# Items 1-2 (the sandbox) had not landed when this was written: their CI tests belong with them.
SANDBOX_TEST = "tests/worker/launchers/test_sandbox.py::test_every_escape_from_a_sandboxed_job_is_refused"


def pids_with_argv(marker: str) -> list[int]:
    """Host pids whose command line holds the marker."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


@dataclass
class Row:
    attack: str
    expected: str
    happened: str
    refused: bool
    test: str = ""


class _Factory:
    """What _stack needs of pytest's tmp_path_factory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name, dir=self.root))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def api(stack: Stack, token: str) -> httpx.Client:
    return httpx.Client(base_url=f"{stack.url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def setup_teams(stack: Stack) -> dict[str, str]:
    tokens: dict[str, str] = {}
    with stack.client() as c:
        for team in ("team-a", "team-b"):
            assert c.post("/teams", json={"name": team}).status_code == 201
        for user, team, role in (("a-admin", "team-a", "admin"), ("a-member", "team-a", "member"), ("b-member", "team-b", "member")):
            assert c.post("/users", json={"name": user}).status_code == 201
            r = c.post(f"/teams/{team}/members", json={"user": user, "role": role})
            assert r.status_code == 201, r.text
            tokens[user] = c.post("/tokens", json={"name": "bench", "user": user}).json()["token"]
    # A web sign-in, as on any live deployment: the session key now exists on disk.
    with httpx.Client(base_url=stack.url, timeout=30) as web:
        web.post("/signin", data={"token": tokens["a-admin"], "next": "/runs"})
    return tokens


def rss_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_done(stack: Stack, client: httpx.Client, run_id: int, timeout: float = 240) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        run = client.get(f"/runs/{run_id}").json()
        if run["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return run
        time.sleep(0.5)
    return client.get(f"/runs/{run_id}").json()


def full_log(client: httpx.Client, run_id: int) -> str:
    text, offset = "", 0
    while True:
        piece = client.get(f"/runs/{run_id}/logs", params={"offset": offset}).json()
        text += piece["data"]
        if piece["next_offset"] == offset or not piece["data"]:
            return text
        offset = piece["next_offset"]


def in_job(stack: Stack, tokens: dict[str, str], rows: list[Row]) -> None:
    env = {"ATK_HOME": str(stack.home), "ATK_DB_URL": stack.db_url.replace("postgresql+psycopg://", "postgresql://"),
           "ATK_TRAINER": str(REPO / "trainer" / "__main__.py"), "ATK_API_PID": str(stack.api.pid), "ATK_API_PORT": str(stack.port),
           "ATK_MARKER": f"{os.getpid()}-{time.time_ns()}"}
    # team a runs something first, so there is another team's folder to find
    with api(stack, tokens["a-member"]) as a:
        a.post("/runs", json={"name": "a's own", "track": "unlimited", "hardware": "cpu", "script": b64("print('team a secret work')\n"), "data": "sp1024"})
    with api(stack, tokens["b-member"]) as b:
        r = b.post("/runs", json={"name": "attacker", "track": "unlimited", "hardware": "cpu", "script": b64(ATTACKER), "env": env, "data": "sp1024"})
        assert r.status_code == 201, r.text
        run_id = r.json()["runs"][0]["id"]
        run = wait_done(stack, b, run_id)
        log = full_log(b, run_id)
    results = dict(re.findall(r"^ATTACK (\w+): (.*)$", log, re.M))
    expected = {
        "proc_environ": ("A job reads the API's and worker's /proc/<pid>/environ (database URL)", "unreadable: the job cannot see other processes' /proc", SANDBOX_TEST),
        "db_read": ("A job connects to PostgreSQL and reads every team's runs and token hashes", "no network path to the database", SANDBOX_TEST),
        "secret_key_read": ("A job reads $CADDIE_HOME/secret_key", "unreadable", SANDBOX_TEST),
        "other_runs_read": ("A job reads other teams' run folders and scripts", "only its own run folder is readable", SANDBOX_TEST),
        "trainer_code_write": ("A job opens trainer/__main__.py for writing (the next team's trainer would run it)", "read-only Python environment", SANDBOX_TEST),
        "signal_api": ("A job signals the API process", "EPERM: other processes cannot be signalled", SANDBOX_TEST),
        "net_api": ("A job connects to the API port", "no network path to the API", SANDBOX_TEST),
        "net_db": ("A job connects to the database port", "no network path to the database", SANDBOX_TEST),
    }
    if not results:
        rows.append(Row("in-job escapes (all)", "every probe refused", f"the attacker run ended {run['status']} ({run.get('status_reason')}) with no probe lines", True))
    for name, (attack, want, test) in expected.items():
        got = results.get(name, "no line (the probe did not run)")
        rows.append(Row(attack, want, got[:300], not got.startswith("SUCCEEDED"), test))

    # secret key + database -> a forged admin session cookie
    key = re.search(r"key=(\S+)", results.get("secret_key_read", ""))
    token_hash = re.search(r"admin_token_hash=(\w+)", results.get("db_read", ""))
    if key and token_hash:
        from service.http.session import COOKIE_NAME, make_cookie_value

        cookie = make_cookie_value(key[1].encode(), token_hash[1])
        with httpx.Client(base_url=stack.url, cookies={COOKIE_NAME: cookie}, timeout=30) as forged:
            r = forged.get("/api/v1/runs")
            teams = {x["team"] for x in r.json().get("items", [])} if r.status_code == 200 else set()
            # ...and mint a token through the tokens form, its CSRF token computed from the same key
            from service.http.session import csrf_token

            minted = forged.post("/tokens", data={"name": "minted", "csrf_token": csrf_token(key[1].encode(), cookie)}, follow_redirects=False)
        rows.append(Row("Forge the global admin's session cookie from the leaked key and token hash; list runs, mint a token", "impossible (nothing leaked)",
                        f"GET /api/v1/runs with the forged cookie: {r.status_code}, teams seen {sorted(teams)}; POST /tokens (form): {minted.status_code}",
                        r.status_code != 200 and minted.status_code >= 400, SANDBOX_TEST))
    else:
        rows.append(Row("Forge the global admin's session cookie", "impossible (nothing leaked)", "no key and token hash leaked to forge with", True))

    marker = re.search(r"^LEFTOVER_MARKER (\S+)", log, re.M)
    if marker:
        time.sleep(3)
        alive = pids_with_argv(marker[1])
        rows.append(Row("A process the job started outlives its run", "every process of the run is gone when it ends",
                        f"{'host pids ' + str(alive) + ' still alive' if alive else 'no process with its marker'} 3 s after the run ended {run['status']}",
                        not alive, SANDBOX_TEST))
        for pid in alive:
            os.kill(pid, signal.SIGKILL)


def big_body(stack: Stack, rows: list[Row]) -> None:
    """8 unauthenticated 1 GB bodies at once: 4 with a Content-Length, 4 chunked (no length)."""
    before = rss_peak_mib(stack.api.pid)
    chunk = b"x" * (1 << 20)
    answers: list[str] = []

    def body() -> Iterator[bytes]:
        for _ in range(1024):
            yield chunk

    def send(i: int) -> None:
        headers = {"Content-Type": "application/json"}
        if i % 2:
            headers["Content-Length"] = str(1 << 30)
        try:
            answers.append(str(httpx.post(f"{stack.url}/api/v1/runs", content=body(), headers=headers, timeout=120).status_code))
        except httpx.HTTPError as e:
            answers.append(f"closed ({type(e).__name__})")

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = rss_peak_mib(stack.api.pid)
    refused = after < 500 and all(a[:3] in ("413", "401") or a.startswith("closed") for a in answers)
    rows.append(Row("8 concurrent 1 GB unauthenticated POST /api/v1/runs (4 with Content-Length, 4 chunked)",
                    "413 (or 401) before the body is read; API RSS stays under 500 MB",
                    f"answers {sorted(answers)} within {time.monotonic() - started:.1f} s; API peak RSS {before:.0f} -> {after:.0f} MiB", refused,
                    "tests/api/test_request_limits.py (413 unread, chunked, 401 unread)"))


LOG_MB = 100  # scaled down from the 500 MB and 2M step lines for a 2-core machine
STEPS = 400_000


def huge_output(stack: Stack, tokens: dict[str, str], rows: list[Row]) -> None:
    script = (f"import sys\nline = 'x' * 999 + '\\n'\nfor i in range({LOG_MB * 1000}):\n    sys.stdout.write(line)\n"
              f"for i in range(1, {STEPS + 1}):\n    print(f'step:{{i}}/{STEPS} train_loss:{{4 - i / 1e7:.4f}} train_time:{{i}}ms step_avg:1.00ms')\n")
    with api(stack, tokens["b-member"]) as b:
        run_id = b.post("/runs", json={"name": "flood", "track": "unlimited", "hardware": "cpu", "script": b64(script), "data": "sp1024"}).json()["runs"][0]["id"]
        run = wait_done(stack, b, run_id, 600)
        t0 = time.monotonic()
        m = b.get(f"/runs/{run_id}/metrics", timeout=120)
        metrics_s, metrics_mb = time.monotonic() - t0, len(m.content) / 1e6
    with httpx.Client(base_url=stack.url, timeout=120) as web:
        web.post("/signin", data={"token": tokens["b-member"], "next": "/runs"})
        t0 = time.monotonic()
        page = web.get(f"/runs/{run_id}")
        page_s = time.monotonic() - t0
    stored = run.get("log_truncated_at")
    homes = log_homes(stack, run_id)
    worker_mib = worker_peak_mib(stack)
    once = sum(1 for n in homes.values() if n) == 1 and max(homes.values()) <= (stored or 0) + 4096  # the head, plus the archive's note of the cut
    rows.append(Row(f"A run prints {LOG_MB} MB of log with no final figure and {STEPS:,} step lines",
                    "log stored up to the cap (CADDIE_LOG_MAX_BYTES), once; the worker reads it once (no re-read of the whole log); metrics capped/paged; run page < 1 s",
                    f"run {run['status']} ({str(run.get('status_reason'))[:60]}...); log {run.get('log_bytes')} bytes, stored up to {stored}; bytes kept: "
                    + ", ".join(f"{k} {v:,}" for k, v in homes.items())
                    + f"; worker peak RSS {worker_mib:.0f} MiB; GET /metrics {m.status_code}: {metrics_mb:.1f} MB in {metrics_s:.1f} s; run page {page.status_code} in {page_s:.2f} s",
                    stored is not None and stored <= 64 * 2**20 and once and worker_mib < 500 and metrics_mb < 10 and page_s < 1,
                    "tests/worker/run/test_run_log_caps.py, tests/api/test_api_metrics_pages.py"))


def log_homes(stack: Stack, run_id: int) -> dict[str, int]:
    """Where the run's log is kept once it has ended, in bytes: database chunks, the artifact store,
    and the run folder on the worker (the job's own stdout file)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(stack.db_url)
    try:
        with engine.connect() as c:
            chunks = c.execute(text("SELECT coalesce(sum(length(data)), 0) FROM log_chunks WHERE run_id = :r"), {"r": run_id}).scalar()
    finally:
        engine.dispose()
    store = sum(p.stat().st_size for p in (stack.home / "artifacts" / "runs" / str(run_id) / "log").glob("*"))
    folder = sum(p.stat().st_size for p in (stack.home / "runs" / str(run_id)).rglob("*.log") if p.is_file())
    return {"database": int(chunks or 0), "artifact store": store, "run folder": folder}


def worker_peak_mib(stack: Stack) -> float:
    """The largest peak RSS among the worker's processes (a prefork pool runs the executor in a child)."""
    import psutil

    assert stack.worker is not None
    top = psutil.Process(stack.worker.pid)
    return max(rss_peak_mib(p.pid) for p in [top, *top.children(recursive=True)])


def published_env(stack: Stack, tokens: dict[str, str], rows: list[Row]) -> None:
    secret = "hf_bench_" + os.urandom(6).hex()
    with api(stack, tokens["a-member"]) as a:
        r = a.post("/runs", json={"name": "with token", "track": "unlimited", "hardware": "cpu", "script": b64("print('hi')\n"), "env": {"HF_TOKEN": secret}, "data": "sp1024"})
        key = r.json()["group_key"]
        a.post(f"/groups/{key}/publish")
    with api(stack, tokens["b-member"]) as b:
        seen = ["API " + p for p in ("/groups", f"/groups/{key}", "/leaderboard?track=unlimited") if secret in b.get(p).text]
    with httpx.Client(base_url=stack.url, timeout=30) as web:
        web.post("/signin", data={"token": tokens["b-member"], "next": "/runs"})
        seen += ["page " + p for p in ("/groups", f"/groups/{key}", "/leaderboard?track=unlimited", f"/compare?groups={key}") if secret in web.get(p).text]
    rows.append(Row("Team b reads team a's HF_TOKEN value of a published script group", "env names shown, values hidden unless marked public",
                    f"value seen on {seen}" if seen else "value on none of /groups, group, leaderboard, compare (API and pages)", not seen, "tests/web/test_script_env_privacy.py"))


def smaller(stack: Stack, tokens: dict[str, str], rows: list[Row]) -> None:
    big = base64.urlsafe_b64encode(f"r{2**31 + 5}".encode()).decode().rstrip("=")
    with api(stack, tokens["a-member"]) as a:
        r = a.get("/runs", params={"cursor": big})
        rows.append(Row("GET /api/v1/runs?cursor=<id above 2^31-1>", "4xx", str(r.status_code), 400 <= r.status_code < 500, "tests/api/test_api_bad_input.py::test_a_cursor_past_the_database_is_a_422"))
    web = httpx.Client(base_url=stack.url, timeout=30)
    web.post("/signin", data={"token": tokens["a-admin"], "next": "/runs"})
    for path in (f"/runs?cursor={big}", "/compare?runs=99999999999"):
        r = web.get(path)
        rows.append(Row(f"GET {path} (page)", "4xx", str(r.status_code), 400 <= r.status_code < 500, "tests/web/test_pages.py::test_cursors_and_compared_ids_out_of_range_are_a_422"))
    headers = web.get("/runs").headers
    api_headers = httpx.get(f"{stack.url}/api/v1/runs").headers
    ok = all("frame-ancestors 'none'" in h.get("content-security-policy", "") and h.get("x-content-type-options") == "nosniff" and h.get("referrer-policy") for h in (headers, api_headers))
    rows.append(Row("Security headers on pages and API answers", "CSP with frame-ancestors 'none', nosniff, Referrer-Policy",
                    f"page CSP: {headers.get('content-security-policy', 'none')[:60]}...; API nosniff: {api_headers.get('x-content-type-options')}", ok,
                    "tests/web/test_pages.py::test_every_answer_carries_the_security_headers, tests/web/test_browser.py (charts under the CSP)"))
    # sign-out: a cookie kept from before sign-out
    kept = web.cookies.get("caddie_session")
    page = web.get("/runs")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    web.post("/signout", data={"csrf_token": csrf[1] if csrf else ""})
    r = httpx.get(f"{stack.url}/runs", cookies={"caddie_session": kept or ""}, follow_redirects=False)
    rows.append(Row("Reuse a session cookie kept from before sign-out", "not signed in (303 to /signin)", str(r.status_code), r.status_code in (303, 401), "tests/web/test_pages.py::test_a_cookie_kept_from_before_sign_out_no_longer_works"))
    web.close()
    with api(stack, tokens["a-admin"]) as admin:
        r = admin.post("/teams/team-a/members", json={"user": "b-member", "role": "member"})
        teams = httpx.get(f"{stack.url}/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['b-member']}"}).json().get("teams", [])
        in_a = any(t.get("team") == "team-a" for t in teams)
        rows.append(Row("team-a's admin adds team-b's user to team-a", "an invitation only: no membership without the user's consent",
                        f"{r.status_code}; b-member in team-a now: {in_a}", not in_a, "tests/api/test_api_accounts.py::test_team_admins_add_members_to_their_team_only, tests/web/test_pages.py::test_the_teams_page_invites_and_accepts"))
        known, unknown = admin.post("/teams/team-a/members", json={"user": "a-member"}), admin.post("/teams/team-a/members", json={"user": "nobody-x"})
        rows.append(Row("Enumerate user names through POST /teams/{name}/members", "the same answer for a known and an unknown name",
                        f"known: {known.status_code}, unknown: {unknown.status_code}", known.status_code == unknown.status_code, "tests/api/test_api_accounts.py::test_team_admins_add_members_to_their_team_only"))
        r = admin.post("/teams/team-a/members", json={"user": "a-admin", "role": "member"})
        rows.append(Row("The last admin of team-a demotes themself", "4xx: the team keeps an admin", str(r.status_code), r.status_code >= 400, "tests/api/test_api_accounts.py::test_the_last_admin_of_a_team_stays"))
    with api(stack, tokens["b-member"]) as b:
        theirs = b.get("/runs").json()["items"][0]["id"]
    with api(stack, tokens["a-member"]) as a:
        other = a.post(f"/runs/{theirs}/cancel")
    rows.append(Row("A member of team-a cancels team-b's run", "404", str(other.status_code), other.status_code == 404, "tests/api/test_api_authz.py::test_run_endpoint"))


def cancel_other_member(stack: Stack, tokens: dict[str, str], rows: list[Row]) -> None:
    with api(stack, tokens["a-admin"]) as admin:
        run_id = admin.post("/runs", json={"name": "admin's", "track": "unlimited", "hardware": "cpu", "script": b64("import time; time.sleep(20)\n"), "data": "sp1024"}).json()["runs"][0]["id"]
    with api(stack, tokens["a-member"]) as a:
        r = a.post(f"/runs/{run_id}/cancel")
    rows.append(Row("A member cancels another member's run of the same team", "403: needs the team's admin", str(r.status_code), r.status_code == 403,
                    "tests/api/test_api_authz.py::test_cancelling_another_members_run_needs_a_team_admin"))


def write(rows: list[Row], out: Path, head: str, seconds: float) -> None:
    lines = ["# Attacks of issue 17 replayed against a real stack", "",
             f"`.venv/bin/python bench/attacks.py` at {head} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds:.0f} s): API under uvicorn, "
             "a celery worker and beat, the local launcher, PostgreSQL; team-a (admin + member) and team-b (member). "
             "In-job attacks are one script run of team-b (its probes print their own result lines).", "",
             f"**{sum(r.refused for r in rows)} of {len(rows)} refused.**", "",
             "| attack | expected | what happened | refused | CI test |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [r.attack, r.expected, r.happened, "yes" if r.refused else "**NO**", r.test or "-"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    lines += ["", "Rows not refused are reported as they happened. The flood is scaled down from the issue's 500 MB / 2M lines "
              f"({LOG_MB} MB, {STEPS:,} lines; `--log-mb`, `--steps`); bench/results for item 5 has the full-size figures.",
              "", "Not replayed here: SkyPilot warm nodes (item 3; needs cloud nodes), the 10,000-run volume (item 5, see its own bench), "
              "plotly's link in a run name (a browser matter: tests/web/test_browser.py::test_charts_draw_under_the_content_security_policy_and_a_name_is_never_a_link), "
              "tokens and memberships from the CLI (tests/cli)."]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "attacks.md")
    parser.add_argument("--skip", nargs="*", default=[], help="parts to leave out: in_job big_body huge_output published_env smaller cancel")
    parser.add_argument("--log-mb", type=int, default=LOG_MB, help="size of the flooding run's log")
    parser.add_argument("--steps", type=int, default=STEPS, help="step lines the flooding run prints")
    args = parser.parse_args()
    globals().update(LOG_MB=args.log_mb, STEPS=args.steps)
    from trainer.data import build_smoke_corpus

    head = os.popen(f"git -C {REPO} rev-parse --short HEAD").read().strip()
    started = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="attacks-") as tmp, fresh_database() as pg_url:
        corpus = Path(tmp) / "corpus"
        build_smoke_corpus(corpus)
        gen = _stack(_Factory(Path(tmp)), pg_url, "", corpus)
        stack = next(gen)
        try:
            tokens = setup_teams(stack)
            parts = {"in_job": lambda: in_job(stack, tokens, rows), "big_body": lambda: big_body(stack, rows),
                     "published_env": lambda: published_env(stack, tokens, rows), "smaller": lambda: smaller(stack, tokens, rows),
                     "cancel": lambda: cancel_other_member(stack, tokens, rows), "huge_output": lambda: huge_output(stack, tokens, rows)}
            for name, part in parts.items():
                if name in args.skip:
                    continue
                print(f"-- {name}", flush=True)
                try:
                    part()
                except Exception as e:  # a part that breaks is reported, the others still run
                    rows.append(Row(f"({name})", "-", f"the bench part failed: {type(e).__name__}: {str(e)[:200]}", False))
                write(rows, args.out, head, time.monotonic() - started)
        finally:
            gen.close()
    write(rows, args.out, head, time.monotonic() - started)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
