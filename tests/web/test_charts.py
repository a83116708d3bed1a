"""Server-side downsampling and the usage arithmetic (pure functions, plain values)."""

from __future__ import annotations

import math
import random

import pytest

from service.core.hardware import gpus_of
from service.runs.logparse import MetricPoint
from service.web.charts import downsample_minmax, figure, run_series


def test_small_series_are_left_alone() -> None:
    assert downsample_minmax([1, 2, 3], [3.0, 2.0, 1.0], 10) == [0, 1, 2]


def test_downsampling_keeps_ends_extremes_and_the_point_budget() -> None:
    rng = random.Random(1)
    n = 20_000
    xs = list(range(n))
    ys = [math.exp(-i / 5000) + rng.gauss(0, 0.01) for i in range(n)]
    ys[7777] = 9.0  # a loss spike
    ys[12345] = -3.0
    keep = downsample_minmax(xs, ys, 1000)
    assert len(keep) <= 1000 and keep == sorted(set(keep))
    assert keep[0] == 0 and keep[-1] == n - 1
    assert 7777 in keep and 12345 in keep
    # The envelope survives: a point lies in a bucket (about 41 points wide here) whose
    # min and max are kept, so any window holds kept points at least as extreme as
    # every point further than one bucket from its edges.
    for lo in range(1, n - 400, 200):
        hi = lo + 400
        kept = [ys[i] for i in keep if lo <= i < hi]
        inner = ys[lo + 41 : hi - 41]
        assert max(kept) >= max(inner) and min(kept) <= min(inner)


def test_diverged_values_stay_visible_and_json_safe() -> None:
    ys = [1.0] * 5000
    ys[2500] = math.nan
    ys[4000] = math.inf
    keep = downsample_minmax(list(range(5000)), ys, 100)
    assert 2500 in keep and 4000 in keep
    metrics = [MetricPoint("train", i, i * 10.0, train_loss=y) for i, y in enumerate(ys)]
    fig = figure("loss", "loss", [run_series(metrics)["train_loss"]], max_points=100)
    assert None in fig["data"][0]["y"] and all(y is None or math.isfinite(y) for y in fig["data"][0]["y"])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        downsample_minmax([1, 2], [1.0], 10)
    with pytest.raises(ValueError):
        downsample_minmax(list(range(10)), [0.0] * 10, 2)


def test_figure_carries_both_x_axes_for_its_buttons() -> None:
    metrics = [MetricPoint("train", s, s * 250.0, train_loss=5.0 / s) for s in range(1, 5001)]
    metrics += [MetricPoint("val", s, s * 250.0, val_loss=2.0, val_bpb=1.3) for s in (2500, 5000)]
    series = run_series(metrics)
    fig = figure("train loss", "loss", [series["train_loss"]], max_points=500)
    step_args, time_args = (b["args"][0]["x"] for b in fig["layout"]["updatemenus"][0]["buttons"])
    assert fig["data"][0]["x"] == step_args[0] and len(step_args[0]) <= 500
    assert time_args[0][-1] == 1250.0 and fig["points"] == 5000
    assert series["val_bpb"].steps == [2500, 5000] and series["val_bpb"].values == [1.3, 1.3]


def test_gpus_of_hardware_strings() -> None:
    assert (gpus_of("H100:8"), gpus_of("H200"), gpus_of("cpu"), gpus_of("H100:x")) == (8, 1, 0, 1)
