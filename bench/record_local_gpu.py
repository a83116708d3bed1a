"""A record's own train_gpt.py, unchanged, through caddie's local launcher on a GPU (issue 20 item 7).
Run by hand on a GPU machine; not a test.

    python bench/record_local_gpu.py --record RECORD_FOLDER --data-root DATA_ROOT --data sp8192 \\
        [--file HELPER.py ...] [--environment JSON] [--env NAME=VALUE ...] [--hardware H100:1] --out DIR

What runs is what a team gets from `caddie up`: the embedded deployment (SQLite, the SQLAlchemy
broker, the API, a runs worker, the control worker and beat as child processes, the local launcher,
every job sealed), with CADDIE_DATA_ROOT pointing at DATA_ROOT. The record goes up through the real
CLI (`caddie submit --script ... --file ... --env ... --data ...`), the run is followed through the
API until it ends, and DIR gets what caddie made of it: the run (status, reason, figures, checks),
its stored log, `caddie up`'s own log and a copy of caddie's database (caddie.db: the run page, later); the
run, its log and the database also every 15 s while it runs, with a timed line of progress each (progress.txt). Files the script needs beside it (--file: a
team's helper module, counted as its code) are copied next to a copy of the record's script: the script's
bytes are the record's. A library it imports (FlashAttention 3, or bench/fa3_standin's wheel on a machine
without it) belongs in --environment's packages instead, which the challenge does not count as code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "ABORTED_BEHIND"}


def start_caddie(home: Path, data_root: Path, log: Path, compile_cache: Path | None = None) -> tuple[subprocess.Popen[bytes], str, str]:
    """`caddie up` in the background; returns the process, its URL and the admin token it printed."""
    env = dict(os.environ, CADDIE_HOME=str(home), CADDIE_DATA_ROOT=str(data_root))
    if compile_cache is not None:  # kept outside the throwaway home: a later call on the same machine compiles from it
        env["CADDIE_COMPILE_CACHE_DIR"] = str(compile_cache.resolve())
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "up"], cwd=REPO, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    end = time.monotonic() + 180
    while time.monotonic() < end:
        text = log.read_text(errors="replace")
        url, token = re.search(r"caddie is up at (\S+)", text), re.search(r"admin token \(shown once\): (\S+)", text)
        if url and token:
            try:
                if httpx.get(f"{url.group(1)}/healthz", timeout=2).status_code == 200:
                    return proc, url.group(1), token.group(1)
            except httpx.HTTPError:
                pass  # printed before uvicorn listens
        if proc.poll() is not None:
            raise SystemExit(f"caddie up exited with {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.5)
    raise SystemExit("caddie up did not print its URL and token in 180 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", type=Path, required=True, help="a record's folder (its train_gpt.py is submitted)")
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--data", default="sp8192")
    ap.add_argument("--file", type=Path, action="append", default=[], help="a file copied beside the script and uploaded with it")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the script")
    ap.add_argument("--hardware", default="H100:1")
    ap.add_argument("--environment", default="", help='the run\'s declared environment as JSON, e.g. \'{"python": "3.12", "packages": ["brotli"], "node_packages": true}\'')
    ap.add_argument("--seed", default="42")
    ap.add_argument("--timeout", type=float, default=540)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--compile-cache", type=Path, help="the teams' compile caches (CADDIE_COMPILE_CACHE_DIR), e.g. an ignored folder of the "
                                                      "checkout that a second call on the same warm machine finds (default: inside the throwaway home)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="record-local-"))
    folder = work / args.record.name
    folder.mkdir()
    shutil.copy2(args.record / "train_gpt.py", folder / "train_gpt.py")
    for f in args.file:
        shutil.copy2(f, folder / f.name)
    proc, url, token = start_caddie(work / "home", args.data_root.resolve(), args.out / "caddie_up.log", args.compile_cache)
    cli_env = dict(os.environ, CADDIE_URL=url, CADDIE_TOKEN=token)
    try:
        argv = [sys.executable, "-m", "cli.main", "submit", "--script", str(folder / "train_gpt.py"), "--data", args.data,
                "--hardware", args.hardware, "--seeds", args.seed, "--name", args.record.name[:60]]
        for f in args.file:
            argv += ["--file", str(folder / f.name)]
        for kv in args.env:
            argv += ["--env", kv]
        if args.environment:  # through a spec file, the one way the CLI takes an environment
            spec = work / "spec.json"
            spec.write_text(json.dumps({"track": "10min_16mb", "environment": json.loads(args.environment)}))
            argv.insert(argv.index("submit") + 1, str(spec))
        t0 = time.monotonic()
        sub = subprocess.run(argv, cwd=REPO, env=cli_env, capture_output=True, text=True, check=False)
        (args.out / "submit.txt").write_text(" ".join(argv) + "\n\n" + sub.stdout + sub.stderr)
        if sub.returncode != 0:
            print(sub.stdout, sub.stderr)
            return 1
        client = httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        ids = re.search(r"ids (\d+)", sub.stdout)
        assert ids, sub.stdout
        run_id = int(ids.group(1))
        run: dict = {}
        last, saved = "", time.monotonic()
        while time.monotonic() - t0 < args.timeout:
            run = client.get(f"/runs/{run_id}").json()
            if run["status"] != last:
                last = run["status"]
                print(f"{time.monotonic() - t0:7.1f}s run {run_id}: {last}", flush=True)
            if last in DONE:
                break
            if time.monotonic() - saved > SNAPSHOT_EVERY_S:  # a call cut from outside still returns how far it got
                save_snapshot(client, run_id, run, args.out, time.monotonic() - t0)
                keep_database(work / "home" / "caddie.db", args.out / "caddie.db")
                saved = time.monotonic()
            time.sleep(2)
        run = save_snapshot(client, run_id, run, args.out, time.monotonic() - t0)
        keep = ("status", "status_reason", "val_bpb", "val_loss", "artifact_bytes", "train_seconds", "eval_seconds", "steps",
                "runs_on", "checks_verdict", "wall_s_from_submit")
        print(json.dumps({k: run.get(k) for k in keep}, indent=2, default=str))
        for c in run.get("checks") or []:
            print(f"  {c['rule']}: {c['verdict']} - {c['reason'][:200]}")
    finally:
        os.killpg(proc.pid, 2)  # Ctrl-C: caddie up stops its children and the running job
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        keep_database(work / "home" / "caddie.db", args.out / "caddie.db")
    return 0


SNAPSHOT_EVERY_S = 15.0


def save_snapshot(client: httpx.Client, run_id: int, run: dict, out: Path, wall_s: float) -> dict:
    """The run as the API shows it and its stored log so far, written to ``out`` (run.json, run_log.txt); a line
    of progress.txt (and stdout) with the time and the log's last line: the record's log has no clock of its own."""
    parts, offset = [], 0
    while True:  # the stored log, a slice at a time
        piece = client.get(f"/runs/{run_id}/logs", params={"offset": offset}).json()
        parts.append(piece["data"])
        if piece["done"] or piece["next_offset"] == offset:
            break
        offset = piece["next_offset"]
    log = "".join(parts)
    (out / "run_log.txt").write_text(log)
    lines = log.rstrip("\n").rsplit("\n", 1)
    line = f"{wall_s:7.1f}s {run.get('status', '?')}: {lines[-1][:160] if log else '(no log yet)'}"
    with open(out / "progress.txt", "a") as fh:
        fh.write(line + "\n")
    print(line, flush=True)
    run = {**run, "wall_s_from_submit": round(wall_s, 1)}
    (out / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
    return run


def keep_database(db: Path, out: Path) -> None:
    """A consistent copy of caddie's SQLite database (sqlite3's online backup), so the run's page can be
    opened after the GPU machine is gone: `CADDIE_HOME=DIR caddie up` with the copy as DIR/caddie.db."""
    import sqlite3

    if not db.exists():
        return
    with sqlite3.connect(db) as src, sqlite3.connect(out) as dst:
        src.backup(dst)


if __name__ == "__main__":
    raise SystemExit(main())
