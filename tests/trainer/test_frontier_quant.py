"""The 2026-04-27 record's quantisation and artifact techniques as knobs (GPTQ + SDClip, int7
embedding, int8 gate rows, LQER, per-group compression), each checked against the record's own code.

As in test_frontier.py, the record's functions are executed from its ``train_gpt.py``'s syntax tree
at test time (never copied into the repository). Its per-group compressor shells out to lrzip (a
system binary) per group; the tests stand brotli in for it on both sides, so what is compared is
the pipeline around the back-end: grouping, row sorting, layout, the remainder and the row orders.
"""

from __future__ import annotations

import collections
import io
import re
import types

import pytest
import torch
from test_frontier import record_constant, record_function

from trainer.config import ConfigError, TrainerConfig
from trainer.gptq import collect_hessians, gptq_quantize
from trainer.model import GPT, BlockLinear
from trainer.quant import (
    PERGROUP_MAGIC,
    FrontierQuant,
    dequantize,
    pack_artifact,
    quantize_state_dict,
    unpack_artifact,
    unpack_artifact_with_settings,
)

brotli = pytest.importorskip("brotli")

# the record's 04-27 run: MLP 11.5, embed 14.0 (its defaults otherwise)
SIGMAS = {"matrix": 12.85, "attn": 13.0, "mlp": 11.5, "embed": 14.0}
RECORD_NAMES = (("mlp.up.", "mlp.fc."), ("mlp.down.", "mlp.proj."))


def to_record_name(name: str) -> str:
    for ours, theirs in RECORD_NAMES:
        name = name.replace(ours, theirs)
    return name


def correlated_inputs(n: int, cols: int, seed: int) -> torch.Tensor:
    """Activations with correlated channels, uneven scales and two dead inputs, as a Hessian's source."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g) / cols ** 0.5)
    x = x * torch.linspace(0.2, 3.0, cols)
    x[:, :2] = 0
    return x


def heavy_tailed(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w[torch.rand(rows, cols, generator=g) < 0.002] *= 15
    return w


def test_gptq_with_sdclip_equals_the_records_bit_for_bit():
    theirs = record_function("gptq_quantize_weight", torch=torch)
    w = heavy_tailed(96, 320, seed=0)
    X = correlated_inputs(1024, 320, seed=1)
    H = X.T @ X
    for sigmas, qmax, block in ((12.85, 31, 128), (14.0, 63, 128), (10.0, 31, 64)):
        q_ref, s_ref = theirs(w, H, clip_sigmas=sigmas, clip_range=qmax, block_size=block)
        q, s = gptq_quantize(w, H, sigmas, qmax, block)
        assert q.dtype == torch.int8 and s.dtype == torch.float16
        assert torch.equal(q, q_ref) and torch.equal(s, s_ref), (sigmas, qmax, block)
    # GPTQ does what it is for: the layer's output error is smaller than rounding on the same grid
    s = s.float()[:, None]
    rtn = torch.clamp(torch.round(w / s), -31, 31) * s
    out_err = lambda wq: float(((wq - w) @ X.T).norm())  # noqa: E731
    assert out_err(q.float() * s) < 0.9 * out_err(rtn)


def test_hessians_are_the_layer_inputs_second_moments():
    torch.manual_seed(0)
    cfg = TrainerConfig(num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=8, vocab_size=128,
                        bigram_vocab_size=0, train_seq_len=16, eval_seq_len=16, xsa_last_n=1)
    model = GPT(cfg)
    batches = [torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    H = collect_hessians(model, iter(batches), BlockLinear)
    # c_q, c_k and c_v read the same normalised input; the tied embedding's H is the final hidden state's
    assert torch.equal(H["blocks.0.attn.c_q.weight"], H["blocks.0.attn.c_k.weight"])
    assert torch.equal(H["blocks.1.attn.c_q.weight"], H["blocks.1.attn.c_v.weight"])
    with torch.no_grad():
        hid = [model.hidden(x).reshape(-1, 64) for x in batches]
    assert torch.allclose(H["tok_emb.weight"], sum(h.T @ h for h in hid) / 3, rtol=1e-5, atol=1e-5)
    assert H["blocks.0.mlp.down.weight"].shape == (cfg.mlp_hidden, cfg.mlp_hidden)
    assert all(torch.linalg.eigvalsh(h).min() > -1e-3 * h.diagonal().max() for h in H.values())  # positive semi-definite


def record_quantiser():
    """The record's gptq_mixed_quantize and dequantize_mixed, with their helpers."""
    helpers = {name: record_function(name, torch=torch) for name in
               ("gptq_quantize_weight", "_quantize_gate_int8_row", "_lqer_pack", "_lqer_pack_asym")}
    closure = dict(torch=torch, collections=collections, re=re, log=lambda *a, **k: None, **helpers)
    return record_function("gptq_mixed_quantize", **closure), record_function("dequantize_mixed", torch=torch)


