"""STACK presets: a preset is a dict of knob defaults applied before a spec's own knobs; explicit knobs win and
validation sees the result. The 2026-04-27 preset's values are checked against the record's own log and code
(read from ../shared/challenge at test time), not against a copy of them."""

from __future__ import annotations

import re

import pytest
from test_frontier import RECORD

from trainer.config import BASE_STACK, DEFAULT_STACK, STACKS, ConfigError, TrainerConfig, artifact_settings

# the record's Hyperparameters (as its log prints them) -> caddie's knob
RECORD_NAMES = {
    "vocab_size": "VOCAB_SIZE", "num_layers": "NUM_LAYERS", "model_dim": "MODEL_DIM", "num_heads": "NUM_HEADS",
    "num_kv_heads": "NUM_KV_HEADS", "mlp_mult": "MLP_MULT", "rope_dims": "ROPE_DIMS", "rope_base": "ROPE_BASE",
    "logit_softcap": "LOGIT_SOFTCAP", "tie_embeddings": "TIE_EMBEDDINGS", "tied_embed_init_std": "TIED_EMBED_INIT_STD",
    "ln_scale": "LN_SCALE", "xsa_last_n": "XSA_LAST_N", "qk_gain_init": "QK_GAIN_INIT", "smear_gate_enabled": "SMEAR_GATE",
    "gate_window": "GATE_WINDOW", "sparse_attn_gate_scale": "ATTN_GATE_SCALE", "skip_gates_enabled": "SKIP_GATES",
    "num_loops": "NUM_LOOPS", "loop_start": "LOOP_START", "loop_end": "LOOP_END", "enable_looping_at": "ENABLE_LOOPING_AT",
    "parallel_start_layer": "PARALLEL_START_LAYER", "parallel_final_lane": "PARALLEL_FINAL_LANE",
    "fused_ce_enabled": "FUSED_CE", "train_seq_len": "TRAIN_SEQ_LEN", "eval_seq_len": "EVAL_SEQ_LEN",
    "train_batch_tokens": "TRAIN_BATCH_TOKENS", "iterations": "ITERATIONS", "warmup_steps": "WARMUP_STEPS",
    "max_wallclock_seconds": "MAX_WALLCLOCK_SECONDS", "min_lr": "MIN_LR", "gptq_reserve_seconds": "GPTQ_RESERVE_SECONDS",
    "matrix_lr": "MATRIX_LR", "scalar_lr": "SCALAR_LR", "tied_embed_lr": "TIED_EMBED_LR", "muon_momentum": "MUON_MOMENTUM",
    "muon_momentum_warmup_start": "MUON_MOMENTUM_WARMUP_START", "muon_momentum_warmup_steps": "MUON_MOMENTUM_WARMUP_STEPS",
    "muon_backend_steps": "MUON_BACKEND_STEPS", "muon_row_normalize": "MUON_ROW_NORMALIZE", "muon_wd": "MUON_WD",
    "adam_wd": "ADAM_WD", "beta1": "BETA1", "beta2": "BETA2", "adam_eps": "ADAM_EPS", "grad_clip_norm": "GRAD_CLIP_NORM",
    "ema_decay": "EMA_DECAY", "gptq_calibration_batches": "GPTQ_CALIBRATION_BATCHES",
    "matrix_clip_sigmas": "MATRIX_CLIP_SIGMAS", "attn_clip_sigmas": "ATTN_CLIP_SIGMAS", "mlp_clip_sigmas": "MLP_CLIP_SIGMAS",
    "embed_clip_sigmas": "EMBED_CLIP_SIGMAS", "matrix_bits": "MATRIX_BITS", "embed_bits": "EMBED_BITS",
    "gated_attn_quant_gate": "ATTN_GATE_INT8", "lqer_enabled": "LQER_ENABLED", "lqer_rank": "LQER_RANK",
    "lqer_top_k": "LQER_TOP_K", "lqer_asym_enabled": "LQER_ASYM", "lqer_asym_group": "LQER_ASYM_GROUP",
    "lqer_factor_bits": "LQER_FACTOR_BITS", "compressor": "ARTIFACT_CODEC", "ttt_enabled": "TTT_ENABLED",
    "ttt_lora_rank": "TTT_LORA_RANK", "ttt_lora_lr": "TTT_LORA_LR", "ttt_beta1": "TTT_LORA_BETA1",
    "ttt_beta2": "TTT_LORA_BETA2", "ttt_weight_decay": "TTT_LORA_WEIGHT_DECAY", "ttt_chunk_size": "TTT_LORA_CHUNK_TOKENS",
    "ttt_batch_size": "TTT_LORA_BATCH_DOCS", "ttt_grad_steps": "TTT_LORA_GRAD_STEPS", "phased_ttt_num_phases": "TTT_PHASES",
    "phased_ttt_prefix_docs": "TTT_PREFIX_DOCS", "global_ttt_lr": "TTT_LR", "global_ttt_momentum": "TTT_MOMENTUM",
    "global_ttt_epochs": "TTT_EPOCHS", "global_ttt_chunk_tokens": "TTT_CHUNK_TOKENS",
    "global_ttt_batch_seqs": "TTT_BATCH_SEQS", "global_ttt_grad_clip": "TTT_GRAD_CLIP",
}


def record_log_hyperparameters() -> dict[str, str]:
    log = RECORD.with_name("train_seed42.log")
    if not log.exists():
        pytest.skip(f"record log not found at {log}")
    lines = log.read_text().split("Hyperparameters:\n", 1)[1].splitlines()
    out = {}
    for line in lines:
        m = re.fullmatch(r"  (\w+): ?(.*)", line)
        if not m:
            break
        out[m[1]] = m[2]
    return out


