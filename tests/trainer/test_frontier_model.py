"""The 2026-04-27 record's model-side techniques as knobs (depth recurrence, parallel residuals, fused
soft-capped cross-entropy, per-document attention), each checked against the record's own code.

As in test_frontier.py, the record's ``train_gpt.py`` is read from ../shared/challenge at test time
(never copied into the repository): its classes are executed from the file's syntax tree into one
namespace, with stand-ins for what needs a GPU: the FlashAttention 3 stand-in of ../shared/reference
(SDPA, and flex_attention for the varlen call) and, for the Triton kernels, a small CPU interpreter
of the few ``tl`` operations they use.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import types

import pytest
import torch
import torch.nn.functional as F
from test_frontier import RECORD, record_tree
from torch import nn

from trainer.config import ConfigError, TrainerConfig
from trainer.model import GPT, block_order
from trainer.train import training_progress

BOS = 1


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: more threads only contend on a shared 2-core machine (10x slower measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fa3_standin() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("fa3_standin", RECORD.parents[4] / "reference" / "flash_attn_interface.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record_namespace(*names: str, **given) -> dict:
    """The record's top-level definitions NAMES (decorators dropped), executed into one namespace
    that starts as GIVEN plus the modules the record imports."""
    wanted = set(names)
    nodes = [n for n in record_tree().body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in wanted]
    assert {n.name for n in nodes} == wanted, f"not in the record: {wanted - {n.name for n in nodes}}"
    for n in nodes:
        n.decorator_list = []
    namespace: dict = {"torch": torch, "nn": nn, "F": F, "math": math, "Tensor": torch.Tensor, **given}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(RECORD), "exec"), namespace)
    return namespace


def record_gpt_class():
    fa3 = fa3_standin()
    ns = record_namespace("RMSNorm", "CastedLinear", "Rotary", "apply_rotary_emb", "CausalSelfAttention", "MLP", "Block", "GPT",
                          "_build_cu_seqlens", "get_next_multiple_of_n",
                          flash_attn_3_func=fa3.flash_attn_func, flash_attn_varlen_func=fa3.flash_attn_varlen_func,
                          BOS_ID=BOS, FusedLeakyReLUSquareMLP=None, softcapped_cross_entropy=None)
    return ns


def record_hparams(cfg: TrainerConfig, **over) -> types.SimpleNamespace:
    """The record's Hyperparameters for caddie's CFG."""
    h = dict(logit_softcap=cfg.logit_softcap, tie_embeddings=True, tied_embed_init_std=0.005, fused_ce_enabled=False,
             vocab_size=cfg.vocab_size, model_dim=cfg.model_dim, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
             num_kv_heads=cfg.num_kv_heads, mlp_mult=cfg.mlp_mult, rope_base=cfg.rope_base, qk_gain_init=cfg.qk_gain_init,
             train_seq_len=cfg.train_seq_len, ln_scale=cfg.ln_scale, rope_yarn=False, attn_out_gate_enabled=False,
             attn_out_gate_src="proj", gate_window=cfg.gate_window, gated_attn_enabled=cfg.attn_gate == "dense",
             gated_attn_init_std=0.01, sparse_attn_gate_enabled=cfg.attn_gate == "sparse", sparse_attn_gate_init_std=0.0,
             sparse_attn_gate_scale=cfg.attn_gate_scale,
             rope_dims=cfg.rope_dims, xsa_last_n=cfg.xsa_last_n, num_loops=cfg.num_loops, loop_start=cfg.loop_start,
             loop_end=cfg.loop_end, skip_gates_enabled=cfg.skip_gates, parallel_start_layer=0,
             parallel_final_lane="mean", smear_gate_enabled=cfg.smear_gate and cfg.smear_gate_kind == "window")
    h.update(over)
    return types.SimpleNamespace(**h)


def mirror_rope_rows(w: torch.Tensor, heads: int, rope_dims: int) -> torch.Tensor:
    """The record rotates each (x_j, x_{j+r/2}) pair by -θ where caddie rotates by +θ; negating the
    second half of the rotary dims of q and k on both sides maps one onto the other exactly (q·k is
    unchanged by the flip), so caddie's c_q/c_k rows are the record's with those rows negated."""
    w = w.clone().unflatten(0, (heads, -1))
    w[:, rope_dims // 2: rope_dims] *= -1
    return w.flatten(0, 1)


def randomise(model: nn.Module, seed: int) -> None:
    """Every parameter random (zero-init projections and unit scales would hide the wiring)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "lambdas" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
            else:
                p.copy_(p + 0.3 * torch.randn(p.shape, generator=gen))


