"""Every record of the challenge replayed through caddie (issue 20 item 7): the real API (uvicorn),
worker (celery, the local launcher, sealed), parser and rules, on a fresh PostgreSQL database.

Every log of each record's submission (truth.json: not an exploratory log) is submitted as a
script run whose train_gpt.py is bench/replay_train_gpt.py (the stand-in trainer: it prints the log
with its own timing scaled by --scale, and writes a model file of the log's size) and whose file
``replay.log`` is the log. The table compares, per record, what caddie made of them with what the
record states: status, val_bpb (per log where truth.json states it, else the mean of the logs against
the record's mean), the artifact bytes counted from the files, and the rule checks beside caddie's
verdict on the record's own logs (bench/results/records_verdicts.md, service.results.public_records).

    .venv/bin/python bench/records_replay.py [--scale 0.002] [--only NAME ...] > bench/results/records_replay.md
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.results.public_records import check_record_log, is_record_log, read_log, read_record  # noqa: E402
from service.results.rules import overall  # noqa: E402
from tests.e2e.conftest import Stack, _bootstrap_admin  # noqa: E402
from tests.fresh_db import fresh_database  # noqa: E402

RECORDS = REPO.parent / "shared" / "challenge" / "records" / "track_10min_16mb"
TRUTH = json.loads((REPO / "tests" / "fixtures" / "records" / "truth.json").read_text())
REPLAYER = (REPO / "bench" / "replay_train_gpt.py").read_bytes()
DONE = {"SUCCEEDED", "FAILED", "CANCELLED"}


def replayed_logs(record: dict[str, Any]) -> list[tuple[str, float | None]]:
    """Every log of the record's submission (truth.json: not an exploratory one), each with the val_bpb
    the record states for it (None where it states only a mean over them)."""
    return [(x["log"], x["val_bpb"]) for x in record["logs"] if not x["not_a_run_log"]]


def replay_body(record: str, log_name: str, scale: float) -> dict[str, Any]:
    log = (RECORDS / record / log_name).read_bytes()
    return {"name": f"replay {record}"[:100], "track": "10min_16mb", "hardware": "cpu", "data": "sp1024", "seeds": [1],
            "script": base64.b64encode(REPLAYER).decode(), "files": [{"name": "replay.log", "content": base64.b64encode(log).decode()}],
            "env": {"REPLAY_SCALE": str(scale)}}


def record_verdict(record: str, log_name: str) -> str:
    """caddie's verdict on the record's own log (as bench/records_verdicts.py judges it)."""
    folder = read_record(RECORDS / record)
    text = (RECORDS / record / log_name).read_text(encoding="utf-8", errors="replace")
    facts = read_log(log_name, text)
    if not is_record_log(folder, facts):
        return "not judged"
    return overall(check_record_log(folder, facts)).value


def start_stack(home: Path, pg_url: str, data_root: Path) -> Stack:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADDIE_")}
    env.update(
        PYTHONPATH=str(REPO), CADDIE_HOME=str(home), CADDIE_DATABASE_URL=pg_url, CADDIE_ON_SUBMIT_HOOK="worker.notify:runs_submitted",
        CADDIE_LAUNCHER="local", CADDIE_GPU_COUNT="0", CADDIE_HEARTBEAT_S="1", CADDIE_STALE_HEARTBEATS="5",
        CADDIE_POLL_INTERVAL_S="0.1", CADDIE_SCHEDULER_TICK_S="1", CADDIE_JANITOR_TICK_S="2", CADDIE_VISIBILITY_TIMEOUT_S="60",
        CADDIE_MAX_CONCURRENT_RUNS="2", CADDIE_DATA_ROOT=str(data_root), OMP_NUM_THREADS="1",
    )  # fmt: skip
    stack = Stack(home, env, pg_url)  # the SQLite broker under its home: a queue no other stack shares
    stack.token = _bootstrap_admin(pg_url)
    stack.start_api()
    stack.start_worker()
    stack.start_beat()
    return stack


def fake_data_root(root: Path) -> Path:
    """The sp1024 variant as the launcher links it: one small validation shard and a tokenizer file (the replay reads no data)."""
    (root / "datasets" / "fineweb10B_sp1024").mkdir(parents=True)
    (root / "datasets" / "fineweb10B_sp1024" / "fineweb_val_000000.bin").write_bytes(b"\0" * 1024)
    (root / "tokenizers").mkdir()
    (root / "tokenizers" / "fineweb_1024_bpe.model").write_bytes(b"\0")
    return root


def replay(stack: Stack, records: list[dict[str, Any]], scale: float, timeout_s: float = 300) -> list[dict[str, Any]]:
    """Submit every log of every record as a replay, then wait for each; one row per run."""
    rows = []
    with stack.client() as c:
        for rec in records:
            for log_name, bpb in replayed_logs(rec):
                r = c.post("/runs", json=replay_body(rec["record"], log_name, scale))
                assert r.status_code == 201, r.text
                rows.append({"record": rec["record"], "log": log_name, "stated_bpb": bpb, "id": r.json()["runs"][0]["id"]})
    for row in rows:
        run = stack.wait_for(row["id"], DONE, timeout_s)
        checks = {c["rule"]: c for c in run.get("checks") or []}
        row.update(status=run["status"], reason=run["status_reason"], val_bpb=run["val_bpb"], artifact_bytes=run["artifact_bytes"],
                   train_s=run["train_seconds"], eval_s=run["eval_seconds"], verdict=run["checks_verdict"], checks=checks,
                   touches=run.get("touches") or {}, record_verdict=record_verdict(row["record"], row["log"]))
    return rows


def bpb_matches(row: dict[str, Any]) -> bool:
    """The run's val_bpb is the one the record states for its log."""
    return row["val_bpb"] is not None and row["stated_bpb"] is not None and abs(row["val_bpb"] - row["stated_bpb"]) <= 6e-5