def same(ours, theirs: str) -> bool:
    if isinstance(ours, bool):
        return theirs == str(ours)
    if isinstance(ours, (int, float)):
        return float(theirs) == pytest.approx(float(ours), rel=1e-12)
    return theirs == ours


def test_the_2026_04_27_preset_has_the_records_values():
    cfg = TrainerConfig.from_dict({"STACK": "2026-04-27"})
    logged = record_log_hyperparameters()
    wrong = {name: (logged[name], getattr(cfg, env.lower())) for name, env in RECORD_NAMES.items()
             if not same(getattr(cfg, env.lower()), logged[name])}
    assert wrong == {}
    # what the log does not print: read from the record's code
    source = RECORD.read_text()
    assert logged["sparse_attn_gate_enabled"] == "True" and cfg.attn_gate == "sparse"
    assert cfg.smear_gate_kind == "window"  # its SmearGate (test_frontier_model checks the forward)
    assert "_PE_COEFFS" in source and cfg.muon_ns_coeffs == "polar_express"  # Polar Express is not switchable there
    assert "DocumentPackingLoader" in source and cfg.doc_attention  # it trains on BOS-delimited documents
    assert "BigramHash" not in source and cfg.bigram_vocab_size == 0
    assert "qat" not in source.lower() and not cfg.qat_enabled
    assert '"TTT_LORA_ALPHA", "144"' in source and cfg.ttt_lora_alpha == 144
    assert '"TTT_WARM_START_A", "1"' in source and cfg.ttt_lora_warm_start_a
    assert logged["phased_ttt_enabled" if "phased_ttt_enabled" in logged else "ttt_enabled"] == "True" and cfg.ttt_mode == "lora_phased"
    assert "lrzip" in source and cfg.pergroup_backend == "lrzip"
    assert source.count("eval_stride") == 1 and cfg.eval_stride == 0  # defined, never used: its pre-TTT eval is the full split


def test_2026_04_27_is_the_default_stack_and_2026_03_23_the_dataclass_base():
    # a spec, an env or a config file that names no STACK gets the final record's stack
    assert DEFAULT_STACK == "2026-04-27" and BASE_STACK == "2026-03-23" and STACKS["2026-03-23"] == {}
    assert TrainerConfig.from_dict({}) == TrainerConfig.from_env({}) == TrainerConfig.for_stack("2026-04-27")
    assert TrainerConfig.from_dict({}).overrides() == {}
    # its artifact carries the knobs that shape it, so EVAL_ARTIFACT evaluates it alone (item 7)
    assert TrainerConfig.from_dict({}).artifact_settings and not TrainerConfig().artifact_settings
    # the dataclass's own defaults are the 2026-03-23 stack, one knob away
    assert TrainerConfig() == TrainerConfig.for_stack("2026-03-23") == TrainerConfig.from_dict({"STACK": "2026-03-23"})
    assert TrainerConfig().overrides() == {"STACK": "2026-03-23"}


def test_explicit_knobs_win_and_validation_sees_the_merged_config():
    cfg = TrainerConfig.from_dict({"STACK": "2026-04-27", "VOCAB_SIZE": 1024, "num_loops": 0, "TTT_MODE": "whole"})
    assert (cfg.vocab_size, cfg.num_loops, cfg.ttt_mode, cfg.xsa_last_n, cfg.gptq) == (1024, 0, "whole", 11, True)
    # the preset's XSA on 11 layers does not fit 4 layers: the merged config is what is validated
    with pytest.raises(ConfigError) as exc:
        TrainerConfig.from_dict({"STACK": "2026-04-27", "NUM_LAYERS": 4})
    assert {i.field for i in exc.value.issues} >= {"XSA_LAST_N"}
    with pytest.raises(ConfigError, match="STACK"):
        TrainerConfig.from_dict({"STACK": "2026-05-01"})


def test_every_preset_validates_and_round_trips_through_overrides_and_env():
    for stack in STACKS:
        cfg = TrainerConfig.from_dict({"STACK": stack})
        cfg.validate()
        assert cfg == TrainerConfig.for_stack(stack)
        assert TrainerConfig.from_dict(cfg.overrides()) == cfg
        assert TrainerConfig.from_env(cfg.to_env()) == cfg
    cfg = TrainerConfig.from_dict({"STACK": "2026-04-27", "SEED": 7, "TTT_LORA_RANK": 96})
    assert cfg.overrides() == {"SEED": 7, "TTT_LORA_RANK": 96}  # only what differs from the preset, the default
    old = TrainerConfig.from_dict({"STACK": "2026-03-23", "SEED": 7, "VOCAB_SIZE": 4096})
    assert old.overrides() == {"STACK": "2026-03-23", "SEED": 7, "VOCAB_SIZE": 4096}  # STACK unless the default
    assert TrainerConfig.from_dict(cfg.overrides()) == cfg


def test_schema_offers_the_stacks_and_the_artifact_carries_the_preset_s_values():
    prop = TrainerConfig.json_schema()["properties"]["STACK"]
    assert prop["enum"] == list(STACKS) and prop["default"] == DEFAULT_STACK
    vocab = TrainerConfig.json_schema()["properties"]["VOCAB_SIZE"]
    assert vocab["default"] == 8192 and vocab["x-stack-defaults"] == {"2026-03-23": 1024, "2026-04-27": 8192}
    assert "x-stack-defaults" not in TrainerConfig.json_schema()["properties"]["NUM_LAYERS"]  # 11 in both
    # an artifact stores the resolved knobs, not the preset's name, so a later preset change cannot reinterpret it
    settings = artifact_settings(TrainerConfig.from_dict({"STACK": "2026-04-27"}))
    assert "STACK" not in settings["model"] and settings["model"]["NUM_LOOPS"] == 2 and settings["eval"]["TTT_MODE"] == "lora_phased"
