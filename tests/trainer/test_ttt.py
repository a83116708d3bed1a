"""Legal score-first TTT: the loss credited to chunk k comes from weights adapted on chunks < k only."""

import copy
import math

import pytest
import torch
import torch.multiprocessing as mp
from test_evaluate import Bigram, Context

from trainer.bpb import ByteLUTs
from trainer.config import TrainerConfig
from trainer.data import load_val_tokens
from trainer.evaluate import ScoreTotals, adapt_on_chunk, evaluate_sliding, evaluate_ttt, score_chunk, ttt_chunk_bounds, ttt_lr_at, ttt_optimizer
from trainer.model import GPT

CFG = TrainerConfig(vocab_size=1024, eval_seq_len=32, eval_stride=8, eval_batch_seqs=8, ttt_chunk_tokens=96,
                    ttt_lr=0.5, ttt_momentum=0.9, ttt_epochs=2, ttt_batch_seqs=2, ttt_grad_clip=1.0)


@pytest.fixture(scope="module")
def val_and_luts(smoke_corpus):
    val = load_val_tokens(str(smoke_corpus.data_path / "fineweb_val_*.bin"), 601)
    return val, ByteLUTs.from_sentencepiece(str(smoke_corpus.tokenizer_path), 1024)


def tokens_of(val: torch.Tensor) -> torch.Tensor:
    return val.to(torch.int32)


def check_score_first(initial: torch.nn.Module, val: torch.Tensor, luts: ByteLUTs, cfg: TrainerConfig,
                      credited: list[ScoreTotals]) -> list[int]:
    """Chunks whose credited loss differs from scoring that chunk with a fresh copy of the
    initial model adapted (same optimiser, same LRs) on the chunks before it, and nothing else."""
    tokens = tokens_of(val)
    chunks = ttt_chunk_bounds(tokens.numel() - 1, cfg.ttt_chunk_tokens)
    assert len(credited) == len(chunks)
    bad = []
    for k, bounds in enumerate(chunks):
        model = copy.deepcopy(initial)
        opt = ttt_optimizer(model, cfg)
        for j in range(k):
            adapt_on_chunk(model, opt, tokens, chunks[j], ttt_lr_at(j, len(chunks), cfg), cfg)
        expected = score_chunk(model, tokens, luts, bounds, cfg)
        got = credited[k]
        if (got.tokens, got.bytes) != (expected.tokens, expected.bytes) or not math.isclose(
                got.loss_sum, expected.loss_sum, rel_tol=1e-6):  # float32 rounding may differ between runs; leaks do not hide there
            bad.append(k)
    return bad


def adapt_then_score(model, val, luts, cfg) -> list[ScoreTotals]:
    """The illegal order: train on a chunk, then score it (what got the seed PR flagged)."""
    tokens = tokens_of(val)
    chunks = ttt_chunk_bounds(tokens.numel() - 1, cfg.ttt_chunk_tokens)
    opt = ttt_optimizer(model, cfg)
    scores = []
    for c, bounds in enumerate(chunks):
        adapt_on_chunk(model, opt, tokens, bounds, ttt_lr_at(c, len(chunks), cfg), cfg)
        scores.append(score_chunk(model, tokens, luts, bounds, cfg))
    return scores


@pytest.mark.parametrize("make", [Bigram, Context], ids=["bigram", "context"])
def test_credited_loss_of_each_chunk_comes_from_earlier_chunks_only(val_and_luts, make):
    val, luts = val_and_luts
    initial = make(1024)
    model = copy.deepcopy(initial)
    credited: list[ScoreTotals] = []
    r = evaluate_ttt(model, val, luts, CFG, chunk_scores=credited)
    assert len(credited) == 7  # 600 targets in chunks of 96
    assert check_score_first(initial, val, luts, CFG, credited) == []
    # the totals are the credited chunks' sums, and TTT actually helped on this text
    assert r.tokens == sum(c.tokens for c in credited) == val.numel() - 1
    assert r.val_loss == pytest.approx(sum(c.loss_sum for c in credited) / r.tokens, rel=1e-12)
    before = evaluate_sliding(initial, val, luts, CFG.eval_seq_len, CFG.eval_stride, CFG.eval_batch_seqs)
    assert r.tokens == before.tokens and r.bytes == before.bytes
    assert r.val_loss < before.val_loss


def test_the_checker_catches_adapt_then_score(val_and_luts):
    val, luts = val_and_luts
    initial = Bigram(1024)
    illegal = adapt_then_score(copy.deepcopy(initial), val, luts, CFG)
    # every chunk is caught except the last, whose cosine LR is 0 so adapting on it changes nothing
    assert check_score_first(initial, val, luts, CFG, illegal) == list(range(len(illegal) - 1))
    legal: list[ScoreTotals] = []
    evaluate_ttt(copy.deepcopy(initial), val, luts, CFG, chunk_scores=legal)
    # seeing a chunk's targets before scoring them makes its loss look better than it is
    assert sum(c.loss_sum for c in illegal) < sum(c.loss_sum for c in legal)


