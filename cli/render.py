"""How the CLI shows runs: tables and detail views (rich), no I/O beyond the console.

Every piece of text from the server goes through ``escape`` (markup) or
``printable`` (plain output): a name or a note may hold terminal escapes, and
those are shown as ``\\x1b``, never sent to the terminal (service/core/text.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape as escape_markup
from rich.panel import Panel
from rich.table import Table

from service.core.status import TERMINAL_VALUES, RunStatus
from service.core.text import printable

TERMINAL = TERMINAL_VALUES
STATUS_STYLE = {
    RunStatus.QUEUED.value: "cyan",
    RunStatus.PROVISIONING.value: "yellow",
    RunStatus.RUNNING.value: "bold yellow",
    RunStatus.SUCCEEDED.value: "green",
    RunStatus.FAILED.value: "bold red",
    RunStatus.CANCELLED.value: "dim",
    RunStatus.ABORTED_BEHIND.value: "magenta",
}


def escape(text: object, keep: str = "") -> str:
    """Server text for rich markup: control characters as visible escapes (except
    those in ``keep``), then ``[`` escaped so the text is never read as markup."""
    return escape_markup(printable(str(text), keep))


def status_text(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{escape(status)}[/]"


def fmt_bpb(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def fmt_bytes(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def fmt_time(value: str | None) -> str:
    """ISO timestamp from the API -> 'YYYY-MM-DD HH:MM:SS' (UTC)."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return escape(value)


def fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def fmt_start(value: str | None, now: datetime | None = None) -> str:
    """An estimated start as 'YYYY-MM-DD HH:MM:SS (in 1 h 05 min)'; 'not expected' when None."""
    if not value:
        return "not expected"
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return escape(value)
    minutes = max(0, round(((at - (now or datetime.now(timezone.utc))).total_seconds()) / 60))
    wait = "now" if minutes == 0 else f"in {minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"in {minutes} min"
    return f"{fmt_time(value)} ({wait})"


def queue_line(run: dict[str, Any]) -> str:
    """Position, estimated start and reason of a QUEUED run, for `caddie show`."""
    position = run.get("queue_position")
    where = f"position {position} on {escape(run.get('hardware', ''))}" if position else "no position"
    return f"{where}; expected start {fmt_start(run.get('estimated_start_at'))}; {escape(run.get('waiting_reason') or '')}"


def runs_table(runs: list[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("name", min_width=6)
    table.add_column("team", max_width=14, no_wrap=True, overflow="ellipsis")
    table.add_column("user", max_width=12, no_wrap=True, overflow="ellipsis")
    table.add_column("seed", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("val_bpb", justify="right", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("group", no_wrap=True)
    table.add_column("submitted", no_wrap=True)
    for run in runs:
        table.add_row(
            str(run["id"]),
            escape(run["name"]),
            escape(run["team"]),
            escape(run["user"]),
            str(run["seed"]),
            status_text(run["status"]) + (f" #{run['queue_position']}" if run.get("queue_position") else ""),
            fmt_bpb(run.get("val_bpb")),
            fmt_bytes(run.get("artifact_bytes")),
            escape(run["group_key"][:8]),
            fmt_time(run.get("submitted_at"))[5:16],  # MM-DD HH:MM
        )
    return table


def _pairs(title: str, rows: list[tuple[str, str]]) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return Panel(table, title=title, title_align="left")


def run_detail(run: dict[str, Any], events: list[dict[str, Any]], metrics: list[dict[str, Any]]) -> Group:
    """Everything `caddie show` prints about one run."""
    reason = run.get("status_reason") or ""
    about = [
        ("run", f"{run['id']}  {escape(run['name'])}"),
        ("status", status_text(run["status"]) + (f"  ({escape(reason)})" if reason else "")),
        ("team / user", escape(f"{run['team']} / {run['user']}")),
        ("seed", str(run["seed"])),
        ("group", escape(run["group_key"])),
        ("track", escape(run["track"])),
        ("hardware", escape(run["hardware"])),
        ("priority", str(run["priority"])),
        ("attempts", attempts_text(run, events)),
        ("submitted", fmt_time(run.get("submitted_at"))),
        ("started", fmt_time(run.get("started_at"))),
        ("finished", fmt_time(run.get("finished_at"))),
        spec_line(run),
    ]
    if run.get("notes"):
        about.append(("notes", escape(run["notes"], keep="\n\t")))
    if run.get("cancel_requested_at"):
        about.append(("cancel requested", fmt_time(run["cancel_requested_at"])))
    if run["status"] == RunStatus.QUEUED and run.get("waiting_reason"):
        about.append(("queue", queue_line(run)))
    results = [
        ("val_bpb", fmt_bpb(run.get("val_bpb"))),
        ("pre-TTT bpb", fmt_bpb(run.get("pre_ttt_bpb"))),
        ("val_loss", fmt_bpb(run.get("val_loss"))),
        ("artifact bytes", fmt_bytes(run.get("artifact_bytes"))),
        ("model / code bytes", f"{fmt_bytes(run.get('model_bytes'))} / {fmt_bytes(run.get('code_bytes'))}"),
        ("steps", "-" if run.get("steps") is None else str(run["steps"])),
        ("train / eval", f"{fmt_seconds(run.get('train_seconds'))} / {fmt_seconds(run.get('eval_seconds'))}"),
        ("peak memory", "-" if run.get("peak_memory_mib") is None else f"{run['peak_memory_mib']:.0f} MiB"),
        ("log", f"{fmt_bytes(run.get('log_bytes'))} bytes"),
    ]
    last_train = next((m for m in reversed(metrics) if m["kind"] == "train"), None)
    last_val = next((m for m in reversed(metrics) if m["kind"] == "val"), None)
    if last_train:
        results.append(("last train", f"step {last_train['step']}  train_loss {fmt_bpb(last_train.get('train_loss'))}"))
    if last_val:
        results.append(("last val", f"step {last_val['step']}  val_bpb {fmt_bpb(last_val.get('val_bpb'))}"))
    event_table = Table(title="last events", title_justify="left", header_style="bold")
    for column in ("at", "from", "to", "actor", "reason"):
        event_table.add_column(column)
    for event in events[-10:]:
        event_table.add_row(fmt_time(event["at"]), escape(event.get("from_status") or "-"), status_text(event["to_status"]), escape(event["actor"]), escape(event.get("reason") or ""))
    parts: list[RenderableType] = [_pairs("run", about), _pairs("results", results)]
    history = run.get("attempt_history") or []
    if len(history) > 1:  # one attempt says nothing the lines above do not
        parts.append(attempts_table(history))
    return Group(*parts, event_table)


def attempts_table(history: list[dict[str, Any]]) -> Table:
    """Each launch of the run (GET /runs/{id}'s attempt_history): where it ran, how it ended, what it billed."""
    table = Table(title="attempts", title_justify="left", header_style="bold")
    for column in ("#", "cluster", "started", "ended", "how", "GPU-hours"):
        table.add_column(column, justify="right" if column in ("#", "GPU-hours") else "left")
    for a in history:
        table.add_row(str(a["attempt"]), escape(a.get("cluster") or "-"), fmt_time(a.get("started_at")), fmt_time(a.get("ended_at")),
                      escape(a.get("ended") or "running"), f"{(a.get('billed_gpu_seconds') or 0) / 3600:.2f}")  # fmt: skip
    return table


def spec_line(run: dict[str, Any]) -> tuple[str, str]:
    """What the run runs: the shared trainer's changed knobs, or the team's own script by sha256."""
    spec = run.get("spec") or {}
    if run.get("kind") == "script":
        env = " ".join(f"{k}={v}" for k, v in (spec.get("env") or {}).items())
        files = ", ".join(spec.get("files") or {})
        text = f"own train_gpt.py sha256 {spec.get('script', '?')}  data {spec.get('data', '?')}"
        return "script", escape(text + (f"  env {env}" if env else "") + (f"  files {files}" if files else ""))
    return "config", escape(", ".join(f"{k}={v}" for k, v in spec.items())) or "(defaults)"


def attempts_text(run: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """How many times the run was taken from the queue to run (its events to PROVISIONING);
    the run's ``attempts`` counts only the times it went back (preemption, a lost job)."""
    launches = sum(1 for e in events if e.get("to_status") == RunStatus.PROVISIONING)
    requeued = run.get("attempts") or 0
    if not requeued:
        return str(launches)
    return f"{launches} (requeued {requeued} time{'s' if requeued != 1 else ''})"


def print_results(console: Console, runs: list[dict[str, Any]]) -> None:
    """The closing lines of `submit --follow`: each run's outcome."""
    for run in runs:
        line = f"run {run['id']} (seed {run['seed']}): {status_text(run['status'])}"
        if run["status"] == RunStatus.SUCCEEDED:
            line += f"  val_bpb {fmt_bpb(run.get('val_bpb'))}  artifact {fmt_bytes(run.get('artifact_bytes'))} bytes"
        elif run.get("status_reason"):
            line += f"  ({escape(run['status_reason'])})"
        console.print(line, highlight=False)