def copy_record_weights(theirs: nn.Module, ours: GPT, cfg: TrainerConfig) -> None:
    """Load the record model's weights (banks, per-block scalars, skip weights) into caddie's GPT."""
    n, heads, kv = cfg.num_layers, cfg.num_heads, cfg.num_kv_heads
    with torch.no_grad():
        ours.tok_emb.weight.copy_(theirs.tok_emb.weight)
        for i, block in enumerate(ours.blocks):
            a = block.attn
            a.c_q.weight.copy_(mirror_rope_rows(theirs.qo_bank[i], heads, cfg.rope_dims))
            a.c_k.weight.copy_(mirror_rope_rows(theirs.kv_bank[i], kv, cfg.rope_dims))
            a.c_v.weight.copy_(theirs.kv_bank[n + i])
            a.proj.weight.copy_(theirs.qo_bank[n + i])
            block.mlp.up.weight.copy_(theirs.mlp_up_bank[i])
            block.mlp.down.weight.copy_(theirs.mlp_down_bank[i])
            rb = theirs.blocks[i]
            a.q_gain.copy_(rb.attn.q_gain)
            if cfg.attn_gate != "none":
                a.attn_gate_w.copy_(rb.attn.attn_gate_w)
            block.resid_mix.copy_(rb.resid_mix)
            block.attn_scale.copy_(rb.attn_scale)
            block.mlp_scale.copy_(rb.mlp_scale)
            if hasattr(block, "lane_resid"):
                block.lane_resid.copy_(theirs.parallel_resid_lambdas[i])
                block.lane_post.copy_(theirs.parallel_post_lambdas[i].flatten())
        if ours.skip_weights is not None:
            ours.skip_weights.copy_(theirs.skip_weights[: ours.num_skips])
        if cfg.smear_gate:
            ours.smear.gate_w.copy_(theirs.smear_gate.weight[0])
            ours.smear.lam.copy_(theirs.smear_lambda)
        if ours.skip_gates is not None:
            ours.skip_gates.copy_(theirs.skip_gates[: ours.num_skips].flatten())


def model_pair(seed: int = 0, **knobs) -> tuple[nn.Module, GPT, TrainerConfig]:
    """The record's GPT and caddie's, same shape and weights; caddie's extras (BigramHash, SmearGate) off."""
    base = dict(stack="2026-03-23", num_layers=7, model_dim=32, num_heads=4, num_kv_heads=2, rope_dims=8, vocab_size=64, bigram_vocab_size=0,
                smear_gate=False, xsa_last_n=7, qk_gain_init=5.0, mlp_mult=2.0, train_seq_len=32, eval_seq_len=32,
                eval_stride=16, train_batch_tokens=64)
    base.update(knobs)
    cfg = TrainerConfig.from_dict(base)
    ns = record_gpt_class()
    torch.manual_seed(seed)
    theirs = ns["GPT"](record_hparams(cfg, parallel_start_layer=getattr(cfg, "parallel_start_layer", 0),
                                      parallel_final_lane=getattr(cfg, "parallel_final_lane", "mean")))
    randomise(theirs, seed)
    theirs.eval()  # the record's MLP uses its Triton kernel only in training mode
    ours = GPT(cfg)
    copy_record_weights(theirs, ours, cfg)
    ours.eval()
    return theirs, ours, cfg