def test_training_after_chunk_k_sees_only_chunk_k_targets_and_never_the_last_chunk(val_and_luts):
    # token id = position in the stream, so the targets a training step sees tell where they came from
    _, luts = val_and_luts
    val = torch.arange(601)
    trained_on: list[tuple[int, int]] = []

    class Recording(Bigram):
        def forward(self, idx, targets):
            trained_on.append((int(targets.min()), int(targets.max())))
            return super().forward(idx, targets)

    initial = Recording(1024)
    after = copy.deepcopy(initial)
    evaluate_ttt(after, val, luts, CFG)
    chunks = ttt_chunk_bounds(600, CFG.ttt_chunk_tokens)  # targets j = token j + 1
    steps_per_chunk = CFG.ttt_epochs * math.ceil(CFG.ttt_chunk_tokens // CFG.eval_seq_len / CFG.ttt_batch_seqs)
    assert len(trained_on) == (len(chunks) - 1) * steps_per_chunk
    for n, (lo, hi) in enumerate(trained_on):
        a, b = chunks[n // steps_per_chunk]
        assert a + 1 <= lo and hi <= b  # targets of chunk [a, b) are tokens a+1..b
    assert max(hi for _, hi in trained_on) <= chunks[-1][0]
    # and the weights are what adapting on chunks 0..n-2 alone gives
    tokens = val.to(torch.int32)
    replay = copy.deepcopy(initial)
    opt = ttt_optimizer(replay, CFG)
    for j in range(len(chunks) - 1):
        adapt_on_chunk(replay, opt, tokens, chunks[j], ttt_lr_at(j, len(chunks), CFG), CFG)
    assert torch.allclose(after.table, replay.table, rtol=0, atol=1e-5)
    assert not torch.allclose(after.table, initial.table, rtol=0, atol=1e-3)


def test_scoring_runs_in_inference_mode_and_adapting_with_gradients(val_and_luts):
    val, luts = val_and_luts
    modes = []

    class Recording(Bigram):
        def forward_logits(self, idx):
            modes.append("score" if torch.is_inference_mode_enabled() else ("train" if torch.is_grad_enabled() else "?"))
            return super().forward_logits(idx)

    model = Recording(1024)
    tokens = tokens_of(val)
    chunks = ttt_chunk_bounds(tokens.numel() - 1, CFG.ttt_chunk_tokens)
    before = model.table.detach().clone()
    score_chunk(model, tokens, luts, chunks[0], CFG)
    assert set(modes) == {"score"} and torch.equal(model.table, before)
    modes.clear()
    adapt_on_chunk(model, ttt_optimizer(model, CFG), tokens, chunks[0], 0.1, CFG)
    assert set(modes) == {"train"} and not torch.equal(model.table, before)
    # 96 targets in sequences of 32 = 3 sequences, batches of 2 -> 2 steps per epoch, 2 epochs
    assert len(modes) == 4


def test_cosine_lr_across_chunks():
    lrs = [ttt_lr_at(c, 5, CFG) for c in range(5)]
    assert lrs[0] == CFG.ttt_lr and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[2] == pytest.approx(CFG.ttt_lr / 2) and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert ttt_lr_at(0, 1, CFG) == CFG.ttt_lr


def test_chunk_shorter_than_a_sequence_trains_on_one_short_sequence(val_and_luts):
    val, luts = val_and_luts
    cfg = TrainerConfig(**{**CFG.to_dict(), "ttt_chunk_tokens": 20})
    credited: list[ScoreTotals] = []
    r = evaluate_ttt(Bigram(1024), val[:101], luts, cfg, chunk_scores=credited)
    assert [c.tokens for c in credited] == [20] * 5 and r.tokens == 100


def _ddp_ttt_worker(rank, world, init_file, val, luts, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = Context(1024)
        r = evaluate_ttt(model, val, luts, CFG, rank, world)
        out[rank] = (r.val_loss, r.tokens, r.bytes, model.out.weight.detach().clone())
    finally:
        torch.distributed.destroy_process_group()


def test_ttt_under_two_gloo_ranks_equals_one_process(val_and_luts, tmp_path):
    # each rank scores a share of every chunk's windows and trains on a share of every batch;
    # the all-reduced gradient is the whole batch's mean, so the run matches one process
    val, luts = val_and_luts
    val = val[:301]
    single_model = Context(1024)
    single = evaluate_ttt(single_model, val, luts, CFG)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_ttt_worker, args=(2, str(tmp_path / "init"), val, luts, out), nprocs=2, join=True)
        got = dict(out)
    for rank in (0, 1):
        loss, tokens, nbytes, weight = got[rank]
        assert (tokens, nbytes) == (single.tokens, single.bytes)
        assert loss == pytest.approx(single.val_loss, rel=1e-5)
        assert torch.allclose(weight, single_model.out.weight.detach(), atol=1e-5)


def test_real_gpt_is_scored_before_it_adapts(val_and_luts):
    val, luts = val_and_luts
    torch.manual_seed(0)
    cfg = TrainerConfig(**{**CFG.to_dict(), "num_layers": 2, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1,
                           "rope_dims": 8, "xsa_last_n": 1, "bigram_vocab_size": 64, "bigram_dim": 8,
                           "train_seq_len": 32, "ttt_lr": 0.05, "ttt_chunk_tokens": 200})
    initial = GPT(cfg).eval()
    with torch.no_grad():
        for p in initial.parameters():
            p.add_(0.1 * torch.randn_like(p))
    credited: list[ScoreTotals] = []
    evaluate_ttt(copy.deepcopy(initial), val, luts, cfg, chunk_scores=credited)
    assert check_score_first(initial, val, luts, cfg, credited) == []
    illegal = adapt_then_score(copy.deepcopy(initial), val, luts, cfg)
    assert check_score_first(initial, val, luts, cfg, illegal) != []
