"""Phased LoRA TTT (TTT_MODE=lora_phased): equal to the 2026-04-27 record's ``eval_val_ttt_phased`` on the same
tiny model and tokens, and score-first by a perturbation probe that can fail.

The record's code is read from ../shared/challenge at test time (never copied): its GPT, LoRA and TTT functions
are executed into one namespace (test_frontier_model.record_namespace), with stand-ins for what needs a GPU:
SDPA for FlashAttention 3, per-document SDPA for its varlen call, the plain MLP for its Triton kernel.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import random
import re
import time
import types

import pytest
import torch
from test_frontier_model import BOS, fa3_standin, model_pair, one_thread, randomise, record_namespace  # noqa: F401 (fixture)

from trainer.bpb import ByteLUTs
from trainer.config import ConfigError, TrainerConfig
from trainer.evaluate import ScoredChunk, evaluate_ttt_lora_phased, find_documents, lora_batches, lora_chunk_window, score_then_adapt
from trainer.model import GPT

pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available")  # the record's autocast("cuda") on a CPU

# Small enough to run in seconds, large enough that every path runs: documents longer than a window
# (EVAL_SEQ_LEN 32) and than a packed piece, a last batch of another size, three phases, several global chunks.
# LoRA LR 1e-5: at rank 4 the delta's scale is α/r = 36, and from 1e-4 up the LoRA's Adam steps (sign-like on their
# first step) make the result chaotic (a 1e-6 relative change of the weights moved val_loss by 5e-3): no two
# implementations could agree there. At 1e-5 the same change moves it 1.4e-5, as without TTT, and TTT still acts.
TTT = dict(ttt_mode="lora_phased", ttt_lora_rank=4, ttt_lora_lr=1e-5, ttt_lora_beta2=0.99, ttt_lora_weight_decay=0.5,
           ttt_lora_chunk_tokens=8, ttt_lora_batch_docs=4, ttt_lora_grad_steps=2, ttt_phases=3, ttt_prefix_docs=9,
           ttt_lr=0.05, ttt_momentum=0.9, ttt_epochs=1, ttt_chunk_tokens=64, ttt_batch_seqs=2, ttt_grad_clip=1.0)
RECORD_STACK = dict(num_loops=2, loop_start=2, loop_end=3, parallel_start_layer=5, skip_gates=True, attn_gate="sparse",
                    attn_gate_scale=0.5)
_runs = itertools.count()


def stream(lengths: list[int], vocab: int, seed: int) -> torch.Tensor:
    """Documents of the given lengths (each a BOS and length-1 other tokens), one after another."""
    gen = torch.Generator().manual_seed(seed)
    docs = [torch.cat([torch.tensor([BOS]), torch.randint(2, vocab, (n - 1,), generator=gen)]) for n in lengths]
    return torch.cat(docs)


def byte_luts(vocab: int, seed: int = 5) -> ByteLUTs:
    gen = torch.Generator().manual_seed(seed)
    boundary = torch.zeros(vocab, dtype=torch.bool)
    boundary[[0, BOS]] = True
    base = torch.randint(1, 5, (vocab,), generator=gen, dtype=torch.int32) * ~boundary
    return ByteLUTs(base.to(torch.int32), (torch.rand(vocab, generator=gen) < 0.4) & ~boundary, boundary)


def varlen_standin(fa3):
    """FlashAttention's varlen call as causal SDPA per document (cu_seqlens' padding repeats the total)."""
    def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, causal=True, **kw):
        cu = torch.unique_consecutive(cu_seqlens_q).tolist()
        return torch.cat([fa3.flash_attn_func(q[None, a:b], k[None, a:b], v[None, a:b], causal=True)[0] for a, b in zip(cu, cu[1:])])
    return varlen


def record_ttt(theirs, cfg: TrainerConfig, val: torch.Tensor, luts: ByteLUTs) -> tuple[float, float]:
    """The record's eval_val_ttt_phased; a ByteLUTs with a sidecar runs it with CASEOPS_ENABLED (its val_bytes)."""
    fa3 = fa3_standin()
    ns = record_namespace(
        "RMSNorm", "CastedLinear", "Rotary", "apply_rotary_emb", "CausalSelfAttention", "MLP", "Block", "GPT",
        "_build_cu_seqlens", "get_next_multiple_of_n", "BatchedLinearLoRA", "BatchedTTTLoRA", "_find_docs",
        "_select_ttt_doc_entries", "_build_ttt_global_batches", "_init_batch_counter", "_claim_next_batch",
        "_compute_chunk_window", "_accumulate_bpb", "_loss_bpb_from_sums", "_add_to_counter", "_init_int64_counter",
        "train_val_ttt_global_sgd_distributed", "eval_val_ttt_phased",
        flash_attn_3_func=fa3.flash_attn_func, flash_attn_varlen_func=varlen_standin(fa3), BOS_ID=BOS,
        FusedLeakyReLUSquareMLP=None, softcapped_cross_entropy=None, os=os, fcntl=fcntl, time=time, random=random,
        dist=torch.distributed, log=lambda *a, **k: None)
    # the model's classes must be the namespace's own (BOS_ID, the stand-ins): rebind the instance's methods
    for name in ("forward_ttt", "_block_with_lora", "_parallel_block_with_lora", "_forward_hidden", "forward"):
        setattr(theirs, name, types.MethodType(getattr(ns["GPT"], name), theirs))
    for block in theirs.blocks:
        block.attn.forward = types.MethodType(ns["CausalSelfAttention"].forward, block.attn)
        block.mlp.use_fused = False  # its Triton MLP in training mode; the same function unfused
    h = types.SimpleNamespace(
        ttt_batch_size=cfg.ttt_lora_batch_docs, phased_ttt_prefix_docs=cfg.ttt_prefix_docs, phased_ttt_num_phases=cfg.ttt_phases,
        ttt_chunk_size=cfg.ttt_lora_chunk_tokens, ttt_eval_seq_len=cfg.eval_seq_len, eval_seq_len=cfg.eval_seq_len,
        ttt_eval_batches="", run_id=f"caddie_test_{os.getpid()}_{next(_runs)}", rank=0, world_size=1, seed=0,
        ttt_lora_rank=cfg.ttt_lora_rank, ttt_k_lora=True, ttt_mlp_lora=True, ttt_o_lora=True, ttt_optimizer="adam",
        ttt_lora_lr=cfg.ttt_lora_lr, ttt_beta1=cfg.ttt_lora_beta1, ttt_beta2=cfg.ttt_lora_beta2,
        ttt_weight_decay=cfg.ttt_lora_weight_decay, ttt_grad_steps=cfg.ttt_lora_grad_steps, val_doc_fraction=1.0,
        global_ttt_chunk_tokens=cfg.ttt_chunk_tokens, global_ttt_batch_seqs=cfg.ttt_batch_seqs, global_ttt_lr=cfg.ttt_lr,
        global_ttt_momentum=cfg.ttt_momentum, global_ttt_epochs=cfg.ttt_epochs, global_ttt_warmup_chunks=0,
        global_ttt_warmup_start_lr=0.0, global_ttt_grad_clip=cfg.ttt_grad_clip, global_ttt_respect_doc_boundaries=True)
    caseops = luts.sidecar is not None
    val_data = types.SimpleNamespace(val_tokens=val, caseops_enabled=caseops, val_bytes=luts.sidecar,
                                     base_bytes_lut=None if caseops else luts.base_bytes,
                                     has_leading_space_lut=None if caseops else luts.has_leading_space,
                                     is_boundary_token_lut=None if caseops else luts.is_boundary)
    try:
        return ns["eval_val_ttt_phased"](h, theirs, torch.device("cpu"), val_data, theirs.forward_ttt)
    finally:
        for path in ("ttt_counter", "ttt_prefix_counter", "ttt_pause_flag"):
            if os.path.exists(f"/tmp/{path}_{h.run_id}"):
                os.remove(f"/tmp/{path}_{h.run_id}")


