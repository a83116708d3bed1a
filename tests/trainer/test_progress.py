"""Progress lines of the final evaluation's long phases (trainer.train.RunLog.ticker and the evaluations' ``tick``):
a person watching the log sees sliding windows, TTT chunks and phased-TTT batches move, and caddie's silence
watchdog hears the trainer; the figures do not change with it."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from test_evaluate import Context
from test_ttt import (
    CFG,
    val_and_luts as ttt_val_and_luts,  # noqa: F401 (fixture)
)
from test_ttt_lora import probe_case  # noqa: F401 (fixture)

from trainer.evaluate import evaluate_full, evaluate_sliding, evaluate_ttt, evaluate_ttt_lora_phased
from trainer.model import GPT
from trainer.train import RunLog


class Ticks(list):
    def __call__(self, done: int, total: int) -> None:
        self.append((done, total))


def assert_counts_up_to_the_end(ticks: Ticks) -> None:
    totals = {total for _, total in ticks}
    done = [d for d, _ in ticks]
    assert len(totals) == 1 and done == sorted(done) and done[0] > 0 and done[-1] == totals.pop(), ticks


def test_sliding_and_full_evaluation_tick_each_batch_and_score_the_same(ttt_val_and_luts) -> None:  # noqa: F811
    val, luts = ttt_val_and_luts
    model = Context(1024)
    for run in (lambda tick: evaluate_sliding(model, val, luts, 32, 8, 8, tick=tick), lambda tick: evaluate_full(model, val, luts, 32, 4, tick=tick)):
        ticks = Ticks()
        with_ticks, without = run(ticks), run(None)
        assert (with_ticks.val_loss, with_ticks.tokens, with_ticks.bytes) == (without.val_loss, without.tokens, without.bytes)
        assert len(ticks) > 2
        assert_counts_up_to_the_end(ticks)


def test_ttt_ticks_each_chunk_and_scores_the_same(ttt_val_and_luts) -> None:  # noqa: F811
    val, luts = ttt_val_and_luts
    model = Context(1024)
    ticks = Ticks()
    with_ticks = evaluate_ttt(copy.deepcopy(model), val, luts, CFG, tick=ticks)
    without = evaluate_ttt(copy.deepcopy(model), val, luts, CFG)
    assert with_ticks.val_loss == without.val_loss and len(ticks) == -(-(val.numel() - 1) // CFG.ttt_chunk_tokens)
    assert_counts_up_to_the_end(ticks)


def test_phased_lora_ttt_ticks_each_batch_and_scores_the_same(probe_case) -> None:  # noqa: F811
    state, cfg, val, luts = probe_case
    results, ticks = [], Ticks()
    for tick in (ticks, None):
        model = GPT(cfg)
        model.load_state_dict(state)
        torch.manual_seed(7)
        results.append(evaluate_ttt_lora_phased(model, val, luts, cfg, tick=tick))
    assert results[0].val_loss == results[1].val_loss and len(ticks) > 2
    assert_counts_up_to_the_end(ticks)


def test_the_log_prints_a_phases_progress_at_most_every_interval_and_not_at_its_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = RunLog(tmp_path, True)
    every = log.ticker("ttt", every_s=0.0)
    assert every is not None
    for done in range(1, 5):
        every(done, 4)
    rarely = log.ticker("sliding_eval", every_s=3600.0)
    assert rarely is not None
    for done in range(1, 5):
        rarely(done, 4)
    log.close()
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert [re.sub(r"elapsed:\d+s", "elapsed:Ns", line) for line in lines] == [f"ttt_progress:{d}/4 elapsed:Ns" for d in (1, 2, 3)]
    assert capsys.readouterr().out.splitlines() == lines  # stdout too: what the launcher streams
    assert RunLog(tmp_path / "other rank", False).ticker("ttt") is None  # only rank 0 writes
