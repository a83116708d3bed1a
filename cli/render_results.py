"""How the CLI shows results: groups, a group's seeds and checks, comparisons, the leaderboard (rich)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table

from cli.render import escape, fmt_bpb, fmt_bytes, fmt_seconds, status_text

VERDICT_STYLE = {"pass": "green", "fail": "bold red", "not_comparable": "yellow", "declared": "cyan"}


def verdict_text(verdict: str) -> str:
    label = "not comparable" if verdict == "not_comparable" else verdict
    return f"[{VERDICT_STYLE.get(verdict, 'white')}]{escape(label)}[/]"


def fmt_std(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def fmt_p(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if value < 1e-4 else f"{value:.4f}"


def _table(title: str | None = None) -> Table:
    return Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)


def groups_table(groups: list[dict[str, Any]]) -> Table:
    table = _table()
    for name, justify in (("key", "left"), ("name", "left"), ("team", "left"), ("track", "left"), ("hardware", "left"), ("n", "right"),
                          ("val_bpb", "right"), ("std", "right"), ("bytes", "right"), ("checks", "left"), ("diff", "left")):
        table.add_column(name, justify=justify, no_wrap=name not in ("name", "diff"))  # type: ignore[arg-type]
    for g in groups:
        n = f"{g['n']}" + (f" (+{g['not_counted']})" if g["not_counted"] else "")
        table.add_row(escape(g["key"][:12]), escape(g["name"]), escape(g["team"]), escape(g["track"]), escape(g["hardware"]), n,
                      fmt_bpb(g["val_bpb"]["mean"]), fmt_std(g["val_bpb"]["std"]), fmt_bytes(_int(g["max_artifact_bytes"])),
                      verdict_text(g["checks_verdict"]) + (" [dim](published)[/]" if g["published"] else ""), escape(g["diff"]))
    return table


def _int(value: float | int | None) -> int | None:
    return None if value is None else int(value)


def _pairs(title: str, rows: list[tuple[str, str]]) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for k, v in rows:
        grid.add_row(k, v)
    return Panel(grid, title=title, title_align="left", box=box.ROUNDED, expand=False)


def comparison_lines(c: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("baseline", f"{escape(c['baseline_name'])} ({escape(c['baseline'][:12])}), n={c['n_baseline']}"),
            ("candidate", f"n={c['n_candidate']}")]
    if c["improvement"] is not None:
        unit = escape(c.get("unit", "nats"))
        rows.append(("improvement", f"{c['improvement']:+.5f} {unit} (margin {c['margin']:.5f})"))
    if c.get("policy"):
        rows.append(("policy", escape(c["policy"])))
    if c["ci_low"] is not None and c["ci_high"] is not None:
        rows.append((f"{round(100 * c['confidence'])}% CI", f"{c['ci_low']:+.5f} .. {c['ci_high']:+.5f} {escape(c.get('unit', 'nats'))}"))
    if c["t"] is not None:
        rows.append(("Welch t", f"{c['t']:.3f} (df {c['df']:.2f})" if c["df"] is not None else f"{c['t']:.3f}"))
    rows.append(("p (one-sided)", fmt_p(c["p_value"])))
    style = "green" if c["significant"] else "yellow"
    rows.append(("verdict", f"[{style}]{escape(c['message'])}[/]"))
    return rows


def comparison_panel(c: dict[str, Any]) -> Panel:
    return _pairs(f"significance ({c.get('unit', 'nats')}, one-sided Welch)", comparison_lines(c))


def group_detail(g: dict[str, Any]) -> Group:
    bpb, loss = g["val_bpb"], g["val_loss"]
    summary = [
        ("key", escape(g["key"])),
        ("name", escape(g["name"])),
        ("team", escape(g["team"])),
        ("track / hardware", escape(f"{g['track']} / {g['hardware']}")),
        ("config", escape(g["diff"])),
        ("n", f"{g['n']} counted of {g['runs_total']} runs"),
        ("val_bpb", f"{fmt_bpb(bpb['mean'])} ± {fmt_std(bpb['std'])} (best {fmt_bpb(bpb['min'])}, worst {fmt_bpb(bpb['max'])})"),
        ("val_loss", f"{fmt_bpb(loss['mean'])} ± {fmt_std(loss['std'])}"),
        ("best / worst seed", f"{g['best_seed'] if g['best_seed'] is not None else '-'} / {g['worst_seed'] if g['worst_seed'] is not None else '-'}"),
        ("artifact", f"mean {fmt_bytes(_int(g['mean_artifact_bytes']))} bytes, max {fmt_bytes(g['max_artifact_bytes'])}"),
        ("train / eval", f"{fmt_seconds(g['mean_train_seconds'])} / {fmt_seconds(g['mean_eval_seconds'])} (mean)"),
        ("published", "yes" if g["published"] else "no (only your team sees it)"),
    ]
    if g["allow_noncompliant"]:
        summary.append(("flag", "[yellow]allow_noncompliant: results do not count for the track[/]"))
    seeds = _table("seeds")
    for name in ("run", "seed", "status", "val_bpb", "val_loss", "bytes", "train", "eval", "checks", "note"):
        seeds.add_column(name, justify="right" if name in ("run", "seed", "val_bpb", "val_loss", "bytes", "train", "eval") else "left")
    for s in g["seeds"]:
        seeds.add_row(str(s["run_id"]), str(s["seed"]), status_text(s["status"]), fmt_bpb(s["val_bpb"]), fmt_bpb(s["val_loss"]),
                      fmt_bytes(s["artifact_bytes"]), fmt_seconds(s["train_seconds"]), fmt_seconds(s["eval_seconds"]),
                      verdict_text(s["checks_verdict"]) if s["counted"] else "-", escape(s["note"]))
    checks = _table("rule checks")
    for name in ("rule", "verdict", "runs", "reason"):
        checks.add_column(name)
    for c in g["checks"]:
        counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in c["counts"].items() if v)
        checks.add_row(escape(c["rule"]), verdict_text(c["verdict"]), escape(counts) or "-", escape("; ".join(c["reasons"])) or "-")
    parts: list[Any] = [_pairs(f"group {escape(g['key'][:12])}", summary), seeds, checks]
    if g.get("comparison"):
        parts.append(comparison_panel(g["comparison"]))
    elig = g["eligibility"]
    if elig["eligible"]:
        parts.append("[bold green]record-eligible[/]: p < 0.01 against the baseline and every check passes")
    else:
        parts.append("[yellow]not record-eligible[/]: " + escape("; ".join(elig["reasons"])))
    return Group(*parts)


def leaderboard_table(board: dict[str, Any]) -> Table:
    title = escape(f"leaderboard {board['track']}" + (f" on {board['hardware']}" if board["hardware"] else ""))
    table = _table(title)
    for name, justify in (("#", "right"), ("name", "left"), ("team", "left"), ("hardware", "left"), ("n", "right"), ("val_bpb", "right"),
                          ("std", "right"), ("bytes", "right"), ("checks", "left"), ("p", "right"), ("eligible", "left"), ("key", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "name")  # type: ignore[arg-type]
    for e in board["entries"]:
        g = e["group"]
        table.add_row(str(e["rank"]), escape(g["name"]), escape(g["team"]), escape(g["hardware"]), str(g["n"]), fmt_bpb(g["val_bpb"]["mean"]),
                      fmt_std(g["val_bpb"]["std"]), fmt_bytes(g["max_artifact_bytes"]), verdict_text(g["checks_verdict"]),
                      fmt_p(e["p_value"]), "[green]yes[/]" if e["eligible"] else "no", escape(g["key"][:12]))
    return table
