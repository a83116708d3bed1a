"""Validation: full-split, sliding-window, and legal score-first test-time training (TTT).

Terms: the val stream has N tokens, so T = N - 1 targets; target j is token j+1, predicted
from tokens 0..j. A window of length W starting at s feeds tokens s..s+W-1 and predicts
targets s..s+W-1. Every evaluation scores each target exactly once and reports
    val_loss = Σ CE / scored tokens              (nats, sums in float64)
    val_bpb  = (val_loss / ln 2) · scored tokens / scored bytes
with bytes per bpb.py (token_bytes: the tokenizer's tables, or for CaseOps data the val byte sidecar
at each target's stream position); sums are all-reduced when torch.distributed is initialised.

Sliding windows (stride S): the first window starts at 0 and scores all its W targets;
each later window ends S targets further on and scores only its last S targets (the last
one scores what is left), so every target after the first W has >= W - S tokens of context.
Full-split evaluation is the same with S = W: non-overlapping windows, the tail scored by
one window that ends at the last target.

TTT (legal, score-first): the targets are cut into chunks of TTT_CHUNK_TOKENS; for each
chunk in order, its sliding windows are scored under inference mode first, and only then,
unless it is the last chunk, the model adapts on that chunk's tokens with SGD. So the
loss credited to chunk k comes from weights adapted on chunks 0..k-1 only.

Phased LoRA TTT (TTT_MODE=lora_phased, the 2026-04-27 record's; ``evaluate_ttt_lora_phased``):
documents run from a BOS through the next BOS (their last target is the next document's BOS),
sorted by length and cut into batches of TTT_LORA_BATCH_DOCS, longest batch first. In a batch
each document has its own LoRA (B zeroed per batch) and is read TTT_LORA_CHUNK_TOKENS targets
at a time: chunk c is scored by the model plus the LoRA in a window of up to EVAL_SEQ_LEN tokens
ending at it, and only then, unless it is the document's last chunk, the LoRA takes AdamW steps
on chunk c's mean loss. Once the first b_p = TTT_PREFIX_DOCS·p/TTT_PHASES documents of the queue
are scored, the whole model takes SGD over those b_p (already scored) documents and the LoRAs
restart. So every loss is scored before any weight has seen its target.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.bpb import ByteLUTs, token_bytes
from trainer.config import TrainerConfig
from trainer.model import TTTLoRA

# Progress of a long evaluation: called with (units done, units in all) as it goes (trainer.train's RunLog.ticker
# prints a line at most every so often). Counters and the wall clock only: it never waits for the GPU.
Tick = Callable[[int, int], None]


@dataclass
class EvalResult:
    val_loss: float
    val_bpb: float
    tokens: int
    bytes: int
    seconds: float


@dataclass
class ScoreTotals:
    """Sums over scored targets: Σ CE (nats), target count, byte count."""

    loss_sum: float = 0.0
    tokens: int = 0
    bytes: int = 0

    def add(self, other: "ScoreTotals") -> None:
        self.loss_sum += other.loss_sum
        self.tokens += other.tokens
        self.bytes += other.bytes


@dataclass
class WindowPlan:
    """Windows of one length: window i feeds tokens starts[i].. and scores targets [lo[i], hi[i])."""

    length: int
    starts: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def share(self, rank: int, world_size: int) -> "WindowPlan":
        """This rank's contiguous share of the windows."""
        n = len(self.starts)
        a, b = rank * n // world_size, (rank + 1) * n // world_size
        return WindowPlan(self.length, self.starts[a:b], self.lo[a:b], self.hi[a:b])


