"""The 2026-04-27 record's techniques as knobs: each computation checked against the record's own code.

The record's ``train_gpt.py`` is read from ../shared/challenge at test time (never copied into the
repository). Functions nested inside its training loop cannot be imported, so their own source is
taken from the file's syntax tree and executed with the names they close over supplied here.
"""

from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest
import torch

from trainer.config import ConfigError, TrainerConfig
from trainer.optim import POLAR_EXPRESS_COEFFS, Muon, newton_schulz5, row_normalize
from trainer.train import lr_scale_at

RECORD = (Path(__file__).resolve().parents[2] / ".." / "shared" / "challenge" / "records" / "track_10min_16mb"
          / "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611" / "train_gpt.py")


def record_tree() -> ast.Module:
    if not RECORD.exists():
        pytest.skip(f"record not found at {RECORD}")
    return ast.parse(RECORD.read_text())


def record_constant(name: str):
    """The value of the record's module-level constant NAME (a literal)."""
    node = next(n for n in record_tree().body if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == name for t in n.targets))
    return ast.literal_eval(node.value)


def record_function(name: str, **closure):
    """The record's function NAME (at any nesting depth, decorators such as @torch.compile dropped),
    defined with CLOSURE as its globals."""
    node = next((n for n in ast.walk(record_tree()) if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name), None)
    assert node is not None, f"{name} is not in the record's train_gpt.py"
    node.decorator_list = []
    namespace: dict = dict(closure)
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(RECORD), "exec"), namespace)
    return namespace[name]


def test_min_lr_floor_equals_the_records_lr_mul():
    # the record: warm-down over the last WARMDOWN_FRAC of training, floored at MIN_LR; caddie counts it in steps
    h = types.SimpleNamespace(warmdown_frac=0.85, min_lr=0.1)
    lr_mul = record_function("lr_mul", h=h)
    cfg = TrainerConfig(iterations=1000, warmdown_iters=850, min_lr=0.1, max_wallclock_seconds=0)
    ours = [lr_scale_at(s, 0.0, cfg) for s in range(0, 1001)]
    theirs = [lr_mul(s / 1000) for s in range(0, 1001)]
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert min(ours) == 0.1 and ours[0] == 1.0  # the floor is really reached, and it is not the whole curve
    # the default (no floor) still warms down to zero
    assert lr_scale_at(1000, 0.0, TrainerConfig(iterations=1000, warmdown_iters=850, max_wallclock_seconds=0)) == 0.0


def test_min_lr_that_would_keep_late_qat_off_is_refused():
    with pytest.raises(ConfigError) as exc:
        TrainerConfig.from_dict({"STACK": "2026-03-23", "MIN_LR": 0.2, "LATE_QAT_THRESHOLD": 0.15})  # its late QAT is on
    assert "MIN_LR" in str(exc.value) and "LATE_QAT_THRESHOLD" in str(exc.value)
    TrainerConfig.from_dict({"STACK": "2026-03-23", "MIN_LR": 0.2, "LATE_QAT_THRESHOLD": 0.15, "QAT_ENABLED": 0})  # no QAT: fine
    with pytest.raises(ConfigError, match="MIN_LR"):
        TrainerConfig.from_dict({"MIN_LR": 1.5})


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius distance |a - b| / |b|."""
    return float((a - b).norm() / b.norm())


def exact_polar_express(g: torch.Tensor) -> torch.Tensor:
    """The record's Polar Express iteration, with its own coefficients, in float64."""
    x = g.double()
    tall = x.size(-2) > x.size(-1)
    x = x.mT if tall else x
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for a, b, c in record_constant("_PE_COEFFS"):
        A = x @ x.mT
        x = a * x + (b * A + c * A @ A) @ x
    return (x.mT if tall else x).float()


def test_polar_express_newton_schulz_equals_the_records():
    assert POLAR_EXPRESS_COEFFS == record_constant("_PE_COEFFS")
    ns = record_function("zeropower_via_newtonschulz5", torch=torch, _PE_COEFFS=record_constant("_PE_COEFFS"))
    g = torch.Generator().manual_seed(0)
    for shape in ((64, 96), (96, 64), (3, 32, 48)):
        G = torch.randn(*shape, generator=g)
        ours = newton_schulz5(G, 5, coeffs="polar_express").float()
        theirs = ns(G, steps=5).float()
        # Both are bf16; they differ by ~4% (Polar Express's large first coefficients amplify rounding), so
        # each is held against the same iteration in float64: ours must be no farther from it than the record's.
        exact = exact_polar_express(G)
        assert rel(theirs, exact) < 0.06 and rel(ours, exact) <= rel(theirs, exact)
        assert rel(newton_schulz5(G, 5).float(), theirs) > 0.1  # the knob really changes the iteration
    with pytest.raises(ConfigError, match="MUON_BACKEND_STEPS"):
        TrainerConfig.from_dict({"MUON_NS_COEFFS": "polar_express", "MUON_BACKEND_STEPS": 6})


