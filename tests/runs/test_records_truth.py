"""Every log of the challenge's records gives the figures its record states (truth.json,
written from the records' submission.json by tests/fixtures/records/make_truth.py, not
from the parser), each figure with the line it came from."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from service.runs.logparse import parse_script_log, script_result

ROOT = Path(__file__).resolve().parents[2] / ".." / "shared" / "challenge" / "records" / "track_10min_16mb"
TRUTH = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "records" / "truth.json").read_text())

pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason="the challenge's records are not at ../shared/challenge")


@pytest.mark.parametrize("record", TRUTH, ids=[r["record"] for r in TRUTH])
def test_record_logs_give_the_stated_figures(record: dict) -> None:
    folder = ROOT / record["record"]
    scores = []
    for log in [x for x in record["logs"] if not x["not_a_run_log"]]:
        points, summary = parse_script_log((folder / log["log"]).read_text(errors="replace"))
        result = script_result(summary)
        assert result.problem is None, f"{log['log']}: {result.problem}"
        bpb = result.values["val_bpb"]
        line = result.sources["val_bpb"]
        assert str(line["line_no"]) and "val_bpb" in line["line"]
        if log["val_bpb"] is not None or not any(x["val_bpb"] is not None for x in record["logs"]):
            scores.append(bpb)  # the logs whose figures the record states (all, where it states none per log)
        if log["val_bpb"] is not None:
            assert bpb == pytest.approx(log["val_bpb"], abs=6e-5), f"{log['log']}: read {bpb} from line {line['line_no']}: {line['line']}"
        if log["val_loss"] is not None:
            assert result.values["val_loss"] == pytest.approx(log["val_loss"], abs=6e-5), f"{log['log']}: val_loss from line {line['line_no']}"
        if log["steps"] is not None and not log["eval_only"]:  # an evaluation-only log has no training steps
            assert abs(result.values.get("steps", -9) - log["steps"]) <= 1, f"{log['log']}: steps {result.sources.get('steps')}"
        if log["pre_ttt_bpb"] is not None:
            assert result.values.get("pre_ttt_bpb") == pytest.approx(log["pre_ttt_bpb"], abs=6e-5), f"{log['log']}: pre-TTT {result.sources.get('pre_ttt_bpb')}"
        if log["artifact_bytes"] is not None:
            stated_as = {result.values.get("artifact_bytes"), result.values.get("model_bytes")}  # total, or the model alone
            assert log["artifact_bytes"] in stated_as, f"{log['log']}: artifact {result.sources.get('artifact_bytes')}"
        if not log["eval_only"]:
            assert points, f"{log['log']}: no curve point"
            assert "train_seconds" in result.values, f"{log['log']}: no training time"
        assert all(math.isfinite(v) for v in (bpb, result.values["val_loss"]))
    if record["val_bpb"] is not None and scores and not (record["decision"] and "not checked" in record["decision"]):
        assert statistics.mean(scores) == pytest.approx(record["val_bpb"], abs=1.5e-3)