def tokens(batch: int, length: int, vocab: int, seed: int, bos_every: int = 0) -> torch.Tensor:
    idx = torch.randint(2, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    if bos_every:
        idx[:, ::bos_every] = BOS
    return idx


# --- 1. depth recurrence ---------------------------------------------------------------


def test_depth_recurrence_forward_equals_the_records():
    theirs, ours, cfg = model_pair(num_loops=2, loop_start=2, loop_end=3)
    assert block_order(cfg, True) == (theirs.encoder_indices, theirs.decoder_indices)
    assert block_order(cfg, True) == ([0, 1, 2, 3, 2], [3, 2, 3, 4, 5, 6])
    assert ours.num_skips == theirs.num_skip_weights == 5
    x = tokens(2, 32, cfg.vocab_size, seed=1)
    with torch.no_grad():
        for looping in (True, False):
            theirs.looping_active = ours.looping = looping
            a, b = ours.forward_logits(x), theirs.forward_logits(x)
            assert (a - b).abs().max() < 2e-4, looping
    with torch.no_grad():
        ours.looping = True
        looped = ours.forward_logits(x)
        ours.looping = False
        assert (looped - ours.forward_logits(x)).abs().max() > 0.1  # the loop really changes the function
    assert GPT(cfg).looping  # a fresh model (evaluation, the artifact's roundtrip) runs looped


def test_looping_starts_at_the_records_training_fraction():
    from test_frontier import record_function

    # no cap: step / ITERATIONS
    h = types.SimpleNamespace(iterations=2000)
    frac = record_function("training_frac", h=h, max_wallclock_ms=None)
    cfg = TrainerConfig(iterations=2000, max_wallclock_seconds=0, num_loops=2)
    assert [training_progress(s, 0.0, cfg) for s in range(0, 2001, 50)] == pytest.approx([frac(s, 0.0) for s in range(0, 2001, 50)])
    # under a cap: elapsed / cap (ITERATIONS far away, as in the record's runs)
    frac = record_function("training_frac", h=types.SimpleNamespace(iterations=20000), max_wallclock_ms=600_000.0)
    cfg = TrainerConfig(iterations=20000, max_wallclock_seconds=600, num_loops=2)
    for step, ms in ((10, 1000.0), (1000, 210_000.0), (4000, 599_000.0)):
        assert training_progress(step, ms, cfg) == pytest.approx(frac(step, ms))


def test_depth_recurrence_knobs_are_validated():
    with pytest.raises(ConfigError, match="LOOP_END"):
        TrainerConfig.from_dict({"STACK": "2026-03-23", "NUM_LOOPS": 2, "LOOP_START": 5, "LOOP_END": 3})
    with pytest.raises(ConfigError, match="LOOP_END"):
        TrainerConfig.from_dict({"STACK": "2026-03-23", "NUM_LOOPS": 2, "LOOP_END": 11})
    with pytest.raises(ConfigError, match="NUM_LOOPS"):
        TrainerConfig.from_dict({"STACK": "2026-03-23", "NUM_LOOPS": 9})
    TrainerConfig.from_dict({"STACK": "2026-03-23", "LOOP_START": 5, "LOOP_END": 3})  # ignored while NUM_LOOPS=0
    cfg = TrainerConfig.from_dict({"STACK": "2026-03-23", "NUM_LOOPS": 2})
    assert block_order(cfg, True) == ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10])  # the record's 11-layer stack


# --- 2. parallel residuals -------------------------------------------------------------


@pytest.mark.parametrize("final_lane", ["mean", "attn", "mlp"])
def test_parallel_residual_forward_equals_the_records(final_lane):
    theirs, ours, cfg = model_pair(seed=3, parallel_start_layer=5, parallel_final_lane=final_lane)
    assert [b.parallel for b in ours.blocks] == [False] * 5 + [True] * 2
    x = tokens(2, 32, cfg.vocab_size, seed=4)
    with torch.no_grad():
        a, b = ours.forward_logits(x), theirs.forward_logits(x)
        assert (a - b).abs().max() < 2e-4
        for block in ours.blocks:  # the same weights run as plain blocks give another function: the lanes matter
            block.parallel = False
        assert (ours.forward_logits(x) - a).abs().max() > 0.1


