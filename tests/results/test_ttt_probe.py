"""The ttt_protocol rule for the shared trainer: the perturbation probe over the trainer's own
evaluate_ttt (a small real GPT, on the CPU) finds score-first; an adapt-then-score variant fails it."""

from __future__ import annotations

import copy

import pytest
import torch

from service.results.ttt_probe import probe_score_first
from trainer.bpb import ByteLUTs
from trainer.config import TrainerConfig
from trainer.evaluate import adapt_on_chunk, evaluate_ttt, score_chunk, ttt_chunk_bounds, ttt_lr_at, ttt_optimizer
from trainer.model import GPT

VOCAB = 1024
CFG = TrainerConfig(vocab_size=VOCAB, eval_seq_len=32, eval_stride=8, eval_batch_seqs=8, ttt_chunk_tokens=96,
                    ttt_lr=0.05, ttt_momentum=0.9, ttt_epochs=1, ttt_batch_seqs=2, ttt_grad_clip=1.0,
                    num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, rope_dims=8, xsa_last_n=1,
                    bigram_vocab_size=64, bigram_dim=8, train_seq_len=32)
LUTS = ByteLUTs(torch.full((VOCAB,), 3, dtype=torch.int32), torch.zeros(VOCAB, dtype=torch.bool), torch.zeros(VOCAB, dtype=torch.bool))
TOKENS = torch.randint(0, VOCAB, (401,), generator=torch.Generator().manual_seed(0), dtype=torch.int64).to(torch.int32)
CHUNKS = ttt_chunk_bounds(TOKENS.numel() - 1, CFG.ttt_chunk_tokens)


@pytest.fixture(scope="module")
def initial() -> GPT:
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def adapt_then_score(model, tokens, luts, cfg) -> None:
    """The illegal order: adapt on a chunk, then score it."""
    tokens = tokens.to(torch.int32)
    chunks = ttt_chunk_bounds(tokens.numel() - 1, cfg.ttt_chunk_tokens)
    opt = ttt_optimizer(model, cfg)
    for c, bounds in enumerate(chunks):
        adapt_on_chunk(model, opt, tokens, bounds, ttt_lr_at(c, len(chunks), cfg), cfg)
        score_chunk(model, tokens, luts, bounds, cfg)


# a token in the middle of the third chunk: earlier targets of its own chunk and two whole chunks before it
POSITION = CHUNKS[2][0] + 50


def test_the_trainers_ttt_changes_no_earlier_prediction(initial) -> None:
    r = probe_score_first(lambda m, t: evaluate_ttt(m, t, LUTS, CFG), lambda: copy.deepcopy(initial), TOKENS, CHUNKS, POSITION, VOCAB)
    assert r.ok, r.reason()
    assert r.compared == POSITION - 1  # every target before the changed one was compared
    assert "changed none of" in r.reason()


def test_the_probe_fails_adapt_then_score(initial) -> None:
    r = probe_score_first(lambda m, t: adapt_then_score(m, t, LUTS, CFG), lambda: copy.deepcopy(initial), TOKENS, CHUNKS, POSITION, VOCAB)
    assert not r.ok and r.changed
    # only targets of the changed token's own chunk can leak, and they do
    assert all(CHUNKS[2][0] <= t < POSITION - 1 for t in r.changed)
    assert "adapted before scoring" in r.reason()
