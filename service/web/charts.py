"""Chart data for the pages (pure: numbers in, plotly figure dicts out).

A run may log a training loss every step: 20,000 points per curve, several
curves per page. Browsers draw a few thousand points per chart quickly, so
every series is cut down here, on the server, to at most ``max_points``
points with ``downsample_minmax``: the x range is split into equal buckets
and each bucket keeps its lowest and its highest point (in x order), so
spikes and the envelope of a noisy loss survive, which averaging would hide.
The first and the last point are always kept.

Figures carry two button rows (plotly ``updatemenus``): x as step or as
wallclock seconds, y linear or log. Both x series ride along in the figure,
so switching needs no request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_POINTS = 1000


def downsample_minmax(xs: Sequence[float], ys: Sequence[float], max_points: int = MAX_POINTS) -> list[int]:
    """Indices of at most ``max_points`` points of (xs, ys) to draw, ascending.

    ``xs`` must be non-decreasing. Buckets are equal slices of the index range;
    each keeps the index of its minimum and of its maximum y.
    """
    n = len(xs)
    if n != len(ys):
        raise ValueError(f"xs has {n} values, ys {len(ys)}")
    if n <= max_points:
        return list(range(n))
    if max_points < 4:
        raise ValueError("max_points must be at least 4")
    buckets = (max_points - 2) // 2
    keep = {0, n - 1}
    inner = n - 2
    for b in range(buckets):
        lo = 1 + b * inner // buckets
        hi = 1 + (b + 1) * inner // buckets
        if lo >= hi:
            continue
        # Non-finite values (a diverged loss) are kept visible as the bucket's max.
        best_lo = min(range(lo, hi), key=lambda i: ys[i] if math.isfinite(ys[i]) else math.inf)
        best_hi = max(range(lo, hi), key=lambda i: ys[i] if math.isfinite(ys[i]) else math.inf)
        keep.update((best_lo, best_hi))
    return sorted(keep)


@dataclass
class Series:
    """One curve: y against step and against wallclock seconds (None where the time is unknown)."""

    name: str
    steps: list[int] = field(default_factory=list)
    seconds: list[float | None] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, step: int, seconds: float | None, value: float | None) -> None:
        if value is None:
            return
        self.steps.append(step)
        self.seconds.append(seconds)
        self.values.append(value)

    def downsampled(self, max_points: int = MAX_POINTS) -> "Series":
        keep = downsample_minmax(self.steps, self.values, max_points)
        return Series(self.name, [self.steps[i] for i in keep], [self.seconds[i] for i in keep], [self.values[i] for i in keep])


def run_series(metrics: Iterable[Any], label: str = "") -> dict[str, Series]:
    """``train_loss`` (train rows) and ``val_bpb``, ``val_loss`` (val rows) of one run, in step order."""
    prefix = f"{label} " if label else ""
    out = {"train_loss": Series(f"{prefix}train loss"), "val_bpb": Series(f"{prefix}val_bpb"), "val_loss": Series(f"{prefix}val loss")}
    for m in sorted(metrics, key=lambda m: m.step):
        seconds = m.elapsed_ms / 1000 if m.elapsed_ms is not None else None
        if m.kind == "train":
            out["train_loss"].add(m.step, seconds, m.train_loss)
        else:
            out["val_bpb"].add(m.step, seconds, m.val_bpb)
            out["val_loss"].add(m.step, seconds, m.val_loss)
    return out


def _finite(values: Sequence[float | None]) -> list[float | None]:
    # JSON has no NaN or inf; plotly leaves a gap at null.
    return [v if v is not None and math.isfinite(v) else None for v in values]


def plain_label(text: str) -> str:
    """A user's text as plotly shows it literally: plotly reads trace names and templates as
    pseudo-HTML (``<a href>`` becomes a clickable link) and ``%{...}`` as a template field."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("%{", "%\u200b{")  # a zero-width space: shown the same, no longer a field


def figure(title: str, y_title: str, series: Sequence[Series], *, max_points: int = MAX_POINTS, markers: bool = False) -> dict[str, Any]:
    """A plotly figure (a plain dict, JSON-ready) with the step/wallclock and linear/log buttons."""
    drawn = [s.downsampled(max_points) for s in series if s.values]
    traces = [
        {
            "type": "scatter",
            "mode": "lines+markers" if markers or len(s.values) < 30 else "lines",
            "name": plain_label(s.name),
            "x": s.steps,
            "y": _finite(s.values),
            "hovertemplate": "%{y:.4f} at %{x}<extra>" + plain_label(s.name) + "</extra>",
        }
        for s in drawn
    ]
    by_step = {"x": [s.steps for s in drawn]}
    by_time = {"x": [s.seconds for s in drawn]}
    return {
        "title": title,  # shown by the page above the chart: plotly's own title would sit under the buttons
        "data": traces,
        "layout": {
            "height": 340 if len(drawn) > 1 else 300,
            "margin": {"l": 60, "r": 20, "t": 40, "b": 90 if len(drawn) > 1 else 50},  # room for a legend when there is one
            "xaxis": {"title": {"text": "step", "standoff": 6}},
            "yaxis": {"title": {"text": y_title}, "type": "linear"},
            "legend": {"orientation": "h", "y": -0.3, "yanchor": "top"},
            "hovermode": "x unified" if len(drawn) == 1 else "closest",
            "updatemenus": [
                _buttons(0.0, [("step", "update", [by_step, {"xaxis.title.text": "step"}]),
                               ("wallclock", "update", [by_time, {"xaxis.title.text": "wallclock (s)"}])]),
                _buttons(0.32, [("linear", "relayout", [{"yaxis.type": "linear"}]),
                                ("log", "relayout", [{"yaxis.type": "log"}])]),
            ],
        },
        "points": sum(len(s.values) for s in series),  # before downsampling, for the page to say so
    }  # fmt: skip


def _buttons(x: float, items: list[tuple[str, str, list[Any]]]) -> dict[str, Any]:
    return {
        "type": "buttons",
        "direction": "right",
        "showactive": True,
        "x": x,
        "xanchor": "left",
        "y": 1.02,
        "yanchor": "bottom",
        "pad": {"r": 4, "t": 0},
        "buttons": [{"label": label, "method": method, "args": args} for label, method, args in items],
    }


def run_figures(metrics: Iterable[Any], *, max_points: int = MAX_POINTS) -> dict[str, dict[str, Any]]:
    """The run page's two charts: training loss and val_bpb."""
    series = run_series(metrics)
    return {
        "loss": figure("train loss", "loss (nats)", [series["train_loss"]], max_points=max_points),
        "bpb": figure("val_bpb", "bits per byte", [series["val_bpb"]], max_points=max_points, markers=True),
    }


def overlay_figures(runs: Sequence[tuple[str, Iterable[Any]]], *, max_points: int = MAX_POINTS) -> dict[str, dict[str, Any]]:
    """Compare page: one curve per run, labelled, on the same two charts."""
    per_run = [run_series(metrics, label) for label, metrics in runs]
    return {
        "loss": figure("train loss", "loss (nats)", [s["train_loss"] for s in per_run], max_points=max_points),
        "bpb": figure("val_bpb", "bits per byte", [s["val_bpb"] for s in per_run], max_points=max_points, markers=True),
    }


def usage_figure(days: Sequence[str], used: Sequence[float], budget: float | None) -> dict[str, Any]:
    """GPU-hours per day (bars) and their running total against the budget (a line)."""
    total = 0.0
    cumulative = []
    for u in used:
        total += u
        cumulative.append(round(total, 4))
    traces: list[dict[str, Any]] = [
        {"type": "bar", "name": "GPU-hours per day", "x": list(days), "y": [round(u, 4) for u in used]},
        {"type": "scatter", "mode": "lines", "name": "GPU-hours so far", "x": list(days), "y": cumulative},
    ]
    if budget is not None:
        traces.append({"type": "scatter", "mode": "lines", "name": f"budget ({budget:g} GPU-h)", "x": list(days),
                       "y": [budget] * len(days), "line": {"dash": "dash", "color": "#c0392b"}})
    return {
        "title": "GPU-hours per day and so far",
        "data": traces,
        "layout": _usage_layout(height=300),
    }


def usage_overview_figure(views: Sequence[Any]) -> dict[str, Any]:
    """GPU-hours per day of every team, stacked (a global admin's usage page): one bar trace a team that used any."""
    traces = [{"type": "bar", "name": v.team, "x": [d.isoformat() for d in v.days], "y": [round(u, 4) for u in v.gpu_hours]}
              for v in views if v.total > 0]  # fmt: skip
    return {
        "title": "GPU-hours per day, every team",
        "data": traces,
        "layout": _usage_layout(height=360, barmode="stack"),
    }


def _usage_layout(**extra: Any) -> dict[str, Any]:
    """The usage charts' layout: GPU-hours from zero, the legend under the plot."""
    return {**extra, "margin": {"l": 60, "r": 20, "t": 20, "b": 70},
            "yaxis": {"title": {"text": "GPU-hours"}, "rangemode": "tozero"}, "legend": {"orientation": "h", "y": -0.2, "yanchor": "top"}}  # fmt: skip