LENGTHS = [70, 9, 33, 5, 17, 41, 12, 26, 8, 50, 14, 3, 21, 64]  # 14 documents: batches of 4, 4, 4, 2


@pytest.mark.parametrize("knobs, lengths", [
    ({}, LENGTHS),
    ({"caseops_enabled": True}, LENGTHS),  # bytes from a (drawn) CaseOps val sidecar at each target's position
    (RECORD_STACK, LENGTHS),
    # the window SmearGate too; documents within EVAL_SEQ_LEN (see adapt_on_documents: a piece cut from a longer
    # document starts without its previous token here, the record's smears it in)
    ({**RECORD_STACK, "smear_gate": True, "smear_gate_kind": "window"}, [c % 31 + 2 for c in LENGTHS]),
], ids=["plain", "caseops", "record_stack", "record_stack_smear"])
def test_phased_lora_ttt_equals_the_records(knobs, lengths):
    knobs = dict(knobs)
    caseops = knobs.pop("caseops_enabled", False)
    theirs, ours, cfg = model_pair(seed=3, **knobs)
    cfg = TrainerConfig.from_dict({**cfg.overrides(), **{k.upper(): v for k, v in TTT.items()}})
    ours.cfg = cfg
    theirs.looping_active = ours.looping = cfg.num_loops > 0
    val = stream(lengths, cfg.vocab_size, seed=4)
    luts = byte_luts(cfg.vocab_size)
    if caseops:
        sidecar = torch.randint(0, 7, (val.numel(),), generator=torch.Generator().manual_seed(6))
        sidecar[0] = 100  # the stream's first token is no target: a sum off by one position would count it
        luts = ByteLUTs.from_sidecar(sidecar)
    torch.manual_seed(7)  # both draw their LoRAs' A from the global generator, in the same order
    a = evaluate_ttt_lora_phased(ours, val, luts, cfg)
    torch.manual_seed(7)
    loss, bpb = record_ttt(theirs, cfg, val, luts)
    assert a.tokens == val.numel() - 1
    assert a.val_loss == pytest.approx(loss, rel=2e-6, abs=0)
    assert a.val_bpb == pytest.approx(bpb, rel=2e-6, abs=0)
    # the phases' whole-model SGD moved both models alike
    assert (ours.tok_emb.weight - theirs.tok_emb.weight).abs().max() < 2e-5
    assert (ours.blocks[0].attn.proj.weight - theirs.qo_bank[cfg.num_layers]).abs().max() < 2e-5
    # and TTT did something: the same model without any adaptation scores otherwise
    _, plain, _ = model_pair(seed=3, **knobs)
    plain.cfg = TrainerConfig.from_dict({**cfg.overrides(), "TTT_LORA_LR": 0.0, "TTT_LR": 0.0})
    plain.looping = ours.looping
    torch.manual_seed(7)
    assert abs(evaluate_ttt_lora_phased(plain, val, luts, plain.cfg).val_loss - a.val_loss) > 1e-3