def hardware_only(row: dict[str, Any]) -> bool:
    """The run's only checks short of pass are the time rules, not comparable for want of 8x H100:
    the replay's node has none (it records its own hardware, which wins over the log), and a log
    that shows no GPUs cannot say otherwise."""
    short = [c for c in row["checks"].values() if c["verdict"] not in ("pass", "declared")]
    return bool(short) and all(c["rule"] in ("train_time", "eval_time") and c["verdict"] == "not_comparable" for c in short)


WORST = ("fail", "not_comparable", "pass", "declared")


def worst(verdicts: list[str | None]) -> str:
    seen = [v for v in verdicts if v in WORST]
    return min(seen, key=WORST.index) if seen else "not judged"


def record_row(record: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One record's replays together: the score compared log by log where the record states one per
    log, else the mean of its logs against the record's mean (within 1.5e-3, as tests/runs/test_records_truth.py)."""
    scores = [r["val_bpb"] for r in runs if r["val_bpb"] is not None]
    per_log = [r for r in runs if r["stated_bpb"] is not None]
    if per_log:
        match, stated = all(bpb_matches(r) for r in per_log), f"{len(per_log)} per log"
    elif record["val_bpb"] is not None and scores and not (record["decision"] and "not checked" in record["decision"]):
        mean = sum(scores) / len(scores)
        match, stated = abs(mean - record["val_bpb"]) <= 1.5e-3, f"{record['val_bpb']:.5f} (mean)"
    else:
        match, stated = None, "not stated" if record["val_bpb"] is None else f"{record['val_bpb']:.5f} (not checked: another run)"
    judged = [r for r in runs if r["record_verdict"] != "not judged"]
    return {
        "record": record["record"], "runs": runs, "ok": sum(r["status"] == "SUCCEEDED" for r in runs), "match": match, "stated": stated,
        "val_bpb": sum(scores) / len(scores) if scores else None,
        "artifact": max((r["artifact_bytes"] for r in runs if r["artifact_bytes"] is not None), default=None),
        "verdict": worst([r["verdict"] for r in judged]), "record_verdict": worst([r["record_verdict"] for r in judged]),
        "hardware_only": bool(judged) and all(r["verdict"] == r["record_verdict"] or hardware_only(r) for r in judged),
        "short": sorted({f"{c['rule']}: {c['verdict']}" for r in judged for c in r["checks"].values() if c["verdict"] not in ("pass", "declared")}),
    }


def table(records: list[dict[str, Any]], rows: list[dict[str, Any]], scale: float, elapsed: float) -> str:
    recs = [record_row(rec, [r for r in rows if r["record"] == rec["record"]]) for rec in records]
    ok = sum(r["status"] == "SUCCEEDED" for r in rows)
    stated = [r for r in recs if r["match"] is not None]
    same_verdict = sum(r["verdict"] == r["record_verdict"] for r in recs)
    unreported = sum(r["verdict"] != r["record_verdict"] and r["hardware_only"] for r in recs)
    out = [
        "# The challenge's records replayed through caddie",
        "",
        f"Command: `.venv/bin/python bench/records_replay.py --scale {scale} > bench/results/records_replay.md` "
        f"({len(recs)} records of track_10min_16mb, {len(rows)} logs: every log of each submission; {elapsed:.0f} s in all "
        "on this 2-core machine).",
        "",
        "Each log is replayed by the stand-in trainer `bench/replay_train_gpt.py` (its lines with their own timing,",
        f"scaled by {scale}), submitted as a script run over REST to a real stack: uvicorn API, celery worker, the local launcher",
        "(sealed in bubblewrap, the audit hook loaded), PostgreSQL. caddie parses the log, counts the bytes from the run folder",
        "(the stand-in writes a model file so that its own code plus the model is the log's total), watches what it touched and",
        "judges the rules. *stated*: the record's figure (truth.json, from its submission.json: per log, or the mean of its",
        "logs). *record's verdict*: caddie's verdict on the record's own logs (`bench/results/records_verdicts.md`); verdicts are",
        "the worst over the record's judged logs.",
        "",
        f"Runs SUCCEEDED: {ok} of {len(rows)}. val_bpb as the record states: {sum(bool(r['match']) for r in stated)} of the "
        f"{len(stated)} records that state one for these logs. Verdict equal to the record's: {same_verdict} of {len(recs)}; "
        f"{unreported} more differ only in the time rules, not comparable because the log shows no GPUs (caddie judged the "
        "record's own log on the GPUs its README declares; a run's hardware is what the run reports, never its spec or a README).",
        "Differing otherwise: " + ("; ".join(f"{r['record']} ({', '.join(r['short'])}; the record's: {r['record_verdict']})"
                                             for r in recs if r["verdict"] != r["record_verdict"] and not r["hardware_only"]) or "none") + ".",
        "",
        "| record | logs | SUCCEEDED | val_bpb (caddie) | stated | max artifact bytes | verdict | record's verdict | short of pass |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        failed = "; ".join(f"{x['log']}: {x['status']} {x['reason'][:100]}" for x in r["runs"] if x["status"] != "SUCCEEDED")
        bpb = "—" if r["val_bpb"] is None else f"{r['val_bpb']:.5f}" + {True: " ✓", False: " ≠", None: ""}[r["match"]]
        art = "—" if r["artifact"] is None else f"{r['artifact']:,}"
        out.append(f"| {r['record']} | {len(r['runs'])} | {r['ok']}{' — ' + failed if failed else ''} | {bpb} | {r['stated']} | {art} | "
                   f"{r['verdict']} | {r['record_verdict']} | {'; '.join(r['short']) or '—'} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.002)
    ap.add_argument("--only", nargs="*", default=None, help="record folder names (default: all 46)")
    args = ap.parse_args()
    records = [r for r in TRUTH if args.only is None or r["record"] in args.only]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="caddie-replay-") as tmp, fresh_database() as pg_url:
        home = Path(tmp) / "home"
        home.mkdir()
        stack = start_stack(home, pg_url, fake_data_root(Path(tmp) / "data"))
        try:
            rows = replay(stack, records, args.scale)
        finally:
            stack.stop()
    sys.stdout.write(table(records, rows, args.scale, time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
