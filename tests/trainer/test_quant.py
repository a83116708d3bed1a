"""Quantisation keeps its promises: value ranges, error bounds, formats, lossless packing."""

import pytest
import torch

from trainer.config import TrainerConfig
from trainer.model import GPT
from trainer.quant import (
    QUANT_SMALL_NUMEL,
    dequantize,
    fake_quant_int6,
    is_control_tensor,
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
    q, s = quantize_rows(w, 31, clip_floor=0.0)  # the floor would give every candidate the same grid
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
    obj = quantize_state_dict(sd, clip_floor=0.0, control_dtype="fp32")  # fine grid: the 5% bound below needs it
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
    fq = fake_quant_int6(w, clip_floor=0.0)
    s = (w.detach().abs().amax(1, keepdim=True) / 31).half().float()
    steps = fq.detach() / s
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 31 + 1e-3
    (fq * torch.arange(64.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(64.0).expand(16, 64))


# --- the clip floor (issue 9), codecs and size accounting ------------------------------------


def test_round_trip_error_is_at_most_half_a_step_with_and_without_the_floor():
    w = heavy_tailed(64, 256, seed=3)
    w[:8] *= 100  # rows whose clip is above the floor, so both regimes are covered
    for floor in (0.0, 1.0):
        q, s = quantize_rows(w, 31, clip_floor=floor)
        step = s.float()[:, None].expand_as(w)
        recon = q.float() * step
        inside = w.abs() <= 31 * step
        assert inside.float().mean() > 0.99
        assert ((recon - w).abs()[inside] <= 0.5 * step[inside] * 1.001 + 1e-7).all(), floor


def test_floor_puts_small_rows_on_the_floor_grid_and_zero_restores_the_old_grid():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(16, 512, generator=g) * 0.02  # row max ≈ 0.07, far below the floor of 1
    q, s = quantize_rows(w, 31, clip_floor=1.0)
    assert torch.equal(s, torch.full_like(s, 1.0 / 31).half())  # s = fp16(F / qmax)
    assert q.abs().max() <= 3 and len(q.unique()) <= 7  # a few levels, hence small after compression
    q8, s8 = quantize_rows(w, 127, clip_floor=1.0)
    assert torch.equal(s8, torch.full_like(s8, 1.0 / 127).half()) and q8.abs().max() <= 10
    # floor 0: the grid of the pre-issue-9 quantiser, 2·31+1 levels spread over each row
    q0, s0 = quantize_rows(w, 31, clip_floor=0.0)
    assert (s0.float() < 0.01).all() and q0.abs().max() == 31 and len(q0.unique()) > 40
    # rows above the floor are untouched by it
    big = torch.randn(4, 512, generator=g) * 2.0
    assert torch.equal(quantize_rows(big, 31, clip_floor=1.0)[1], quantize_rows(big, 31, clip_floor=0.0)[1])


def test_floor_shrinks_the_compressed_artifact():
    torch.manual_seed(0)
    cfg = TrainerConfig(num_layers=1, model_dim=512, num_heads=8, num_kv_heads=4, vocab_size=512,
                        train_seq_len=32, eval_seq_len=32, bigram_vocab_size=64, bigram_dim=32, xsa_last_n=1)
    sd = GPT(cfg).state_dict()  # the default width at init: orthogonal rows of std 1/sqrt(512), max ≈ 0.15
    floored = len(pack_artifact(quantize_state_dict(sd, clip_floor=1.0)))
    fine = len(pack_artifact(quantize_state_dict(sd, clip_floor=0.0)))
    assert floored < 0.5 * fine  # the default model at init: 4.46 MB against 10.4 MB


def test_fake_quant_lands_on_the_artifact_grid():
    g = torch.Generator().manual_seed(11)
    small = torch.randn(32, 128, generator=g) * 0.03  # every row under the floor
    q, s = quantize_rows(small, 31, clip_floor=1.0)
    assert torch.equal(fake_quant_int6(small, clip_floor=1.0), q.float() * s.float()[:, None])
    # above the floor, on rows where the clip search keeps the max (Gaussian, no outliers),
    # the two agree too: same s = fp16(max|w| / 31), same rounding
    big = torch.randn(32, 128, generator=g) * 3.0
    qb, sb = quantize_rows(big, 31, clip_floor=1.0)
    kept_max = sb == (big.abs().amax(1) / 31).half()
    assert kept_max.any()
    fq = fake_quant_int6(big, clip_floor=1.0)
    assert torch.allclose(fq[kept_max], (qb.float() * sb.float()[:, None])[kept_max], atol=1e-6)


def test_model_takes_the_floor_from_the_config():
    cfg = TrainerConfig(num_layers=1, model_dim=64, num_heads=2, num_kv_heads=1, vocab_size=64, train_seq_len=16,
                        eval_seq_len=16, bigram_vocab_size=16, bigram_dim=8, xsa_last_n=0, quant_clip_floor=0.25)
    floors = {m.clip_floor for m in GPT(cfg).modules() if hasattr(m, "clip_floor") and hasattr(m, "qat")}
    assert floors == {0.25}


def test_unpack_of_pack_is_exact_for_both_codecs():
    sd = {"w": heavy_tailed(300, 300), "tok_emb.weight": heavy_tailed(260, 260, seed=2),
          "b": torch.randn(7), "g": torch.tensor(0.5), "ids": torch.arange(5)}
    obj = quantize_state_dict(sd)
    lz, zs = pack_artifact(obj, codec="lzma"), pack_artifact(obj, level=3, codec="zstd")
    assert lz[:6] == b"\xfd7zXZ\x00" and lz != zs
    for blob in (lz, zs):
        back = unpack_artifact(blob)
        assert back.keys() == obj.keys()
        for k, e in obj.items():
            assert back[k]["kind"] == e["kind"] and back[k]["shape"] == e["shape"]
            for part in ("q", "s", "t"):
                if part in e:
                    assert back[k][part].dtype == e[part].dtype and torch.equal(back[k][part], e[part]), (k, part)
    try:
        pack_artifact(obj, codec="gzip")
    except ValueError as exc:
        assert "gzip" in str(exc)
    else:
        raise AssertionError("an unknown codec must be refused")


def test_size_accounting_counts_code_plus_model_against_the_decimal_limit():
    from trainer.config import ARTIFACT_LIMIT_BYTES
    from trainer.train import artifact_accounting

    assert ARTIFACT_LIMIT_BYTES == 16_000_000
    at_limit = artifact_accounting(code_bytes=95_740, model_bytes=16_000_000 - 95_740)
    assert at_limit == {"code_bytes": 95_740, "model_bytes": 15_904_260, "total_bytes": 16_000_000, "artifact_ok": True}
    one_over = artifact_accounting(code_bytes=95_740, model_bytes=16_000_000 - 95_740 + 1)
    assert one_over["total_bytes"] == 16_000_001 and one_over["artifact_ok"] is False


def test_clip_floor_and_codec_knobs_are_validated():
    from trainer.config import ConfigError

    cfg = TrainerConfig.from_dict({"QUANT_CLIP_FLOOR": "0", "ARTIFACT_CODEC": "zstd"})
    assert cfg.quant_clip_floor == 0.0 and cfg.artifact_codec == "zstd"
    assert TrainerConfig().quant_clip_floor == 1.0 and TrainerConfig().artifact_codec == "lzma"
    for bad in ({"QUANT_CLIP_FLOOR": -1}, {"ARTIFACT_CODEC": "gzip"}):
        try:
            TrainerConfig.from_dict(bad)
        except ConfigError:
            pass
        else:
            raise AssertionError(f"{bad} must be refused")


def test_control_tensors_are_fp16_by_default_and_smaller():
    torch.manual_seed(0)
    cfg = TrainerConfig(num_layers=2, model_dim=128, num_heads=2, num_kv_heads=1, mlp_mult=5, vocab_size=1024,
                        train_seq_len=32, eval_seq_len=32, bigram_vocab_size=64, bigram_dim=32, xsa_last_n=1)
    sd = {k: v + 0.01 * torch.randn_like(v) for k, v in GPT(cfg).state_dict().items()}
    half, full = quantize_state_dict(sd), quantize_state_dict(sd, control_dtype="fp32")
    controls = [k for k in sd if is_control_tensor(k, sd[k]) and sd[k].is_floating_point()]
    assert controls and all(half[k]["kind"] == "fp16" and full[k]["kind"] == "fp32" for k in controls)
    back = dequantize(unpack_artifact(pack_artifact(half, level=3)))
    for k in controls:
        assert back[k].dtype == sd[k].dtype
        # fp16 keeps 11 significant bits: relative error at most 2^-11 (normal range)
        assert torch.allclose(back[k], sd[k], rtol=2.0 ** -11, atol=1e-7), k
    assert len(pack_artifact(half, level=3)) < len(pack_artifact(full, level=3))
    with pytest.raises(ValueError, match="control_dtype"):
        quantize_state_dict(sd, control_dtype="bf16")


def test_the_default_codec_needs_no_zstandard(tmp_path):
    # GPU images may lack zstandard: the trainer (and its lzma artifact) must work without it.
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['zstandard'] = None\n"
            "import torch\n"
            "from trainer.quant import pack_artifact, quantize_state_dict, unpack_artifact\n"
            "obj = quantize_state_dict({'w': torch.randn(300, 300), 'b': torch.randn(7)})\n"
            "back = unpack_artifact(pack_artifact(obj))\n"
            "assert torch.equal(back['w']['q'], obj['w']['q']) and torch.equal(back['b']['t'], obj['b']['t'])\n"
            "try:\n    pack_artifact(obj, codec='zstd')\nexcept ImportError:\n    print('zstd needs zstandard')\n")
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "zstd needs zstandard"