def test_queue_and_windows_are_the_records():
    ns = record_namespace("_compute_chunk_window", "_find_docs", "_build_ttt_global_batches", BOS_ID=BOS)
    val = stream(LENGTHS, 64, seed=4)
    docs = find_documents(val, BOS)
    assert docs == ns["_find_docs"](val)
    assert lora_batches(docs, 4) == ns["_build_ttt_global_batches"](list(enumerate(docs)), types.SimpleNamespace(ttt_batch_size=4))
    assert find_documents(val[5:], BOS)[0] == (0, 66)  # a stream cut mid-document: its head is a document too
    for n, c in ((70, 0), (70, 5), (70, 8), (9, 1), (3, 0)):
        chunks = -(-(n - 1) // 8)
        if c < chunks:
            assert lora_chunk_window(c, n - 1, 8, 32) == ns["_compute_chunk_window"](c, n - 1, chunks, 8, 32)


# --- legality: a probe that can fail ------------------------------------------------------------


def scored_losses(trace: list[ScoredChunk], total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(step, loss) of every target, each scored exactly once."""
    step = torch.full((total,), -1, dtype=torch.long)
    loss = torch.full((total,), float("nan"))
    for c in trace:
        assert (step[c.targets] == -1).all(), "a target scored twice"
        step[c.targets], loss[c.targets] = c.step, c.losses
    return step, loss


def scored_run(model_state: dict, cfg: TrainerConfig, tokens: torch.Tensor, luts: ByteLUTs, step_fn) -> tuple[torch.Tensor, torch.Tensor]:
    model = GPT(cfg)
    model.load_state_dict(model_state)
    model.eval()
    trace: list[ScoredChunk] = []
    torch.manual_seed(7)
    evaluate_ttt_lora_phased(model, tokens, luts, cfg, chunk_step=step_fn, trace=trace)
    return scored_losses(trace, tokens.numel() - 1)


def earlier_changed(model_state: dict, cfg: TrainerConfig, val: torch.Tensor, luts: ByteLUTs, q: int, step_fn,
                    unchanged: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[int, torch.Tensor]:
    """Change token q (not a BOS) and rerun: (how many targets scored before target q-1 changed their loss, bit
    for bit; which targets changed). "Before": an earlier scoring step, or the same step and an earlier position,
    the order in which the losses are credited. ``unchanged``: the run on ``val``, if already made."""
    def run(tokens):
        return scored_run(model_state, cfg, tokens, luts, step_fn)

    step, base = unchanged or run(val)
    other = val.clone()
    other[q] = (other[q] - 2 + 1) % (cfg.vocab_size - 2) + 2  # another non-BOS token
    assert other[q] != val[q] and val[q] != BOS and other[q] != BOS
    _, changed = run(other)
    differs = ~((base == changed) | (base.isnan() & changed.isnan()))
    t = torch.arange(val.numel() - 1)
    before = (step < step[q - 1]) | ((step == step[q - 1]) & (t < q - 1))
    return int((differs & before).sum()), differs


def adapt_then_score(losses_of, chunk, train, opt, steps):
    """The illegal order: train on the chunk first (its targets too), then score it."""
    score_then_adapt(losses_of, chunk, train, opt, steps)
    return losses_of().detach()


@pytest.fixture(scope="module")
def probe_case():
    _, ours, cfg = model_pair(seed=8, **RECORD_STACK, smear_gate=True, smear_gate_kind="window", bigram_vocab_size=32)
    randomise(ours, 9)
    cfg = TrainerConfig.from_dict({**cfg.overrides(), **{k.upper(): v for k, v in TTT.items()}})
    return ours.state_dict(), cfg, stream(LENGTHS, cfg.vocab_size, seed=10), byte_luts(cfg.vocab_size)


def test_a_later_token_changes_no_earlier_targets_loss_bit_for_bit(probe_case):
    # ~6 s on one core: four whole TTT runs (unchanged, three perturbed tokens: in a document the first phase
    # trains on, in one scored after every phase, in the longest whose windows slide)
    state, cfg, val, luts = probe_case
    docs = find_documents(val, BOS)
    queue = lora_batches(docs, cfg.ttt_lora_batch_docs)
    # the queue's second batch: after it the first phase's SGD runs, on its three documents (the record takes the
    # scored documents of the lowest length-order batches, here all from this batch)
    start, length = queue[1][1][0][1]
    unchanged = scored_run(state, cfg, val, luts, score_then_adapt)
    for q in (start + 20, docs[3][0] + 3, docs[-1][0] + 30):
        before, changed = earlier_changed(state, cfg, val, luts, q, score_then_adapt, unchanged)
        assert before == 0, q
        assert changed[q - 1], q  # the token does matter: its own target's loss changes
        if q == start + 20:  # and through the phase's SGD, the losses of the documents scored after it
            t = torch.arange(changed.numel())
            assert changed[(t < start) | (t >= start + length)].sum() > 50  # of the 97 targets of the 8 documents after it


def test_the_probe_catches_training_before_scoring(probe_case):
    state, cfg, val, luts = probe_case
    docs = find_documents(val, BOS)
    q = docs[0][0] + 20  # chunk 2 of the longest document, not its last
    before, _ = earlier_changed(state, cfg, val, luts, q, adapt_then_score)
    assert before > 0


def test_lora_knobs_validate():
    with pytest.raises(ConfigError, match="TTT_LORA_CHUNK_TOKENS"):
        TrainerConfig.from_dict({"TTT_MODE": "lora_phased", "TTT_LORA_CHUNK_TOKENS": 4096, "EVAL_SEQ_LEN": 2048})
    with pytest.raises(ConfigError, match="TTT_MODE"):
        TrainerConfig.from_dict({"TTT_MODE": "phased"})


def test_a_tiny_run_scores_with_phased_lora_ttt(smoke_corpus, tmp_path):
    from test_train import TINY, corpus_knobs

    from trainer.train import train

    out = tmp_path / "out"
    cfg = TrainerConfig.from_dict({**TINY, **corpus_knobs(smoke_corpus), "OUTPUT_DIR": str(out), "ITERATIONS": 2, "TTT_MODE": "lora_phased",
                                   "TTT_LORA_CHUNK_TOKENS": 32, "TTT_LORA_BATCH_DOCS": 2, "TTT_PHASES": 2, "TTT_PREFIX_DOCS": 2})
    result = train(cfg)
    log = (out / "train.log").read_text()
    scored = re.search(r"^roundtrip_eval_time:\d+ms tokens:(\d+)$", log, re.M)[1]
    assert re.search(rf"^ttt_scored_tokens:{scored}$", log, re.M)  # every target, also those before the stream's first BOS
    assert f"final_ttt val_loss:{result['val_loss']:.8f} val_bpb:{result['val_bpb']:.8f}" in log
    assert 0 < result["val_bpb"] < 20 and result["val_bpb"] != result["pre_ttt_bpb"]


def _two_rank_worker(rank, world, init_file, state, overrides, val, luts, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        cfg = TrainerConfig.from_dict(overrides)
        model = GPT(cfg)
        model.load_state_dict(state)
        torch.manual_seed(7)
        r = evaluate_ttt_lora_phased(model, val, luts, cfg, rank, world)
        out[rank] = (r.val_loss, r.tokens, r.bytes, model.tok_emb.weight.detach().clone())
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_share_the_batches_and_the_phases(probe_case, tmp_path):
    # ranks take the queue's batches in turn and pass each phase boundary after the same round, so every
    # all-reduce of the phases' SGD pairs up (no hang) and the ranks end with one model and one score
    import torch.multiprocessing as mp

    state, cfg, val, luts = probe_case
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_two_rank_worker, args=(2, str(tmp_path / "init"), state, cfg.overrides(), val, luts, out), nprocs=2, join=True)
        got = dict(out)
    (loss0, tokens0, bytes0, emb0), (loss1, tokens1, bytes1, emb1) = got[0], got[1]
    assert (loss0, tokens0, bytes0) == (loss1, tokens1, bytes1) and tokens0 == val.numel() - 1
    assert bytes0 == int(luts.base_bytes[val[1:]].sum() + (luts.has_leading_space[val[1:]] & ~luts.is_boundary[val[:-1]]).sum())
    assert torch.equal(emb0, emb1)
    model = GPT(cfg)
    model.load_state_dict(state)
    assert not torch.equal(emb0, model.tok_emb.weight)  # the phases trained it
