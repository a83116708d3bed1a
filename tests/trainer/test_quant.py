"""Quantisation keeps its promises: value ranges, error bounds, formats, lossless packing."""

import torch

from trainer.config import TrainerConfig
from trainer.model import GPT
from trainer.quant import (
    QUANT_SMALL_NUMEL,
    dequantize,
    fake_quant_int6,
    pack_artifact,
    quantize_rows,
    quantize_state_dict,
    unpack_artifact,
)


def heavy_tailed(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w[torch.rand(rows, cols, generator=g) < 0.001] *= 20  # rare outliers, as trained weights have
    return w


def test_int6_values_in_range_and_error_bounded():
    w = heavy_tailed(256, 512)
    q, s = quantize_rows(w, 31)
    assert q.dtype == torch.int8 and s.dtype == torch.float16
    assert q.min() >= -31 and q.max() <= 31
    recon = q.float() * s.float()[:, None]
    # inside the chosen clip the error is at most half a step (plus fp16 scale rounding)
    inside = w.abs() <= 31 * s.float()[:, None]
    step = s.float()[:, None].expand_as(w)
    assert ((recon - w).abs()[inside] <= 0.5 * step[inside] * 1.001 + 1e-7).all()
    # on Gaussian rows (max ≈ 3σ, step ≈ 0.1σ) the relative error is about 3%
    g = torch.randn(256, 512, generator=torch.Generator().manual_seed(5))
    qg, sg = quantize_rows(g, 31)
    assert ((qg.float() * sg.float()[:, None] - g).norm() / g.norm()) < 0.04


def test_clip_search_never_loses_to_plain_absmax():
    w = heavy_tailed(128, 256, seed=1)
    q, s = quantize_rows(w, 31)
    err_search = ((q.float() * s.float()[:, None] - w) ** 2).sum(1)
    s_max = (w.abs().amax(1) / 31).half().float()[:, None]
    err_max = ((torch.clamp(torch.round(w / s_max), -31, 31) * s_max - w) ** 2).sum(1)
    assert (err_search <= err_max + 1e-12).all()
    assert err_search.sum() < err_max.sum()  # with outliers, clipping wins somewhere


def test_state_dict_formats_and_roundtrip():
    torch.manual_seed(0)
    cfg = TrainerConfig(num_layers=2, model_dim=128, num_heads=2, num_kv_heads=1, mlp_mult=5, vocab_size=1024,
                        train_seq_len=32, eval_seq_len=32, bigram_vocab_size=64, bigram_dim=32, xsa_last_n=1)
    sd = GPT(cfg).state_dict()
    sd = {k: v + 0.01 * torch.randn_like(v) for k, v in sd.items()}
    obj = quantize_state_dict(sd)
    kinds = {k: e["kind"] for k, e in obj.items()}
    assert kinds["tok_emb.weight"] == "int8"
    assert sd["blocks.0.mlp.up.weight"].numel() > QUANT_SMALL_NUMEL and kinds["blocks.0.mlp.up.weight"] == "int6"
    assert sd["blocks.0.attn.c_q.weight"].numel() <= QUANT_SMALL_NUMEL and kinds["blocks.0.attn.c_q.weight"] == "fp16"
    for name in ("blocks.0.attn_scale", "blocks.0.resid_mix", "blocks.1.attn.q_gain", "skip_weights", "smear.gate", "bigram.scale"):
        assert kinds[name] == "fp32", name
    assert obj["tok_emb.weight"]["q"].abs().max() <= 127
    back = dequantize(unpack_artifact(pack_artifact(obj, level=3)))
    assert back.keys() == sd.keys()
    for k, v in sd.items():
        assert back[k].shape == v.shape and back[k].dtype == v.dtype
        if kinds[k] == "fp32":
            assert torch.equal(back[k], v)
        else:
            assert (back[k] - v).norm() <= 0.05 * v.norm(), k


def test_packing_is_lossless_and_deterministic():
    obj = quantize_state_dict({"w": heavy_tailed(300, 300), "b": torch.randn(7), "g": torch.tensor(0.5)})
    blob = pack_artifact(obj, level=10)
    assert blob == pack_artifact(obj, level=10)
    back = unpack_artifact(blob)
    for k, e in obj.items():
        for part in ("q", "s", "t"):
            if part in e:
                assert torch.equal(back[k][part], e[part])


def test_fake_quant_forward_quantises_and_gradient_passes_straight_through():
    w = heavy_tailed(16, 64).requires_grad_(True)
    fq = fake_quant_int6(w)
    s = w.detach().abs().amax(1, keepdim=True) / 31
    steps = fq.detach() / s
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 31 + 1e-3
    (fq * torch.arange(64.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(64.0).expand(16, 64))
