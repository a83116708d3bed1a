"""Full and sliding-window evaluation: every target scored exactly once, val_bpb by the formula."""

import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from trainer.bpb import ByteLUTs, token_bytes
from trainer.config import TrainerConfig
from trainer.data import load_val_tokens
from trainer.evaluate import EvalResult, ScoreTotals, evaluate_full, evaluate_sliding, plan_windows, score_windows, ttt_chunk_bounds
from trainer.model import GPT


class Bigram(nn.Module):
    """A stand-in LM with the two calls evaluation uses: logits depend on the previous token only."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=g))

    def forward_logits(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(idx)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


class Context(nn.Module):
    """A stand-in whose logits depend on the whole causal prefix inside the window (a running
    mean of embeddings), so scores do depend on where a window starts."""

    def __init__(self, vocab: int, dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab)

    def forward_logits(self, idx: torch.Tensor) -> torch.Tensor:
        e = self.emb(idx)
        mean = e.cumsum(1) / torch.arange(1, idx.size(1) + 1, device=idx.device)[None, :, None]
        return self.out(mean + e)

    def forward(self, idx, targets):
        logits = self.forward_logits(idx)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


@pytest.fixture(scope="module")
def val_and_luts(smoke_corpus):
    val = load_val_tokens(str(smoke_corpus.data_path / "fineweb_val_*.bin"), 3001)
    return val, ByteLUTs.from_sentencepiece(str(smoke_corpus.tokenizer_path), 1024)


def coverage(plan, total: int) -> np.ndarray:
    count = np.zeros(total, dtype=np.int64)
    for lo, hi in zip(plan.lo, plan.hi):
        count[lo:hi] += 1
    return count


@pytest.mark.parametrize("total, seq_len, stride", [
    (1000, 64, 16), (1000, 64, 64), (1000, 64, 7), (1000, 64, 1), (64, 64, 16), (65, 64, 16),
    (50, 64, 16), (2048 * 3 + 5, 2048, 64), (10, 4, 3),
])
def test_sliding_plan_scores_every_target_exactly_once_with_enough_context(total, seq_len, stride):
    plan = plan_windows(0, total, total, seq_len, stride)
    w = min(seq_len, total)
    assert (coverage(plan, total) == 1).all()
    assert (plan.starts >= 0).all() and (plan.starts + w <= total).all()
    assert (plan.lo >= plan.starts).all() and (plan.hi <= plan.starts + w).all()
    # the first window scores all its targets; later ones at most `stride`, each with >= W - stride of context
    assert plan.starts[0] == 0 and plan.lo[0] == 0 and plan.hi[0] == w
    assert ((plan.hi - plan.lo)[1:] <= stride).all() and ((plan.lo - plan.starts)[1:] >= w - stride).all()
    # windows start every `stride` tokens (the last one is moved to end on the last target)
    assert (np.diff(plan.starts[:-1]) == min(stride, w)).all()


def test_chunked_plans_together_score_every_target_once():
    total, chunk = 1000, 96
    counts = sum(coverage(plan_windows(a, b, total, 64, 16), total) for a, b in ttt_chunk_bounds(total, chunk))
    assert (counts == 1).all()
    assert ttt_chunk_bounds(1000, 96)[-1] == (960, 1000) and len(ttt_chunk_bounds(1000, 96)) == 11


def reference_sliding(model, tokens: torch.Tensor, luts, seq_len: int, stride: int) -> tuple[float, int, int]:
    """The spec's words, one window at a time: windows start every `stride` tokens, the first
    scores all its targets, each later one its last `stride`; a last window covers the tail."""
    total = tokens.numel() - 1
    w = min(seq_len, total)
    windows = [(s, 0 if s == 0 else w - stride) for s in range(0, total - w + 1, stride)]
    covered = windows[-1][0] + w
    if covered < total:
        windows.append((total - w, w - (total - covered)))
    loss, count, nbytes = 0.0, 0, 0
    with torch.no_grad():
        for s, k in windows:
            x, y = tokens[s:s + w][None], tokens[s + 1:s + w + 1][None]
            ce = F.cross_entropy(model.forward_logits(x)[0, k:], y[0, k:], reduction="sum")
            loss += float(ce)
            count += w - k
            nbytes += int(token_bytes(x[0, k:], y[0, k:], luts).sum())
    return loss, count, nbytes


@pytest.mark.parametrize("seq_len, stride, batch", [(64, 16, 8), (64, 64, 5), (50, 13, 3)])
def test_batched_sliding_evaluation_matches_the_one_window_at_a_time_reference(val_and_luts, seq_len, stride, batch):
    val, luts = val_and_luts
    model = Context(1024)
    r = evaluate_sliding(model, val, luts, seq_len, stride, batch)
    loss, count, nbytes = reference_sliding(model, val, luts, seq_len, stride)
    assert r.tokens == count == val.numel() - 1 and r.bytes == nbytes
    assert r.val_loss == pytest.approx(loss / count, rel=1e-6)
    assert r.val_bpb == pytest.approx(r.val_loss / math.log(2) * r.tokens / r.bytes, rel=1e-12)


def test_every_target_counts_once_in_the_sums(val_and_luts):
    # A bigram model's CE for a target does not depend on context, so the sums over any
    # plan that scores each target once equal the sums over the whole stream at once.
    val, luts = val_and_luts
    model = Bigram(1024)
    with torch.no_grad():
        ce = F.cross_entropy(model.forward_logits(val[:-1]), val[1:], reduction="none").double()
    expected_bytes = int(token_bytes(val[:-1], val[1:], luts).sum())
    for r in (evaluate_sliding(model, val, luts, 64, 16, 7), evaluate_full(model, val, luts, 64, 7),
              evaluate_sliding(model, val, luts, 2048, 64, 4), evaluate_full(model, val, luts, 5000, 2)):
        assert isinstance(r, EvalResult) and r.tokens == val.numel() - 1 and r.bytes == expected_bytes
        assert r.val_loss == pytest.approx(float(ce.mean()), rel=1e-7)  # one target counted twice or missed moves it by ~1e-4


def test_uniform_model_scores_ln_vocab(val_and_luts):
    val, luts = val_and_luts

    class Uniform(Bigram):
        def forward_logits(self, idx):
            return torch.zeros(*idx.shape, 1024) + 0 * self.table[0, 0]

    r = evaluate_full(Uniform(1024), val, luts, 128, 4)
    assert r.val_loss == pytest.approx(math.log(1024), rel=1e-7)  # CE is float32 per token
    assert r.val_bpb == pytest.approx(10 * r.tokens / r.bytes, rel=1e-7)  # log2(1024) bits per token
    assert r.seconds >= 0


def test_rank_shares_add_up_to_the_whole(val_and_luts):
    val, luts = val_and_luts
    model = Context(1024)
    total = val.numel() - 1
    plan = plan_windows(0, total, total, 64, 16)
    tokens = val.to(torch.int32)
    with torch.inference_mode():
        whole = score_windows(model, tokens, luts, plan, 8)
        parts = ScoreTotals()
        for rank in range(3):
            parts.add(score_windows(model, tokens, luts, plan.share(rank, 3), 8))
    assert parts.tokens == whole.tokens and parts.bytes == whole.bytes
    assert parts.loss_sum == pytest.approx(whole.loss_sum, rel=1e-6)


def _ddp_eval_worker(rank: int, world: int, init_file: str, val: torch.Tensor, luts: ByteLUTs, out: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        r = evaluate_sliding(Context(1024), val, luts, 64, 16, 8, rank, world)
        out[rank] = (r.val_loss, r.val_bpb, r.tokens, r.bytes)
    finally:
        torch.distributed.destroy_process_group()


def test_sliding_evaluation_under_two_gloo_ranks_equals_one_process(val_and_luts, tmp_path):
    val, luts = val_and_luts
    single = evaluate_sliding(Context(1024), val, luts, 64, 16, 8)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_eval_worker, args=(2, str(tmp_path / "init"), val, luts, out), nprocs=2, join=True)
        got = dict(out)
    for rank in (0, 1):
        loss, bpb, tokens, nbytes = got[rank]
        assert tokens == single.tokens and nbytes == single.bytes
        assert loss == pytest.approx(single.val_loss, rel=1e-6) and bpb == pytest.approx(single.val_bpb, rel=1e-6)


def test_bad_stride_is_refused():
    with pytest.raises(ValueError, match="stride must be positive"):
        plan_windows(0, 100, 100, 64, 0)


def test_real_gpt_sliding_matches_the_reference(val_and_luts):
    val, luts = val_and_luts
    torch.manual_seed(0)
    cfg = TrainerConfig(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, rope_dims=8, xsa_last_n=1,
                        bigram_vocab_size=64, bigram_dim=8, train_seq_len=48, eval_seq_len=48)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tokens = val[:700]
    r = evaluate_sliding(model, tokens, luts, 48, 16, 6)
    loss, count, nbytes = reference_sliding(model, tokens, luts, 48, 16)
    assert (r.tokens, r.bytes) == (count, nbytes)
    assert r.val_loss == pytest.approx(loss / count, rel=1e-5)
