"""The sweep page's figures (plotly dicts, JSON-ready; pure): best-so-far against GPU-hours, a
parallel-coordinates view of the trials, knob importance, and each trial's train-loss curve with
pruned trials marked."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from service.sweeps.schemas import TrialOut
from service.web.charts import plain_label


def _layout(x_title: str, y_title: str, height: int = 320) -> dict[str, Any]:
    return {"height": height, "margin": {"l": 60, "r": 20, "t": 20, "b": 60}, "xaxis": {"title": {"text": x_title}},
            "yaxis": {"title": {"text": y_title}}, "legend": {"orientation": "h", "y": -0.25, "yanchor": "top"}}  # fmt: skip


def best_so_far(trials: Sequence[TrialOut]) -> dict[str, Any]:
    """x: GPU-hours used by the ended trials, in the order they ended; y: the best complete trial's val_bpb so far."""
    ended = sorted((t for t in trials if t.finished_at is not None and t.gpu_hours is not None), key=lambda t: (t.finished_at, t.number))
    spent, best = 0.0, math.inf
    xs: list[float] = []
    ys: list[float] = []
    points: dict[str, tuple[list[Any], list[Any], list[Any]]] = {"complete": ([], [], []), "pruned": ([], [], [])}
    for t in ended:
        spent += t.gpu_hours or 0.0
        if t.status == "complete" and t.value is not None:
            best = min(best, t.value)
        if math.isfinite(best):
            xs.append(round(spent, 4))
            ys.append(best)
        if t.status in points and t.value is not None:
            px, py, pt = points[t.status]
            px.append(round(spent, 4))
            py.append(t.value)
            pt.append(f"#{t.number}")
    data: list[dict[str, Any]] = [{"type": "scatter", "mode": "lines", "line": {"shape": "hv"}, "name": "best so far", "x": xs, "y": ys}]
    for status, symbol in (("complete", "circle"), ("pruned", "x")):
        px, py, pt = points[status]
        data.append({"type": "scatter", "mode": "markers", "name": status + (" (predicted)" if status == "pruned" else ""), "x": px, "y": py,
                     "text": pt, "marker": {"symbol": symbol, "size": 9}, "hovertemplate": "%{text}: %{y:.4f}<extra></extra>"})  # fmt: skip
    return {"title": "Best val_bpb so far against GPU-hours spent", "data": data, "layout": _layout("GPU-hours", "val_bpb")}


def parallel_coordinates(trials: Sequence[TrialOut], space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """One line per trial with a value, through each knob and val_bpb (log ranges on a log10 axis, values as categories)."""
    rows = [t for t in trials if t.value is not None and t.status in ("complete", "pruned")]
    if len(rows) < 2:
        return None
    dims: list[dict[str, Any]] = []
    for name, knob in space.items():
        raw = [t.params.get(name) for t in rows]
        if "values" in knob:
            labels = [str(v) for v in knob["values"]]
            dims.append({"label": plain_label(name), "values": [labels.index(str(v)) if str(v) in labels else None for v in raw],
                         "tickvals": list(range(len(labels))), "ticktext": [plain_label(x) for x in labels]})  # fmt: skip
        elif knob.get("log"):
            dims.append({"label": plain_label(f"log10 {name}"), "values": [math.log10(v) if isinstance(v, (int, float)) and v > 0 else None for v in raw]})
        else:
            dims.append({"label": plain_label(name), "values": raw})
    values = [t.value for t in rows]
    dims.append({"label": "val_bpb", "values": values})
    line = {"color": values, "colorscale": "Viridis", "reversescale": True, "showscale": True}
    return {"title": "Trials across the knobs (pruned trials at their predicted val_bpb)",
            "data": [{"type": "parcoords", "line": line, "dimensions": dims}], "layout": {"height": 360, "margin": {"l": 70, "r": 70, "t": 50, "b": 30}}}  # fmt: skip


def importance(found: Mapping[str, float] | None) -> dict[str, Any] | None:
    if not found:
        return None
    names = list(found)
    return {"title": "Knob importance (Optuna's PED-ANOVA)",
            "data": [{"type": "bar", "orientation": "h", "x": [found[n] for n in names], "y": [plain_label(n) for n in names]}],
            "layout": {**_layout("importance", ""), "height": 80 + 40 * len(names)}}  # fmt: skip


def trial_curves(trials: Sequence[TrialOut], curves: Mapping[int, Sequence[tuple[int, float]]]) -> dict[str, Any]:
    """Each trial's train loss by step (its runs' mean); pruned trials dashed, the step they were stopped at marked."""
    data = []
    for t in trials:
        points = curves.get(t.number) or []
        if not points:
            continue
        pruned = t.status == "pruned"
        data.append({"type": "scatter", "mode": "lines", "name": f"#{t.number}" + (" pruned" if pruned else ""),
                     "x": [s for s, _ in points], "y": [v for _, v in points], "line": {"dash": "dot" if pruned else "solid"}})  # fmt: skip
    return {"title": "Trials' train loss (pruned: dotted)", "data": data, "layout": _layout("step", "train loss (nats)", 360)}