def test_parallel_residuals_with_depth_recurrence_equal_the_records():
    # the record's stack: loop 3-5 twice, parallel from 8, on 11 layers
    theirs, ours, cfg = model_pair(seed=5, num_layers=11, xsa_last_n=11, num_loops=2, loop_start=3, loop_end=5,
                                   parallel_start_layer=8)
    x = tokens(2, 32, cfg.vocab_size, seed=6)
    theirs.looping_active = True
    with torch.no_grad():
        assert (ours.forward_logits(x) - theirs.forward_logits(x)).abs().max() < 2e-4
    # gradients flow into the lane weights, which the optimiser and the artifact treat as control tensors
    from trainer.optim import split_parameters
    from trainer.quant import is_control_tensor

    ours.train()
    ours(x, x).backward()
    lane = [(n, p) for n, p in ours.named_parameters() if "lane_" in n]
    assert len(lane) == 6 and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in lane)
    scalars = {id(p) for p in split_parameters(ours)["scalar"]}
    assert all(id(p) in scalars and is_control_tensor(n, p) for n, p in lane)


def test_parallel_residual_knobs_are_validated():
    with pytest.raises(ConfigError, match="PARALLEL_START_LAYER"):
        TrainerConfig.from_dict({"PARALLEL_START_LAYER": 3})  # encoder half of 11 layers
    with pytest.raises(ConfigError, match="PARALLEL_START_LAYER"):
        TrainerConfig.from_dict({"PARALLEL_START_LAYER": 11})
    with pytest.raises(ConfigError, match="PARALLEL_START_LAYER=5: must be > LOOP_END"):
        TrainerConfig.from_dict({"PARALLEL_START_LAYER": 5, "NUM_LOOPS": 2, "LOOP_START": 3, "LOOP_END": 5})
    with pytest.raises(ConfigError, match="PARALLEL_FINAL_LANE"):
        TrainerConfig.from_dict({"PARALLEL_FINAL_LANE": "sum"})
    TrainerConfig.from_dict({"PARALLEL_START_LAYER": 8, "NUM_LOOPS": 2})


# --- 3. fused soft-capped cross-entropy -------------------------------------------------


class TritonOnCPU:
    """Just enough of ``triton.language`` to run the record's two cross-entropy kernels on the CPU,
    one program (row) at a time: pointers are (flat tensor, element offsets)."""

    constexpr = object
    float32, int32, int64 = torch.float32, torch.int32, torch.int64

    class Ptr:
        def __init__(self, flat: torch.Tensor, off=0):
            self.flat, self.off = flat, off

        def __add__(self, k):
            return TritonOnCPU.Ptr(self.flat, self.off + k)

    def __init__(self):
        self.pid = 0

    def program_id(self, axis: int) -> torch.Tensor:
        return torch.tensor(self.pid)

    arange = staticmethod(torch.arange)
    sigmoid, exp, log = staticmethod(torch.sigmoid), staticmethod(torch.exp), staticmethod(torch.log)

    @staticmethod
    def where(c, a, b):
        return torch.where(c, torch.as_tensor(a), torch.as_tensor(b))

    @staticmethod
    def max(x, axis):
        return x.max(dim=axis).values

    @staticmethod
    def maximum(a, b):
        return torch.maximum(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32))

    @staticmethod
    def sum(x, axis):
        return x.sum(dim=axis)

    @staticmethod
    def load(ptr, mask=None, other=0.0):
        off = torch.as_tensor(ptr.off)
        if mask is None:
            return ptr.flat[off]
        vals = ptr.flat[off.clamp(0, ptr.flat.numel() - 1)]
        return torch.where(mask, vals, torch.tensor(other, dtype=vals.dtype))

    @staticmethod
    def store(ptr, val, mask=None):
        off = torch.as_tensor(ptr.off)
        val = torch.as_tensor(val).to(ptr.flat.dtype)
        if mask is None:
            ptr.flat[off] = val
        else:
            ptr.flat[off[mask]] = val[mask]

    def launch(self, kernel, rows: int, *args, **kw) -> None:
        args = [TritonOnCPU.Ptr(a.view(-1)) if isinstance(a, torch.Tensor) else a for a in args]
        for self.pid in range(rows):
            kernel(*args, **kw)


