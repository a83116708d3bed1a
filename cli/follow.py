"""Following runs as they go: live progress for `submit --follow`, log tailing
for `logs --follow`. Both only poll the REST API."""

from __future__ import annotations

import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from cli.client import CaddieClient
from cli.render import TERMINAL, fmt_bpb, status_text
from service.core.status import RunStatus
from service.core.text import printable

POLL_S = 1.0


def planned_steps(run: dict[str, Any]) -> int | None:
    """ITERATIONS of the run's config (the trainer's default when not overridden)."""
    try:
        from trainer.config import TrainerConfig

        return int(TrainerConfig.from_dict(run.get("spec") or {}).iterations)
    except Exception:  # noqa: BLE001 - progress without a total is still progress
        return None


def _latest(metrics: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((m for m in reversed(metrics) if m["kind"] == kind), None)


def progress_fields(run: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """What one progress line shows: the last step, train_loss, val_bpb and status."""
    train, val = _latest(metrics, "train"), _latest(metrics, "val")
    step = max((m["step"] for m in metrics), default=0)
    info = []
    if train and train.get("train_loss") is not None:
        info.append(f"train_loss {train['train_loss']:.4f}")
    if val and val.get("val_bpb") is not None:
        info.append(f"val_bpb {fmt_bpb(val['val_bpb'])}")
    if run["status"] in TERMINAL and run.get("val_bpb") is not None:
        info = [f"val_bpb {fmt_bpb(run['val_bpb'])}"]
    return {"step": step, "status": status_text(run["status"]), "info": "  ".join(info)}


def follow_runs(client: CaddieClient, run_ids: list[int], console: Console, poll_s: float | None = None) -> list[dict[str, Any]]:
    """Show each run's progress until all are finished; return the final runs."""
    poll_s = POLL_S if poll_s is None else poll_s
    final: dict[int, dict[str, Any]] = {}
    columns = (
        SpinnerColumn(),
        TextColumn("run {task.fields[run_id]}"),
        BarColumn(bar_width=30),
        TextColumn("step {task.completed:.0f}/{task.fields[total_text]}"),
        TextColumn("{task.fields[status]}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        tasks = {rid: progress.add_task("", total=None, run_id=rid, total_text="?", status=status_text(RunStatus.QUEUED.value), info="") for rid in run_ids}
        while len(final) < len(run_ids):
            for rid in run_ids:
                if rid in final:
                    continue
                run = client.get_run(rid)
                metrics = client.metrics(rid) if run["status"] not in (RunStatus.QUEUED, RunStatus.PROVISIONING) else []
                fields = progress_fields(run, metrics)
                total = planned_steps(run)
                step = fields.pop("step")
                if run["status"] == RunStatus.SUCCEEDED and run.get("steps"):
                    step = total = run["steps"]
                progress.update(tasks[rid], completed=step, total=total, total_text=total or "?", **fields)
                if run["status"] in TERMINAL:
                    final[rid] = run
            if len(final) < len(run_ids):
                time.sleep(poll_s)
    return [final[rid] for rid in run_ids]


def tail_log(client: CaddieClient, run_id: int, out: TextIO, *, follow: bool, poll_s: float | None = None, raw: bool = False) -> None:
    """Write the run's log to ``out`` from the start; with ``follow``, keep
    reading from the last byte offset until the run is finished. Control
    characters other than tab and newline are shown as escapes unless ``raw``."""
    poll_s = POLL_S if poll_s is None else poll_s
    offset = 0
    while True:
        piece = client.logs(run_id, offset)
        if piece["data"]:
            out.write(piece["data"] if raw else printable(piece["data"], keep="\n\t"))
            out.flush()
        offset = piece["next_offset"]
        if piece["done"]:
            return
        if not piece["data"]:
            if not follow:
                return
            time.sleep(poll_s)


def describe_submission(created: dict[str, Any]) -> str:
    runs = created["runs"]
    ids = ", ".join(str(r["id"]) for r in runs)
    seeds = ", ".join(str(r["seed"]) for r in runs)
    return f"submitted {len(runs)} run(s) in group {created['group_key'][:12]}: ids {ids} (seeds {seeds})"