def plan_windows(first: int, last: int, total: int, seq_len: int, stride: int) -> WindowPlan:
    """Windows that score targets [first, last) of ``total`` exactly once.

    Window length W = min(seq_len, total). Targets below W are scored by the window at 0
    (full causal context); after that each window scores the next ``stride`` targets
    (fewer for the last) and ends at the last target it scores.
    """
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    if not 0 <= first <= last <= total:
        raise ValueError(f"bad target range [{first}, {last}) of {total}")
    w = min(seq_len, total)
    stride = min(stride, w)
    starts, lo, hi = [], [], []
    p = first
    if p < min(w, last):
        starts.append(np.array([0]))
        lo.append(np.array([p]))
        hi.append(np.array([min(w, last)]))
        p = min(w, last)
    if p < last:
        ends = np.minimum(p + stride * np.arange(1, math.ceil((last - p) / stride) + 1), last)
        begins = np.concatenate([[p], ends[:-1]])
        starts.append(ends - w)
        lo.append(begins)
        hi.append(ends)
    cat = (lambda xs: np.concatenate(xs).astype(np.int64)) if starts else (lambda xs: np.zeros(0, np.int64))
    return WindowPlan(w, cat(starts), cat(lo), cat(hi))


def score_windows(model: torch.nn.Module, tokens: torch.Tensor, luts: ByteLUTs, plan: WindowPlan, batch_seqs: int,
                  tick: Tick | None = None) -> ScoreTotals:
    """Σ CE and bytes of the targets the plan's windows score (this process only, no all-reduce).

    ``tokens`` is the whole val stream on the model's device. The last batch is padded with
    copies of a window that score nothing, so every forward pass has the shape
    [batch_seqs, W] (one compiled graph)."""
    n = len(plan.starts)
    if n == 0:
        return ScoreTotals()
    device = tokens.device
    w = plan.length
    pad = (-n) % batch_seqs
    starts = np.concatenate([plan.starts, np.repeat(plan.starts[-1:], pad)])
    lo_rel = np.concatenate([plan.lo - plan.starts, np.repeat(plan.hi[-1:] - plan.starts[-1:], pad)])
    hi_rel = np.concatenate([plan.hi - plan.starts, np.repeat(plan.hi[-1:] - plan.starts[-1:], pad)])
    offsets = torch.arange(w + 1, device=device)
    positions = torch.arange(w, device=device)
    starts_t = torch.from_numpy(starts).to(device)
    lo_t, hi_t = torch.from_numpy(lo_rel).to(device), torch.from_numpy(hi_rel).to(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    byte_sum = torch.zeros((), dtype=torch.int64, device=device)
    for i in range(0, len(starts), batch_seqs):
        j = min(i + batch_seqs, len(starts))
        k = int(lo_rel[i:j].min())  # positions before k are scored by no window of this batch
        at = starts_t[i:j, None] + offsets  # stream positions of the window's tokens; targets are at[:, 1:]
        win = tokens[at].long()
        x, y = win[:, :-1], win[:, 1:]
        logits = model.forward_logits(x)[:, k:]
        ce = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y[:, k:].reshape(-1), reduction="none")
        pos = positions[k:]
        mask = (pos >= lo_t[i:j, None]) & (pos < hi_t[i:j, None])
        loss_sum += (ce.view(j - i, w - k).double() * mask).sum()
        byte_sum += (token_bytes(x[:, k:], y[:, k:], luts, at[:, k + 1:]).long() * mask).sum()
        if tick is not None:
            tick(min(j, n), n)
    return ScoreTotals(float(loss_sum.item()), int((plan.hi - plan.lo).sum()), int(byte_sum.item()))