def record_softcapped_ce(logits: torch.Tensor, targets: torch.Tensor, grad_losses: torch.Tensor, softcap: float, block: int):
    """(losses, grad_logits) of the record's forward and backward Triton kernels, run on the CPU."""
    tl = TritonOnCPU()
    ns = record_namespace("_softcapped_ce_fwd_kernel", "_softcapped_ce_bwd_kernel", tl=tl)
    n, v = logits.shape
    losses, lse = torch.empty(n), torch.empty(n)
    tl.launch(ns["_softcapped_ce_fwd_kernel"], n, logits, losses, lse, targets, logits.stride(0), logits.stride(1),
              n, v, softcap, block_size=block)
    grad = torch.empty_like(logits)
    tl.launch(ns["_softcapped_ce_bwd_kernel"], n, grad, grad_losses, lse, logits, targets, logits.stride(0), logits.stride(1),
              grad.stride(0), grad.stride(1), n, v, softcap, block_size=block)
    return losses, grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_softcapped_ce_equals_the_records_kernels(dtype):
    from trainer.model import SoftcappedCrossEntropy

    gen = torch.Generator().manual_seed(7)
    n, v, c = 12, 300, 30.0
    logits = (torch.randn(n, v, generator=gen) * 25).to(dtype)  # large enough that the cap bends them
    targets = torch.randint(0, v, (n,), generator=gen)
    g = torch.rand(n, generator=gen)
    theirs_loss, theirs_grad = record_softcapped_ce(logits, targets, g, c, block=128)  # 3 column blocks, the last one masked
    x = logits.clone().requires_grad_(True)
    loss = SoftcappedCrossEntropy.apply(x, targets, c)
    (loss * g).sum().backward()
    assert x.grad.dtype == dtype
    assert torch.allclose(loss, theirs_loss, rtol=1e-5, atol=1e-5)
    assert torch.allclose(x.grad.float(), theirs_grad.float(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-6)
    # and both equal the eager soft cap + F.cross_entropy that evaluation uses
    z = c * torch.tanh(logits.float() / c)
    assert torch.allclose(loss, F.cross_entropy(z, targets, reduction="none"), rtol=1e-5, atol=1e-5)


def test_fused_ce_model_loss_and_gradients_equal_the_unfused_ones():
    cfg = dict(stack="2026-03-23", num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2, rope_dims=8, vocab_size=64,
               bigram_vocab_size=16, bigram_dim=8, xsa_last_n=1, train_seq_len=16, eval_seq_len=16, eval_stride=8, train_batch_tokens=32)
    torch.manual_seed(0)
    plain = GPT(TrainerConfig.from_dict(cfg))
    randomise(plain, 8)
    fused = GPT(TrainerConfig.from_dict({**cfg, "fused_ce": True}))
    fused.load_state_dict(plain.state_dict())
    x, y = tokens(2, 16, 64, seed=9), tokens(2, 16, 64, seed=10)
    a, b = plain(x, y), fused(x, y)
    a.backward()
    b.backward()
    assert torch.allclose(a, b, rtol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
    with pytest.raises(ConfigError, match="FUSED_CE"):
        TrainerConfig.from_dict({"FUSED_CE": 1, "LOGIT_SOFTCAP": 0})


# --- 5. per-document (variable-length) attention -----------------------------------------


def record_cu_seqlens(row: torch.Tensor, max_doc_len: int = 0) -> tuple[torch.Tensor, int]:
    """The record's cu_seqlens for one packed row (bucket 1: the stand-in takes no padding)."""
    ns = record_namespace("_build_cu_seqlens", "get_next_multiple_of_n")
    bos = (row == BOS).nonzero(as_tuple=True)[0].tolist()
    return ns["_build_cu_seqlens"](bos, row.numel(), row.device, max_doc_len, 1)


UNFUSED_FLEX = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@UNFUSED_FLEX
def test_document_attention_layer_equals_the_records_varlen_attention():
    from trainer.model import Attention

    ns = record_gpt_class()
    dim, heads, kv, T = 32, 4, 2, 40
    cfg = TrainerConfig(model_dim=dim, num_heads=heads, num_kv_heads=kv, rope_dims=8, train_seq_len=T, eval_seq_len=T,
                        doc_attention=True)
    gen = torch.Generator().manual_seed(11)
    row = torch.randint(2, 64, (T,), generator=gen)
    row[[0, 7, 8, 23]] = BOS  # a one-token document too
    cu, max_len = record_cu_seqlens(row)
    assert cu.tolist() == [0, 7, 8, 23, 40]
    theirs = ns["CausalSelfAttention"](dim, heads, kv, 10000.0, 5.0, T, yarn=False)
    theirs.rope_dims = 8
    theirs.rotary = ns["Rotary"](dim // heads, base=10000.0, train_seq_len=T, rope_dims=8, yarn=False)
    theirs.use_xsa = True
    w = [torch.randn(o, dim, generator=gen) / math.sqrt(dim) for o in (dim, kv * 8, kv * 8, dim)]
    x = torch.randn(1, T, dim, generator=gen)
    ours = Attention(cfg, xsa=True, use_fa3=False)
    with torch.no_grad():
        ours.c_q.weight.copy_(mirror_rope_rows(w[0], heads, 8))
        ours.c_k.weight.copy_(mirror_rope_rows(w[1], kv, 8))
        ours.c_v.weight.copy_(w[2])
        ours.proj.weight.copy_(w[3])
        ours.q_gain.fill_(5.0)
        from trainer.model import document_mask

        a = ours(x, doc_mask=document_mask(row[None], BOS))
        b = theirs(x, *w, cu_seqlens=cu, max_seqlen=max_len)
        plain = ours(x)
    assert (a - b).abs().max() < 1e-5
    assert (a - plain)[:, 7:].abs().max() > 0.05 and (a - plain)[:, :7].abs().max() < 1e-5  # only later documents change


@UNFUSED_FLEX
def test_document_attention_model_equals_the_records_and_never_looks_across_a_bos():
    # the record's stack on one packed row: loops, parallel lanes, XSA everywhere, varlen attention
    theirs, ours, cfg = model_pair(seed=12, num_layers=11, xsa_last_n=11, num_loops=2, loop_start=3, loop_end=5,
                                   parallel_start_layer=8, doc_attention=True, train_seq_len=48, eval_seq_len=48,
                                   train_batch_tokens=96)
    theirs.looping_active = True
    row = tokens(1, 48, cfg.vocab_size, seed=13)
    row[0, [0, 19, 30]] = BOS
    cu, max_len = record_cu_seqlens(row[0])
    with torch.no_grad():
        a = ours.forward_logits(row)
        assert (a - theirs.forward_logits(row, cu_seqlens=cu, max_seqlen=max_len)).abs().max() < 2e-4
        # a probe that can fail: change every token of the first two documents; the third's logits stay bit for bit
        other = row.clone()
        other[0, 1:19] = (other[0, 1:19] + 5) % cfg.vocab_size + 2
        other[0, 20:30] = 3
        b = ours.forward_logits(other)
        assert torch.equal(a[:, 30:], b[:, 30:])
        assert (a[:, :30] - b[:, :30]).abs().max() > 0.1
        # caddie's own extras too (BigramHash, channel SmearGate, value embeddings) keep documents apart
        extras = GPT(TrainerConfig.from_dict({**cfg.overrides(), "BIGRAM_VOCAB_SIZE": 64, "SMEAR_GATE": 1, "VE_ENABLED": 1,
                                              "VE_LAYERS": "9,10"}))
        randomise(extras, 21)
        extras.eval()
        assert torch.equal(extras.forward_logits(row)[:, 30:], extras.forward_logits(other)[:, 30:])
        ours_plain = GPT(TrainerConfig.from_dict({**cfg.overrides(), "DOC_ATTENTION": 0}))
        ours_plain.load_state_dict(ours.state_dict())
        ours_plain.eval()
        assert (ours_plain.forward_logits(row) - ours_plain.forward_logits(other))[:, 30:].abs().max() > 1e-3
    with pytest.raises(ConfigError, match="ATTENTION_BACKEND"):
        TrainerConfig.from_dict({"DOC_ATTENTION": 1, "ATTENTION_BACKEND": "fa3"})


# --- the knobs together in a run ---------------------------------------------------------


def test_a_run_with_every_model_knob_loops_from_its_fraction_and_warmup_leaves_no_trace(smoke_corpus, tmp_path):
    import json

    from test_train import TINY, corpus_knobs

    from trainer.train import train

    # the least that has every knob: 3 layers, block 0 looped, lanes from 1; a short full-split evaluation
    knobs = {**TINY, **corpus_knobs(smoke_corpus), "NUM_LAYERS": 3, "XSA_LAST_N": 3, "VE_LAYERS": "2", "NUM_LOOPS": 1,
             "LOOP_START": 0, "LOOP_END": 0, "ENABLE_LOOPING_AT": 0.5, "PARALLEL_START_LAYER": 1, "FUSED_CE": 1,
             "DOC_ATTENTION": 1, "SKIP_GATES": 1, "SMEAR_GATE_KIND": "window", "QK_GAIN_INIT": 5.0, "TTT_ENABLED": 0, "EVAL_STRIDE": 0,
             "VAL_TOKENS_LIMIT": 1024}
    curves = []
    for warmup in (0, 2):
        out = tmp_path / f"w{warmup}"
        result = train(TrainerConfig.from_dict({**knobs, "WARMUP_STEPS": warmup, "OUTPUT_DIR": str(out)}))
        assert result["status"] == "succeeded" and math.isfinite(result["val_bpb"])
        log = (out / "train.log").read_text()
        assert "layer_loop:on step:4 order:([0, 0], [1, 2])" in log  # step 4 of 8 is fraction 0.5
        curves.append([json.loads(line).get("train_loss") for line in (out / "metrics.jsonl").read_text().splitlines()])
    assert curves[0] == curves[1]  # the looped warm-up steps were undone too


# --- U-Net skip gates ------------------------------------------------------------------------


def test_skip_gates_equal_the_records():
    theirs, ours, cfg = model_pair(seed=14, num_layers=11, xsa_last_n=11, num_loops=2, loop_start=3, loop_end=5,
                                   parallel_start_layer=8, skip_gates=True)
    theirs.looping_active = True
    x = tokens(2, 32, cfg.vocab_size, seed=15)
    with torch.no_grad():
        a = ours.forward_logits(x)
        assert (a - theirs.forward_logits(x)).abs().max() < 2e-4
        gates, ours.skip_gates = ours.skip_gates, None
        assert (ours.forward_logits(x) - a).abs().max() > 0.1  # the gates matter
        ours.skip_gates = gates
    from trainer.optim import split_parameters
    from trainer.quant import is_control_tensor

    assert is_control_tensor("skip_gates", ours.skip_gates) and any(p is ours.skip_gates for p in split_parameters(ours)["scalar"])
    with pytest.raises(ConfigError, match="SKIP_GATES"):
        TrainerConfig.from_dict({"SKIP_GATES": 1, "UNET_SKIPS": 0})


# --- the record's SmearGate ----------------------------------------------------------------


def test_window_smear_gate_equals_the_records():
    theirs, ours, cfg = model_pair(seed=16, smear_gate=True, smear_gate_kind="window", gate_window=12)
    x = tokens(2, 32, cfg.vocab_size, seed=17, bos_every=9)
    with torch.no_grad():
        a = ours.forward_logits(x)
        assert (a - theirs.forward_logits(x)).abs().max() < 2e-4
        ours.smear.lam.zero_()
        assert (ours.forward_logits(x) - a).abs().max() > 0.05  # the smear matters
        # a BOS (and position 0) blends nothing in; every other position does
        ours.smear.lam.fill_(3.0)
        emb = ours.tok_emb(x)
        moved = (ours.smear(emb, x) != emb).any(dim=-1)
        assert torch.equal(moved, x != BOS) and not moved[:, 0].any()
    with pytest.raises(ConfigError, match="GATE_WINDOW"):
        TrainerConfig.from_dict({"SMEAR_GATE_KIND": "window", "GATE_WINDOW": 600})


# --- the record's whole model -----------------------------------------------------------------


@UNFUSED_FLEX
def test_the_records_model_equals_caddies_with_its_knobs():
    """Every model-side setting of the record's run (its train_seed42.log), at a small width."""
    theirs, ours, cfg = model_pair(seed=18, num_layers=11, xsa_last_n=11, qk_gain_init=5.0, mlp_mult=4.0, rope_dims=8,
                                   num_loops=2, loop_start=3, loop_end=5, parallel_start_layer=8, parallel_final_lane="mean",
                                   skip_gates=True, smear_gate=True, smear_gate_kind="window", gate_window=12,
                                   attn_gate="sparse", attn_gate_scale=0.5, fused_ce=True, doc_attention=True,
                                   train_seq_len=48, eval_seq_len=48, train_batch_tokens=96)
    theirs.looping_active = True
    x = tokens(1, 48, cfg.vocab_size, seed=19)
    x[0, [0, 13, 14, 40]] = BOS
    y = tokens(1, 48, cfg.vocab_size, seed=20)
    cu, max_len = record_cu_seqlens(x[0])
    with torch.no_grad():
        assert (ours.forward_logits(x) - theirs.forward_logits(x, cu_seqlens=cu, max_seqlen=max_len)).abs().max() < 2e-4
        # training loss: caddie's fused CE against the record's eager soft cap + cross-entropy
        assert torch.allclose(ours(x, y), theirs(x, y, cu_seqlens=cu, max_seqlen=max_len), rtol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))])
def test_flex_document_attention_equals_the_dense_document_mask(device):
    # CUDA runs DOC_ATTENTION through FlexAttention; its block mask must keep exactly the pairs the
    # dense mask keeps, including tiles that a document boundary masks whole (row 1, keys 0-127
    # for queries 129 on) and boundaries inside a tile.
    from trainer.model import causal_attention, document_block_mask, document_mask

    gen = torch.Generator().manual_seed(3)
    B, T, H, Hkv, Dh = 2, 256, 4, 2, 32
    idx = torch.randint(2, 50, (B, T), generator=gen)
    idx[0, [0, 40, 41, 200]] = BOS
    idx[1, [0, 128, 129]] = BOS
    q, k, v = (torch.randn(B, T, h, Dh, generator=gen).to(device) for h in (H, Hkv, Hkv))
    idx = idx.to(device)
    flex = causal_attention(q, k, v, False, document_block_mask(idx, BOS))
    dense = causal_attention(q, k, v, False, document_mask(idx, BOS))
    assert (flex - dense).abs().max() < 1e-4
    plain = causal_attention(q, k, v, False)
    assert (flex - plain)[1, 129:].abs().max() > 0.05  # the mask did something
