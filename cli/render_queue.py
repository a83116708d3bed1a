"""How the CLI shows where queued runs stand (GET /queue, the queue fields of a run); console only."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from cli.render import escape, fmt_start


def queue_table(items: list[dict[str, Any]]) -> Table:
    table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for name, justify in (("pos", "right"), ("id", "right"), ("name", "left"), ("team", "left"), ("user", "left"),
                          ("hardware", "left"), ("prio", "right"), ("expected start", "left"), ("why it waits", "left")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for item in items:
        table.add_row(
            str(item["queue_position"] or "-"),
            str(item["id"]),
            escape(item["name"]),
            escape(item["team"]),
            escape(item["user"]),
            escape(item["hardware"]),
            str(item["priority"]),
            fmt_start(item.get("estimated_start_at")),
            escape(item.get("waiting_reason") or ""),
        )
    return table