def test_row_normalised_muon_step_equals_the_records():
    RecordMuon = record_function("Muon", torch=torch, dist=torch.distributed,
                                 zeropower_via_newtonschulz5=record_function(
                                     "zeropower_via_newtonschulz5", torch=torch, _PE_COEFFS=record_constant("_PE_COEFFS")))
    assert isinstance(RecordMuon, type)
    gen = torch.Generator().manual_seed(1)
    w0 = [torch.randn(48, 32, generator=gen) * 0.1, torch.randn(32, 32, generator=gen) * 0.1]
    grads = [[torch.randn_like(w) for w in w0] for _ in range(3)]
    ours_p = [torch.nn.Parameter(w.clone()) for w in w0]
    theirs_p = [torch.nn.Parameter(w.clone()) for w in w0]
    ours = Muon(ours_p, lr=0.02, momentum=0.95, weight_decay=0.01, ns_steps=5, ns_coeffs="polar_express", row_norm=True)
    theirs = RecordMuon(theirs_p, lr=0.02, momentum=0.95, backend_steps=5, nesterov=True, weight_decay=0.01, row_normalize=True)
    for step_grads in grads:
        for p, q, gr in zip(ours_p, theirs_p, step_grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        ours.step()
        theirs.step()
    for p, q, w in zip(ours_p, theirs_p, w0):
        assert rel(p.detach() - w, q.detach() - w) < 0.06  # the updates agree to bf16 noise (see above)
    plain = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = Muon(plain, lr=0.02, momentum=0.95, weight_decay=0.01, ns_steps=5, ns_coeffs="polar_express", row_norm=False)
    for step_grads in grads:
        for p, gr in zip(plain, step_grads):
            p.grad = gr.clone()
        opt.step()
    assert rel(plain[0].detach() - w0[0], theirs_p[0].detach() - w0[0]) > 0.05  # row normalisation really matters
    u = row_normalize(torch.randn(5, 7, generator=gen))
    assert torch.allclose(u.norm(dim=-1), torch.ones(5), atol=1e-6)


def head_gates(gated: torch.Tensor, plain: torch.Tensor, heads: int) -> torch.Tensor:
    """Per-(token, head) factor g with gated = g · plain, by least squares over each head's dims."""
    a, b = gated.unflatten(-1, (heads, -1)).double(), plain.unflatten(-1, (heads, -1)).double()
    return (a * b).sum(-1) / (b * b).sum(-1)


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_attention_gate_equals_the_records(kind):
    import importlib.util

    from trainer.model import Attention

    spec = importlib.util.spec_from_file_location("fa3_standin", RECORD.parents[4] / "reference" / "flash_attn_interface.py")
    standin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standin)
    F = torch.nn.functional
    Rotary = record_function("Rotary", torch=torch, nn=torch.nn)
    rec_attn = record_function("CausalSelfAttention", torch=torch, nn=torch.nn, F=F, Rotary=Rotary,
                               CastedLinear=record_function("CastedLinear", nn=torch.nn, F=F),
                               apply_rotary_emb=record_function("apply_rotary_emb", torch=torch),
                               flash_attn_3_func=standin.flash_attn_func)
    dim, heads, scale = 64, 4, (0.5 if kind == "sparse" else 1.0)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, dim, generator=gen)
    w = [torch.randn(o, dim, generator=gen) * 0.2 for o in (dim, dim // 2, dim // 2)] + [torch.eye(dim)]
    flags = dict(sparse_attn_gate=True, gate_window=12, sparse_attn_gate_scale=scale) if kind == "sparse" else dict(gated_attn=True)
    theirs_gated = rec_attn(dim, heads, 2, 10000.0, 5.0, 16, **flags)
    theirs_plain = rec_attn(dim, heads, 2, 10000.0, 5.0, 16)
    W = torch.randn_like(theirs_gated.attn_gate_w) * 0.5
    theirs_gated.attn_gate_w.data.copy_(W)
    g_theirs = head_gates(theirs_gated(x, *w), theirs_plain(x, *w), heads)

    cfg = TrainerConfig(model_dim=dim, num_heads=heads, num_kv_heads=2, rope_dims=8, attn_gate=kind, gate_window=12,
                        attn_gate_scale=scale, train_seq_len=16, eval_seq_len=16)
    ours = Attention(cfg, xsa=False, use_fa3=False)
    assert ours.attn_gate_w.shape == W.shape
    ours.attn_gate_w.data.copy_(W)
    ours.proj.weight.data.copy_(torch.eye(dim))
    with torch.no_grad():
        gated = ours(x)
        ours.gate_width = 0
        plain = ours(x)
    g_ours = head_gates(gated, plain, heads)
    assert torch.allclose(g_ours, g_theirs, atol=1e-5)
    assert g_theirs.std() > 0.05  # the gate really varies by token and head


def test_gated_model_trains_and_its_gates_are_control_tensors():
    from trainer.model import GPT
    from trainer.optim import split_parameters
    from trainer.quant import dequantize, pack_artifact, quantize_state_dict, unpack_artifact

    cfg = TrainerConfig(num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=8, vocab_size=64, bigram_vocab_size=0,
                        xsa_last_n=1, train_seq_len=16, eval_seq_len=16, attn_gate="sparse", gate_window=12)
    model = GPT(cfg)
    gates = [p for n, p in model.named_parameters() if "attn_gate_w" in n]
    assert len(gates) == 2 and all(any(p is q for q in split_parameters(model)["scalar"]) for p in gates)
    for block in model.blocks:  # the projection starts at zero, which would hide the gate's gradient
        torch.nn.init.normal_(block.attn.proj.weight, std=0.1)
    idx = torch.randint(0, 64, (2, 16))
    model(idx, idx).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gates)
    sd = dequantize(unpack_artifact(pack_artifact(quantize_state_dict(model.state_dict(), 1.0, "fp16"), 3, "lzma")))
    GPT(cfg).load_state_dict(sd)