def all_reduce_totals(t: ScoreTotals, device: torch.device) -> ScoreTotals:
    """Sum the totals over ranks (float64) when torch.distributed is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    buf = torch.tensor([t.loss_sum, float(t.tokens), float(t.bytes)], dtype=torch.float64, device=device)
    dist.all_reduce(buf)
    return ScoreTotals(float(buf[0]), int(round(float(buf[1]))), int(round(float(buf[2]))))


def result_from(t: ScoreTotals, seconds: float) -> EvalResult:
    """val_loss = Σ CE / tokens; val_bpb = (val_loss / ln 2) · tokens / bytes."""
    if t.tokens == 0 or t.bytes == 0:
        raise ValueError(f"nothing to score: {t.tokens} tokens, {t.bytes} bytes")
    loss = t.loss_sum / t.tokens
    return EvalResult(loss, loss / math.log(2) * t.tokens / t.bytes, t.tokens, t.bytes, seconds)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate_windows(model: torch.nn.Module, val_tokens: torch.Tensor, luts: ByteLUTs, seq_len: int, stride: int,
                     batch_seqs: int, rank: int, world_size: int, tick: Tick | None = None) -> EvalResult:
    t0 = time.perf_counter()
    device = model_device(model)
    tokens = val_tokens.to(device=device, dtype=torch.int32)
    total = tokens.numel() - 1
    plan = plan_windows(0, total, total, seq_len, stride).share(rank, world_size)
    with torch.inference_mode():
        totals = score_windows(model, tokens, luts.to(device), plan, batch_seqs, tick)
    return result_from(all_reduce_totals(totals, device), time.perf_counter() - t0)


def evaluate_full(model: torch.nn.Module, val_tokens: torch.Tensor, luts: ByteLUTs, seq_len: int, batch_seqs: int,
                  rank: int = 0, world_size: int = 1, tick: Tick | None = None) -> EvalResult:
    """Every target scored once by non-overlapping windows of seq_len (the tail by one last window)."""
    return evaluate_windows(model, val_tokens, luts, seq_len, seq_len, batch_seqs, rank, world_size, tick)


def evaluate_sliding(model: torch.nn.Module, val_tokens: torch.Tensor, luts: ByteLUTs, seq_len: int, stride: int,
                     batch_seqs: int, rank: int = 0, world_size: int = 1, tick: Tick | None = None) -> EvalResult:
    """Every target scored once by sliding windows of seq_len that advance by ``stride``."""
    return evaluate_windows(model, val_tokens, luts, seq_len, stride, batch_seqs, rank, world_size, tick)


# --- legal score-first TTT -------------------------------------------------------------------


def ttt_chunk_bounds(total: int, chunk_tokens: int) -> list[tuple[int, int]]:
    """Target ranges [a, b) of the TTT chunks, in order."""
    return [(a, min(a + chunk_tokens, total)) for a in range(0, total, chunk_tokens)]


def ttt_lr_at(chunk: int, n_chunks: int, cfg: TrainerConfig) -> float:
    """Cosine decay across chunks: lr_c = TTT_LR · ½(1 + cos(π · c / (n_chunks - 1)))."""
    return cfg.ttt_lr * 0.5 * (1.0 + math.cos(math.pi * chunk / max(n_chunks - 1, 1)))


def ttt_optimizer(model: torch.nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer:
    """SGD with momentum over every parameter (all of them trainable during TTT)."""
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    return torch.optim.SGD(params, lr=cfg.ttt_lr, momentum=cfg.ttt_momentum)


def score_chunk(model: torch.nn.Module, tokens: torch.Tensor, luts: ByteLUTs, bounds: tuple[int, int], cfg: TrainerConfig,
                rank: int = 0, world_size: int = 1) -> ScoreTotals:
    """Score the chunk's targets with sliding windows (this rank's share) under inference mode."""
    total = tokens.numel() - 1
    stride = cfg.eval_stride or cfg.eval_seq_len
    plan = plan_windows(bounds[0], bounds[1], total, cfg.eval_seq_len, stride).share(rank, world_size)
    with torch.inference_mode():
        return score_windows(model, tokens, luts, plan, cfg.eval_batch_seqs)


def adapt_on_chunk(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor, bounds: tuple[int, int],
                   lr: float, cfg: TrainerConfig, rank: int = 0, world_size: int = 1) -> None:
    """TTT_EPOCHS passes of SGD over the chunk's targets only, cut into sequences of
    EVAL_SEQ_LEN (one shorter sequence when the chunk is shorter), in batches of
    TTT_BATCH_SEQS sequences. Each rank takes a contiguous share of every batch; the
    gradient is the batch mean over all ranks (all-reduced) before clipping."""
    a, b = bounds
    seq = min(cfg.eval_seq_len, b - a)
    starts = a + seq * torch.arange((b - a) // seq, device=tokens.device)
    offsets = torch.arange(seq + 1, device=tokens.device)
    params = [p for p in model.parameters() if p.requires_grad]
    distributed = dist.is_available() and dist.is_initialized() and world_size > 1
    for g in optimizer.param_groups:
        g["lr"] = lr
    for _ in range(cfg.ttt_epochs):
        for i in range(0, len(starts), cfg.ttt_batch_seqs):
            batch = starts[i:i + cfg.ttt_batch_seqs]
            n = len(batch)
            mine = batch[rank * n // world_size:(rank + 1) * n // world_size]
            optimizer.zero_grad(set_to_none=True)
            if len(mine):
                win = tokens[mine[:, None] + offsets].long()
                loss = model(win[:, :-1], win[:, 1:])
                (loss * (len(mine) / n)).backward()  # this rank's share of the batch mean
            if distributed:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                flat = torch.cat([g.reshape(-1).float() for g in grads])
                dist.all_reduce(flat)
                for p, g in zip(params, torch.split(flat, [g.numel() for g in grads])):
                    p.grad = g.view_as(p).to(p.dtype)
            if cfg.ttt_grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.ttt_grad_clip)
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def evaluate_ttt(model: torch.nn.Module, val_tokens: torch.Tensor, luts: ByteLUTs, cfg: TrainerConfig,
                 rank: int = 0, world_size: int = 1, *, chunk_scores: list[ScoreTotals] | None = None, tick: Tick | None = None) -> EvalResult:
    """Legal score-first TTT over the whole val stream; the model's weights are changed.

    For each chunk in order: score it (``score_chunk``, inference mode), add to the totals,
    then, unless it is the last chunk, ``adapt_on_chunk`` at the chunk's cosine LR. When
    ``chunk_scores`` is given, the totals credited to each chunk (this rank's share) are
    appended to it.
    """
    t0 = time.perf_counter()
    device = model_device(model)
    tokens = val_tokens.to(device=device, dtype=torch.int32)
    luts = luts.to(device)
    chunks = ttt_chunk_bounds(tokens.numel() - 1, cfg.ttt_chunk_tokens)
    optimizer = ttt_optimizer(model, cfg)
    totals = ScoreTotals()
    for c, bounds in enumerate(chunks):
        scored = score_chunk(model, tokens, luts, bounds, cfg, rank, world_size)
        totals.add(scored)
        if chunk_scores is not None:
            chunk_scores.append(scored)
        if c < len(chunks) - 1:
            adapt_on_chunk(model, optimizer, tokens, bounds, ttt_lr_at(c, len(chunks), cfg), cfg, rank, world_size)
        if tick is not None:
            tick(c + 1, len(chunks))
    return result_from(all_reduce_totals(totals, device), time.perf_counter() - t0)


# --- phased LoRA TTT (TTT_MODE=lora_phased) ---------------------------------------------------

Document = tuple[int, int]  # (first token, length) in the val stream


def find_documents(tokens: torch.Tensor, bos: int) -> list[Document]:
    """Each BOS through the next BOS inclusive (so its last target is the next document's BOS); the
    last document runs to the end of the stream. A stream that does not start with a BOS starts with
    one more document, so every target is scored (the record's val data always starts with one)."""
    starts = (tokens == bos).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    ends = [b + 1 for b in starts[1:]] + [tokens.numel()]
    return [(a, e - a) for a, e in zip(starts, ends) if e - a >= 2]


def lora_batches(docs: list[Document], batch_docs: int) -> list[tuple[int, list[tuple[int, Document]]]]:
    """The LoRA TTT queue: (document index, document) sorted by length, cut into batches of
    ``batch_docs``; the batches (with their index in that length order) longest first."""
    by_length = sorted(enumerate(docs), key=lambda e: e[1][1])
    batches = [by_length[i:i + batch_docs] for i in range(0, len(by_length), batch_docs)]
    return sorted(enumerate(batches), key=lambda b: -max(n for _, (_, n) in b[1]))


def lora_chunk_window(chunk: int, targets: int, chunk_tokens: int, seq_len: int) -> tuple[int, int, int, int]:
    """(window start, window length, chunk offset in the window, chunk length) of a document's chunk:
    chunk c holds targets [c·C, min((c+1)·C, n)); its window is the up-to-``seq_len`` tokens ending at it."""
    last = -(-targets // chunk_tokens) - 1
    end = targets if chunk == last else (chunk + 1) * chunk_tokens
    start = max(0, end - seq_len)
    return start, end - start, chunk * chunk_tokens - start, end - chunk * chunk_tokens


def make_lora(model: torch.nn.Module, cfg: TrainerConfig, docs: int, device: torch.device) -> tuple[TTTLoRA, torch.optim.Optimizer]:
    """Fresh LoRAs for ``docs`` documents (A drawn from the global generator) and their AdamW (eps 1e-10, the record's)."""
    lora = TTTLoRA(model, docs, cfg.ttt_lora_rank, cfg.ttt_lora_alpha, cfg.ttt_lora_warm_start_a).to(device)
    opt = torch.optim.AdamW(lora.parameters(), lr=cfg.ttt_lora_lr, betas=(cfg.ttt_lora_beta1, cfg.ttt_lora_beta2), eps=1e-10,
                            weight_decay=cfg.ttt_lora_weight_decay, fused=device.type == "cuda")
    return lora, opt


def reset_lora(lora: TTTLoRA, opt: torch.optim.Optimizer) -> None:
    """B to zero, A redrawn unless warm-started (TTT_LORA_WARM_START_A), the optimiser's moments and step count to zero."""
    lora.reset()
    for state in opt.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                v.zero_()
            elif k == "step":
                state[k] = 0


ChunkStep = Callable[[Callable[[], torch.Tensor], slice, torch.Tensor, torch.optim.Optimizer, int], torch.Tensor]


def score_then_adapt(losses_of: Callable[[], torch.Tensor], chunk: slice, train: torch.Tensor, opt: torch.optim.Optimizer,
                     steps: int) -> torch.Tensor:
    """The legal order for one chunk of a batch: the per-token losses [docs, window] of the current
    weights (what is scored), then ``steps`` optimiser steps on Σ_docs train_d · mean(loss[d, chunk])."""
    losses = losses_of()
    scored = losses.detach()
    if bool(train.any()):
        for step in range(steps):
            if step:
                losses = losses_of()
            opt.zero_grad(set_to_none=True)
            (losses[:, chunk].mean(dim=-1) * train).sum().backward()
            opt.step()
    return scored


def document_segments(x: torch.Tensor, bos: int, max_len: int) -> list[tuple[int, int]]:
    """[start, end) pieces of a packed row: a piece starts at 0 and at every BOS, and one longer than
    ``max_len`` is cut every ``max_len`` tokens (the record's cu_seqlens for its global TTT)."""
    starts = sorted({0, *(x == bos).nonzero().flatten().tolist()})
    bounds = starts + [x.numel()]
    return [(p, min(p + max_len, b)) for a, b in zip(bounds, bounds[1:]) for p in range(a, b, max_len)]


def packed_document_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainerConfig, scale: float) -> None:
    """Backward of scale · mean CE over a packed row whose documents attend only within themselves:
    pieces (``document_segments``) run as rows of their own, longest first, in groups of at most
    len(x) padded tokens (lengths padded to a multiple of 64, fewer shapes to compile); padding
    comes after each piece, so under causal attention it changes no real position."""
    pieces = sorted(document_segments(x, cfg.bos_token_id, cfg.eval_seq_len), key=lambda p: p[0] - p[1])
    n = x.numel()
    i = 0
    while i < len(pieces):
        width = min(-(-(pieces[i][1] - pieces[i][0]) // 64) * 64, max(cfg.eval_seq_len, pieces[i][1] - pieces[i][0]))
        rows = max(1, min(len(pieces) - i, n // width))
        group = pieces[i:i + rows]
        xs = torch.zeros(rows, width, dtype=torch.long, device=x.device)
        ys = torch.zeros_like(xs)
        mask = torch.zeros(rows, width, dtype=torch.bool, device=x.device)
        for r, (a, b) in enumerate(group):
            xs[r, :b - a], ys[r, :b - a], mask[r, :b - a] = x[a:b], y[a:b], True
        # the class's own (eager) forward: train.py swaps in a compiled one with static shapes, and every
        # new (rows, width) here would compile anew inside the eval budget
        logits = type(model).forward_logits(model, xs)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), ys.reshape(-1), reduction="none")
        ((ce * mask.reshape(-1)).sum() * (scale / n)).backward()
        i += rows


def adapt_on_documents(model: torch.nn.Module, doc_tokens: torch.Tensor, cfg: TrainerConfig, rank: int = 0, world_size: int = 1) -> None:
    """The phase's whole-model SGD (the record's global TTT) over the scored documents, concatenated:
    chunks of TTT_CHUNK_TOKENS but the last, each cut into its whole EVAL_SEQ_LEN sequences, TTT_EPOCHS
    passes in batches of TTT_BATCH_SEQS sequences packed into one row that attends within documents;
    LR ``ttt_lr_at`` of the chunk, SGD with momentum, gradient mean over ranks, clipped."""
    seq = cfg.eval_seq_len
    chunks = ttt_chunk_bounds(doc_tokens.numel() - 1, cfg.ttt_chunk_tokens)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=cfg.ttt_lr, momentum=cfg.ttt_momentum)
    distributed = dist.is_available() and dist.is_initialized() and world_size > 1
    for c, (a, b) in enumerate(chunks[:-1]):
        seqs = (b - a) // seq
        if seqs == 0:
            continue
        for g in opt.param_groups:
            g["lr"] = ttt_lr_at(c, len(chunks), cfg)
        lo, hi = seqs * rank // world_size, seqs * (rank + 1) // world_size
        per_rank = -(-seqs // world_size)
        batches = -(-per_rank // cfg.ttt_batch_seqs)  # the same count on every rank, so the all-reduces pair up
        for _ in range(cfg.ttt_epochs):
            for k in range(batches):
                s, e = lo + k * cfg.ttt_batch_seqs, min(lo + (k + 1) * cfg.ttt_batch_seqs, hi)
                opt.zero_grad(set_to_none=True)
                if s < e:
                    row = doc_tokens[a + s * seq:a + e * seq + 1].long()
                    packed_document_loss(model, row[:-1], row[1:], cfg, 1.0)
                if distributed:
                    for p in params:
                        grad = p.grad if p.grad is not None else torch.zeros_like(p)
                        dist.all_reduce(grad)
                        p.grad = grad / world_size
                if cfg.ttt_grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.ttt_grad_clip)
                opt.step()
    opt.zero_grad(set_to_none=True)
    for p in params:
        p.requires_grad_(False)


@dataclass
class ScoredChunk:
    """One scoring step of LoRA TTT, for legality probes: the step's index in scoring order, the
    targets it scored (stream positions; target j is token j+1) and their losses (float32). Steps
    count on each rank; one rank's steps are the whole scoring order."""

    step: int
    targets: torch.Tensor
    losses: torch.Tensor


def evaluate_ttt_lora_phased(model: torch.nn.Module, val_tokens: torch.Tensor, luts: ByteLUTs, cfg: TrainerConfig,
                             rank: int = 0, world_size: int = 1, *, chunk_step: ChunkStep = score_then_adapt,
                             trace: list[ScoredChunk] | None = None, tick: Tick | None = None) -> EvalResult:
    """Phased LoRA TTT (module docstring) over the documents of the val stream; the model's weights
    change in the phases. Ranks take the queue's batches round-robin and reach each phase boundary
    after the same round, so the phases are the same on every rank (one rank: the record's order).
    ``chunk_step`` is the order of scoring and training within a chunk (a probe may swap it);
    ``trace`` receives every scoring step."""
    t0 = time.perf_counter()
    device = model_device(model)
    tokens = val_tokens.to(device=device, dtype=torch.int64)
    luts = luts.to(device)
    docs = find_documents(val_tokens.cpu(), cfg.bos_token_id)
    queue = lora_batches(docs, cfg.ttt_lora_batch_docs)
    prefix = min(len(docs), cfg.ttt_prefix_docs)
    boundaries = [prefix * (p + 1) // cfg.ttt_phases for p in range(cfg.ttt_phases)]
    phase, phases_done = 0, prefix == 0
    C, L = cfg.ttt_lora_chunk_tokens, cfg.eval_seq_len
    for p in model.parameters():
        p.requires_grad_(False)
    lora, opt = make_lora(model, cfg, cfg.ttt_lora_batch_docs, device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    byte_sum = torch.zeros((), dtype=torch.int64, device=device)
    scored_tokens, step = 0, 0
    scored_docs: list[tuple[int, int, Document]] = []  # (batch index in length order, place in batch, document)
    positions = torch.arange(L, device=device)
    for first in range(0, len(queue), world_size):
        round_ = queue[first:first + world_size]
        if rank < len(round_):
            batch = [d for _, d in round_[rank][1]]
            if len(batch) == lora.batch:
                reset_lora(lora, opt)
                cur_lora, cur_opt = lora, opt
            else:
                cur_lora, cur_opt = make_lora(model, cfg, len(batch), device)
            targets = [n - 1 for _, n in batch]
            n_chunks = torch.tensor([-(-t // C) for t in targets], device=device)
            for c in range(int(n_chunks.max())):
                windows = torch.tensor([lora_chunk_window(c, t, C, L) if c < -(-t // C) else (0, 0, 0, 0) for t in targets])
                starts = torch.tensor([a for a, _ in batch]) + windows[:, 0]
                _, width, offset, _ = lora_chunk_window(c, (c + 1) * C, C, L)
                cols = torch.arange(width + 1)
                at = (starts[:, None] + cols).clamp_(max=tokens.numel() - 1).to(device)  # stream positions; targets at[:, 1:]
                got = tokens[at]
                valid = (cols[:width][None] < windows[:, 1:2]).to(device)
                x = torch.where(valid, got[:, :-1], 0)
                y = torch.where(valid, got[:, 1:], 0)
                off, length = windows[:, 2:3].to(device), windows[:, 3:4].to(device)
                train = (n_chunks - 1 > c).to(torch.float32)
                losses = chunk_step(lambda: model.forward_ttt(x, y, cur_lora), slice(offset, offset + C), train, cur_opt,
                                    cfg.ttt_lora_grad_steps)
                pos = positions[:width][None]
                mask = (pos >= off) & (pos < off + length)
                loss_sum += (losses.double() * mask).sum()
                byte_sum += (token_bytes(x, y, luts, at[:, 1:]).long() * mask).sum()
                scored_tokens += int(windows[:, 3].sum())
                if trace is not None:
                    trace.append(ScoredChunk(step, (starts.to(device)[:, None] + pos)[mask].cpu(), losses[mask].float().cpu()))
                step += 1
        if tick is not None:
            tick(min(first + world_size, len(queue)), len(queue))
        if phases_done:
            continue
        for index, entries in round_:  # every rank counts the whole round, so all pause together
            scored_docs.extend((index, place, doc) for place, (_, doc) in enumerate(entries))
        if len(scored_docs) >= boundaries[phase]:
            chosen = sorted(scored_docs)[:boundaries[phase]]
            adapt_on_documents(model, torch.cat([tokens[a:a + n] for _, _, (a, n) in chosen]), cfg, rank, world_size)
            lora, opt = make_lora(model, cfg, cfg.ttt_lora_batch_docs, device)
            phase += 1
            phases_done = phase >= cfg.ttt_phases
    for p in model.parameters():
        p.requires_grad_(True)
    totals = ScoreTotals(float(loss_sum.item()), scored_tokens, int(byte_sum.item()))
    return result_from(all_reduce_totals(totals, device), time.perf_counter() - t0)