@pytest.fixture(scope="module")
def frontier_model():
    return tiny_frontier_model()


def tiny_frontier_model():
    """Two layers wide enough (272) that attention, MLP and embedding matrices pass 65,536 values,
    with the sparse attention gate; weights nudged off their init so every matrix is non-trivial."""
    torch.manual_seed(0)
    cfg = TrainerConfig(num_layers=2, model_dim=272, num_heads=4, num_kv_heads=2, rope_dims=8, mlp_mult=1.0, vocab_size=256,
                        bigram_vocab_size=0, train_seq_len=32, eval_seq_len=32, xsa_last_n=1, attn_gate="sparse", gate_window=12)
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.02 * torch.randn_like(p))
    batches = [torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    return cfg, model, collect_hessians(model, iter(batches), BlockLinear)


@pytest.fixture(scope="module")
def frontier_quantised(frontier_model):
    cfg, model, hessians = frontier_model
    sd = model.state_dict()
    fq = FrontierQuant(matrix_bits=6, embed_bits=7, hessians=hessians, clip_sigmas=SIGMAS, gate_int8=True,
                       lqer_top_k=3, lqer_rank=4, lqer_asym=True, lqer_asym_group=64, lqer_factor_bits=4)
    ours = quantize_state_dict(sd, frontier=fq)
    h = types.SimpleNamespace(embed_clip_sigmas=14.0, mlp_clip_sigmas=11.5, attn_clip_sigmas=13.0, matrix_clip_sigmas=12.85,
                              embed_bits=7, matrix_bits=6, gated_attn_quant_gate=True, lqer_enabled=True, lqer_top_k=3,
                              lqer_rank=4, lqer_factor_bits=4, lqer_asym_enabled=True, lqer_asym_group=64)
    quantise, dequantise = record_quantiser()
    rec_sd = {to_record_name(k): v for k, v in sd.items()}
    result, meta = quantise(rec_sd, {to_record_name(k): v for k, v in hessians.items()}, h)
    return cfg, sd, ours, result, meta, dequantise


def test_mixed_quantiser_gptq_int7_gate_rows_and_lqer_equal_the_records(frontier_quantised):
    cfg, sd, ours, result, meta, dequantise = frontier_quantised
    gptq_names = [k for k, m in meta.items() if m.startswith("gptq")]
    assert {"tok_emb.weight", "blocks.0.attn.c_q.weight", "blocks.1.mlp.fc.weight", "blocks.1.mlp.proj.weight"} <= set(gptq_names)
    assert meta["tok_emb.weight"].startswith("gptq (int7)") and ours["tok_emb.weight"]["kind"] == "int7"
    assert ours["tok_emb.weight"]["q"].abs().max() <= 63
    for name, e in ours.items():
        rec = to_record_name(name)
        if e["kind"].startswith("int") and meta[rec] == "gate_int8_row":
            assert torch.equal(e["q"], result[rec + ".gq"]) and torch.equal(e["s"], result[rec + ".gs"]), name
        elif e["kind"].startswith("int"):
            assert torch.equal(e["q"], result[rec + ".q"]) and torch.equal(e["s"], result[rec + ".scale"]), name
            lq = "+lqer_asym" in meta[rec]
            assert lq == ("la" in e), name
            if lq:
                for ours_key, their_key in (("la", "lqA_a"), ("las", "lqAs_a"), ("lb", "lqB_a"), ("lbs", "lqBs_a")):
                    assert torch.equal(e[ours_key], result[f"{rec}.{their_key}"]), (name, ours_key)
        elif e["kind"] == "fp16" and "passthrough" in meta[rec]:
            assert torch.equal(e["t"], result[rec]), name
    assert sum("la" in e for e in ours.values()) == 3
    assert sum(m == "gate_int8_row" for m in meta.values()) == cfg.num_layers
    # the weights each side loads are the same numbers
    theirs = dequantise(result, meta, {to_record_name(k): v for k, v in sd.items()})
    back = dequantize(unpack_artifact(pack_artifact(ours, codec="brotli")))
    assert back.keys() == sd.keys()
    for name, t in back.items():
        assert torch.equal(t, theirs[to_record_name(name)]), name


def test_symmetric_lqer_equals_the_records(frontier_model):
    _, model, hessians = frontier_model
    sd = model.state_dict()
    quantise, _ = record_quantiser()
    h = types.SimpleNamespace(embed_clip_sigmas=20.0, mlp_clip_sigmas=10.0, attn_clip_sigmas=13.0, matrix_clip_sigmas=12.85,
                              embed_bits=8, matrix_bits=6, lqer_enabled=True, lqer_top_k=2, lqer_rank=3, lqer_factor_bits=5,
                              lqer_asym_enabled=False, lqer_asym_group=64)
    result, meta = quantise({to_record_name(k): v for k, v in sd.items()}, {to_record_name(k): v for k, v in hessians.items()}, h)
    ours = quantize_state_dict(sd, frontier=FrontierQuant(hessians=hessians, lqer_top_k=2, lqer_rank=3, lqer_asym=False,
                                                           lqer_factor_bits=5))
    with_lqer = [n for n, e in ours.items() if "la" in e]
    assert len(with_lqer) == 2 and all(meta[to_record_name(n)].endswith("+lqer") for n in with_lqer)
    for n in with_lqer:
        for ours_key, their_key in (("la", "lqA"), ("las", "lqAs"), ("lb", "lqB"), ("lbs", "lqBs")):
            assert torch.equal(ours[n][ours_key], result[f"{to_record_name(n)}.{their_key}"]), (n, ours_key)


def test_lqer_reduces_the_error_of_the_matrices_it_corrects(frontier_quantised):
    _, sd, ours, *_ = frontier_quantised
    back = dequantize(ours)
    for name, e in ours.items():
        if "la" in e:
            plain = e["q"].float() * e["s"].float()[:, None]
            assert (back[name] - sd[name]).norm() < (plain - sd[name]).norm(), name


def record_pergroup():
    """The record's per-group serialiser with brotli standing in for lrzip."""
    stand_in = lambda data, tmpdir, label: brotli.compress(data, quality=11, lgwin=24)  # noqa: E731
    pack_streams = record_function("_pack_streams", _PACK_MAGIC=record_constant("_PACK_MAGIC"))
    serialise = record_function("_serialize_pergroup", torch=torch, io=io, collections=collections,
                                _GROUP_ORDER=record_constant("_GROUP_ORDER"), _SIMSORT_KEYS=record_constant("_SIMSORT_KEYS"),
                                _similarity_sort_l1=record_function("_similarity_sort_l1"), _lrzip_compress=stand_in,
                                _pack_streams=pack_streams)
    return serialise, record_function("_unpack_streams", _PACK_MAGIC=record_constant("_PACK_MAGIC"))


def test_pergroup_streams_equal_the_records_and_roundtrip_exactly(frontier_quantised, tmp_path):
    # ~6 s: both sides brotli-11 (16 MiB window) ~0.6 MB of integers; the smallest model whose attention,
    # MLP and embedding all pass the 65,536-value threshold, so every group is exercised.
    cfg, sd, ours, result, meta, _ = frontier_quantised
    serialise, unpack_streams = record_pergroup()
    their_blob = serialise(result, meta, cfg.num_layers, str(tmp_path))
    our_blob = pack_artifact(ours, codec="pergroup")
    assert our_blob[:4] == their_blob[:4] == PERGROUP_MAGIC
    theirs, mine = unpack_streams(their_blob), unpack_streams(our_blob)
    assert len(theirs) == len(mine) == 9
    groups = len(record_constant("_GROUP_ORDER"))
    assert sum(len(s) > 0 for s in theirs[:groups]) == 5  # embedding, c_q, proj, up, down (c_k, c_v are small here)
    for i in range(groups):
        assert mine[i] == theirs[i], f"group stream {i}"
    assert mine[groups + 1] == theirs[groups + 1]  # the row orders
    # the remainder differs only in its container (caddie's JSON header, the record's torch.save pickle)
    assert abs(len(our_blob) - len(their_blob)) < 0.02 * len(their_blob)
    back = unpack_artifact(our_blob)
    assert back.keys() == ours.keys()
    for k, e in ours.items():
        for part, v in e.items():
            if isinstance(v, torch.Tensor):
                assert back[k][part].dtype == v.dtype and torch.equal(back[k][part], v), (k, part)


def test_every_codec_roundtrips_exactly_and_carries_settings(frontier_quantised):
    *_, ours, _result, _meta, _ = frontier_quantised
    ours = {k: e for k, e in ours.items() if not k.startswith("blocks.1.")}  # one layer: brotli-11 is slow
    settings = {"model": {"NUM_LAYERS": 2}, "eval": {"EVAL_STRIDE": 64}}
    for codec, carried in (("lzma", settings), ("zstd", settings), ("brotli", None), ("brotli", settings), ("pergroup", settings)):
        blob = pack_artifact(ours, level=3, codec=codec, settings=carried)
        back, got = unpack_artifact_with_settings(blob)
        assert got == carried, codec
        for k, e in ours.items():
            for part, v in e.items():
                if isinstance(v, torch.Tensor):
                    assert torch.equal(back[k][part], v), (codec, k, part)


def test_defaults_leave_the_quantiser_and_the_artifact_as_they_were(frontier_model):
    cfg, model, hessians = frontier_model
    sd = model.state_dict()
    fq = FrontierQuant.from_config(TrainerConfig(), hessians)
    assert fq.hessians is None and fq.lqer_top_k == 0 and (fq.matrix_bits, fq.embed_bits) == (6, 8) and not fq.gate_int8
    plain, via = quantize_state_dict(sd), quantize_state_dict(sd, frontier=fq)
    assert pack_artifact(plain) == pack_artifact(via)
    assert {e["kind"] for e in plain.values()} <= {"int6", "int8", "fp16", "raw"}


def test_frontier_quant_knobs_are_validated():
    cfg = TrainerConfig.from_dict({"STACK": "2026-03-23", "GPTQ": 1, "EMBED_BITS": 7, "LQER_ENABLED": 1, "ARTIFACT_CODEC": "pergroup",
                                   "QAT_ENABLED": 0, "MATRIX_BITS": 5, "ATTN_GATE_INT8": 1})
    fq = FrontierQuant.from_config(cfg, {"x": torch.eye(2)})
    assert fq.hessians is not None and fq.embed_bits == 7 and fq.matrix_bits == 5 and fq.lqer_top_k == 3 and fq.gate_int8
    for bad in ({"EMBED_BITS": 9}, {"MATRIX_BITS": 1}, {"LQER_RANK": 0}, {"ARTIFACT_CODEC": "lrzip"}, {"MATRIX_BITS": 5}):
        with pytest.raises(ConfigError):
            TrainerConfig.from_dict({"STACK": "2026-03-23", **bad})  # MATRIX_BITS=5 with its late QAT (int6) on is refused too


@pytest.mark.skipif(__import__("shutil").which("lrzip") is None, reason="lrzip binary not installed (apt-get install lrzip)")
def test_pergroup_with_lrzip_streams_equal_the_records_real_lrzip(frontier_quantised, tmp_path):
    import os
    import subprocess

    cfg, sd, ours, result, meta, _ = frontier_quantised
    # ~6 s: lrzip costs ~1 s a call, so two groups: the embedding (row-sorted) and an attention output (not sorted)
    keep = lambda name: not name.startswith("blocks.") or name.startswith("blocks.0.attn.proj.")  # noqa: E731
    ours = {k: e for k, e in ours.items() if keep(k)}
    result = {k: v for k, v in result.items() if keep(k)}
    meta = {k: v for k, v in meta.items() if keep(k)}
    serialise = record_function("_serialize_pergroup", torch=torch, io=io, collections=collections,
                                _GROUP_ORDER=record_constant("_GROUP_ORDER"), _SIMSORT_KEYS=record_constant("_SIMSORT_KEYS"),
                                _similarity_sort_l1=record_function("_similarity_sort_l1"),
                                _lrzip_compress=record_function("_lrzip_compress", os=os, subprocess=subprocess),
                                _pack_streams=record_function("_pack_streams", _PACK_MAGIC=record_constant("_PACK_MAGIC")))
    unpack_streams = record_function("_unpack_streams", _PACK_MAGIC=record_constant("_PACK_MAGIC"))
    theirs = unpack_streams(serialise(result, meta, 1, str(tmp_path)))
    blob = pack_artifact(ours, codec="pergroup", pergroup_backend="lrzip")
    mine = unpack_streams(blob)
    groups = len(record_constant("_GROUP_ORDER"))
    assert [s[:4] for s in mine[:groups] if s] == [b"LRZI"] * 2
    assert mine[:groups] == theirs[:groups] and mine[groups + 1] == theirs[groups + 1]
    back = unpack_artifact(blob)
    for k, e in ours.items():
        for part, v in e.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(back[k][part], v), (k, part)


def test_a_missing_compressor_stops_the_run_before_training(monkeypatch):
    import trainer.train as train_module

    monkeypatch.setattr(train_module.shutil, "which", lambda name: None)
    with pytest.raises(train_module.RunError, match="lrzip"):
        train_module.check_codec_available(TrainerConfig(artifact_codec="pergroup", pergroup_backend="lrzip"))
    train_module.check_codec_available(TrainerConfig(artifact_codec="pergroup"))  # brotli is installed here


def test_gptq_reserve_comes_off_the_training_loop_as_the_record_does():
    from trainer.train import loop_seconds, lr_scale_at

    cfg = TrainerConfig(iterations=9000, warmdown_iters=200, max_wallclock_seconds=60, gptq=True, gptq_reserve_seconds=4.0)
    assert loop_seconds(cfg) == 56.0 and loop_seconds(TrainerConfig(max_wallclock_seconds=60)) == 60.0
    assert loop_seconds(TrainerConfig(max_wallclock_seconds=0, gptq=True)) == 0.0  # no cap stays no cap
    # 100 ms a step: the warm-down now ends at 56 s, where the calibration's reserve begins
    assert lr_scale_at(560, 56_000.0, cfg) == 0.0 and lr_scale_at(460, 46_000.0, cfg) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="GPTQ_RESERVE_SECONDS"):
        TrainerConfig.from_dict({"GPTQ": 1, "MAX_WALLCLOCK_SECONDS": 3, "GPTQ_RESERVE_SECONDS": 4})
