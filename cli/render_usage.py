"""How ``caddie usage`` shows a team's compute: tables per period and per user,
the budget, and one bar per UTC day drawn with block characters. Input is the
JSON of GET /teams/{name}/usage; no I/O beyond the console."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from cli.render import escape

PHASES = ("provisioning", "setup", "training", "evaluation", "requeued")
PHASE_TITLES = {"provisioning": "provision", "setup": "setup/data/upload", "training": "training", "evaluation": "eval", "requeued": "requeued"}
EIGHTHS = " ▏▎▍▌▋▊▉"
BAR_WIDTH = 40


def bar(value: float, largest: float, width: int = BAR_WIDTH) -> str:
    """``value`` as a bar of full blocks and one partial block, ``width`` cells for ``largest``."""
    if largest <= 0 or value <= 0:
        return " " * width
    eighths = max(1, round(value / largest * width * 8))
    text = "█" * (eighths // 8) + (EIGHTHS[eighths % 8] if eighths % 8 else "")
    return text.ljust(width)


def money(value: float) -> str:
    return f"${value:,.2f}"


def hours(value: float) -> str:
    return f"{value:,.2f}"


def period_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"GPU-hours per {report['period']} (UTC)", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column(report["period"], no_wrap=True)
    table.add_column("GPU-h", justify="right")
    table.add_column("cost", justify="right")
    for phase in PHASES:
        table.add_column(PHASE_TITLES[phase], justify="right")
    for row in [*report["periods"], {**report["total"], "start": "total"}]:
        table.add_row(
            escape(row["start"]), hours(row["gpu_hours"]), money(row["cost"]), *(hours(row["phases"][p]["gpu_hours"]) for p in PHASES),
            style="bold" if row["start"] == "total" else None,
        )
    return table


def user_table(report: dict[str, Any]) -> Table:
    table = Table(title="per user", box=box.SIMPLE_HEAD, title_justify="left")
    for name, justify in (("user", "left"), ("GPU-h", "right"), ("cost", "right"), ("training share", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in report["users"]:
        table.add_row(escape(row["user"]), hours(row["gpu_hours"]), money(row["cost"]), share(row))
    return table


def share(figures: dict[str, Any]) -> str:
    """Training GPU-hours over billed GPU-hours."""
    total = figures["gpu_hours"]
    return f"{figures['phases']['training']['gpu_hours'] / total:.0%}" if total else "-"


def budget_line(report: dict[str, Any]) -> str:
    b = report["budget"]
    used = f"{hours(b['used_gpu_hours'])} GPU-h billed in the last {b['period_days']:g} days"
    if b["budget_gpu_hours"] is None:
        return f"budget: none ({used}); weight {report['weight']:g}"
    return f"budget: {hours(b['budget_gpu_hours'])} GPU-h, {used}, {hours(b['remaining_gpu_hours'])} left; weight {report['weight']:g}"


def day_bars(report: dict[str, Any]) -> list[str]:
    largest = max((d["gpu_hours"] for d in report["days"]), default=0.0)
    return [f"{d['start']} {bar(d['gpu_hours'], largest)} {hours(d['gpu_hours']):>9} GPU-h {money(d['cost']):>11}" for d in report["days"]]


def print_usage(out: Console, report: dict[str, Any]) -> None:
    total = report["total"]
    out.print(
        f"[bold]{escape(report['team'])}[/]: {hours(total['gpu_hours'])} GPU-h, {money(total['cost'])} "
        f"from {escape(report['since'][:10])} to {escape(report['until'][:16].replace('T', ' '))} UTC; training {share(total)} of the billed time"
    )
    out.print(escape(budget_line(report)))
    if report.get("saved_gpu_hours"):
        out.print(f"saved by early aborts: {hours(report['saved_gpu_hours'])} GPU-h (time cap left of the ABORTED_BEHIND runs)")
    if report.get("warm_starts"):
        out.print(
            f"warm starts: {report['warm_starts']} run(s) on a reused warm cluster saved ~{hours(report['warm_start_saved_gpu_hours'])} GPU-h "
            f"({money(report['warm_start_saved_cost'])}) of provisioning"
        )
    out.print(period_table(report))
    if report["users"]:
        out.print(user_table(report))
    out.print("GPU-hours per day (UTC)", style="bold")
    for line in day_bars(report):
        out.print(escape(line), soft_wrap=True)
    if report["unpriced_hardware"]:
        out.print(f"no price for {escape(', '.join(report['unpriced_hardware']))}: counted at $0 (set CADDIE_GPU_PRICES)", style="yellow")
