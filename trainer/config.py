"""Every knob of the shared trainer, in one dataclass.

The defaults are the seed stack of trainer-spec.md (11 layers, int6 + zstd-22,
XSA on the last 4 layers, SmearGate, BigramHash, EMA, Muon, sliding-window
eval, legal score-first TTT). Env-var names follow the challenge convention
(``NUM_LAYERS=11 XSA_LAST_N=4 ...``).

This module must import without torch: the service validates run specs with
it, and the web form and API docs are generated from it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

# Rules of the challenge (trainer-spec.md, section 1). Constants, not knobs.
ARTIFACT_LIMIT_BYTES = 16_000_000
TRAIN_LIMIT_SECONDS = 600.0
EVAL_LIMIT_SECONDS = 600.0
FULL_VAL_TOKENS = 62_021_632

# How the artifact stores a tensor (trainer/quant.py), also read by the service's size check
# (service/runs/size_check.py), which has no torch: matrices with more values than this are
# quantised per row; names holding one of these patterns are control tensors, kept in float.
QUANT_SMALL_NUMEL = 65_536
CONTROL_TENSOR_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights", "smear", "bigram.scale", "ve_scale", "attn_gate")


# CaseOps data (CASEOPS_ENABLED): one tokenizer, one data variant (trainer/recipes.py builds it).
CASEOPS_VOCAB_SIZE = 8192
CASEOPS_VARIANT = "sp8192_caseops"


# --- stack presets (issue 22 item 1) ---------------------------------------------------------------
# A preset is a dict of knob defaults: from_dict/from_env apply the chosen STACK's dict first, then the
# spec's own knobs (explicit knobs win), then validate the result. The dataclass's field defaults are
# the base every preset is written against: the 2026-03-23 stack, the one the trainer started from, so
# TrainerConfig() is that stack and a preset lists only what it changes. "2026-04-27" is every technique
# of the challenge's final record that is a knob here, with the values of its README's run command and
# its logs. DEFAULT_STACK is the stack of a spec, an env or a --config file that names none.
BASE_STACK = "2026-03-23"
DEFAULT_STACK = "2026-04-27"
STACKS: dict[str, dict[str, Any]] = {
    "2026-03-23": {},
    "2026-04-27": {
        # model (SP8192 CaseOps tokenizer: VOCAB_SIZE 8192 needs the sp8192 data variant)
        "VOCAB_SIZE": 8192, "MLP_MULT": 4.0, "XSA_LAST_N": 11, "QK_GAIN_INIT": 5.0, "BIGRAM_VOCAB_SIZE": 0,
        "SMEAR_GATE": True, "SMEAR_GATE_KIND": "window", "GATE_WINDOW": 12, "ATTN_GATE": "sparse", "ATTN_GATE_SCALE": 0.5,
        "SKIP_GATES": True, "NUM_LOOPS": 2, "LOOP_START": 3, "LOOP_END": 5, "ENABLE_LOOPING_AT": 0.35,
        "PARALLEL_START_LAYER": 8, "PARALLEL_FINAL_LANE": "mean", "FUSED_CE": True, "DOC_ATTENTION": True,
        # schedule and optimiser; WARMDOWN_ITERS 4200 stands for its WARMDOWN_FRAC 0.85 of ~4,930 steps
        "ITERATIONS": 20000, "WARMUP_STEPS": 20, "WARMDOWN_ITERS": 4200, "MIN_LR": 0.1, "GPTQ_RESERVE_SECONDS": 0.5,
        "MATRIX_LR": 0.026, "SCALAR_LR": 0.02, "TIED_EMBED_LR": 0.03, "MUON_MOMENTUM": 0.97, "MUON_BACKEND_STEPS": 5,
        "MUON_NS_COEFFS": "polar_express", "MUON_ROW_NORMALIZE": True, "MUON_WD": 0.095, "ADAM_WD": 0.02, "BETA2": 0.99,
        "GRAD_CLIP_NORM": 0.3, "EMA_DECAY": 0.9965, "QAT_ENABLED": False,
        # quantiser and artifact
        "GPTQ": True, "GPTQ_CALIBRATION_BATCHES": 16, "MATRIX_CLIP_SIGMAS": 12.85, "ATTN_CLIP_SIGMAS": 13.0,
        "MLP_CLIP_SIGMAS": 11.5, "EMBED_CLIP_SIGMAS": 14.0, "EMBED_BITS": 7, "ATTN_GATE_INT8": True, "LQER_ENABLED": True,
        "LQER_RANK": 4, "LQER_TOP_K": 3, "LQER_ASYM": True, "LQER_ASYM_GROUP": 64, "ARTIFACT_CODEC": "pergroup",
        "PERGROUP_BACKEND": "lrzip",
        # caddie's own: the artifact carries the knobs that shape it (~0.6 kB), so it evaluates alone (item 7)
        "ARTIFACT_SETTINGS": True,
        # evaluation: non-overlapping windows before TTT (it never runs its EVAL_STRIDE), then phased LoRA TTT,
        # whose phases' whole-model SGD is its GLOBAL_TTT_* (LR 0.001, 1 epoch)
        "EVAL_STRIDE": 0, "TTT_MODE": "lora_phased", "TTT_LORA_RANK": 80, "TTT_LORA_LR": 1e-4, "TTT_LORA_BETA2": 0.99,
        "TTT_LORA_WEIGHT_DECAY": 0.5, "TTT_LORA_CHUNK_TOKENS": 48, "TTT_LORA_BATCH_DOCS": 64, "TTT_PHASES": 3,
        "TTT_PREFIX_DOCS": 2500, "TTT_LR": 0.001, "TTT_EPOCHS": 1,
    },
}


def knob(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
    env: str | None = None,
    group: str = "model",
    set_by: str | None = None,
) -> Any:
    """Declare one knob: its default plus the metadata the validator, the API
    schema and the web form read. ``set_by`` names who sets a knob that a run spec
    may not: "launcher" (paths on the node) or "seeds" (the spec's seeds list)."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "env": env, "group": group, "set_by": set_by}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ConfigIssue:
    field: str  # the challenge's env-var name, e.g. NUM_LAYERS
    value: Any
    message: str

    def __str__(self) -> str:
        return f"{self.field}={self.value!r}: {self.message}"


class ConfigError(ValueError):
    """One or more knobs are wrong. ``issues`` names each field, value and limit."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = issues
        super().__init__("; ".join(str(i) for i in issues))


@dataclass
class TrainerConfig:
    # --- stack preset ----------------------------------------------------
    stack: str = knob(BASE_STACK, "Stack preset: the defaults of every other knob; a spec without STACK gets 2026-04-27. "
                      "2026-03-23: the seed stack (val_bpb 1.1194 in the challenge). 2026-04-27 (the default; the "
                      "defaults shown here): the final record's (1.0611): SP8192 (VOCAB_SIZE "
                      "8192, the sp8192 data), MLP 4x, XSA on all 11 layers, QK gain 5, layers 3-5 looped 3x from 35% of "
                      "training, parallel residuals from layer 8, skip gates, sparse attention gate, window SmearGate, "
                      "per-document attention, fused soft-capped CE, Polar-Express Muon with MuonEq-R, MIN_LR 0.1, no "
                      "BigramHash, no late QAT, GPTQ with SDClip, int7 embedding, int8 attention gates, LQER, per-group "
                      "lrzip artifact, phased LoRA TTT. Knobs set explicitly override the preset.",
                      choices=tuple(STACKS), group="stack")

    # --- data and output -------------------------------------------------
    data_path: str = knob("./data/datasets/fineweb10B_sp1024", "Folder with fineweb_train_*.bin and fineweb_val_*.bin shards.", group="data", set_by="launcher")
    tokenizer_path: str = knob("./data/tokenizers/fineweb_1024_bpe.model", "SentencePiece model used for the val_bpb byte tables.", group="data", set_by="launcher")
    output_dir: str = knob("./out", "Where train.log, metrics.jsonl, result.json and the artifact are written.", group="data", set_by="launcher")
    seed: int = knob(1337, "Random seed (weights init and data order).", min=0, max=2**31 - 1, group="data", set_by="seeds")
    val_tokens_limit: int = knob(0, "Evaluate on only the first N val tokens (0 = the full split, as the challenge scores).", min=0, group="data")

    # --- model shape -----------------------------------------------------
    vocab_size: int = knob(1024, "Tokenizer vocabulary size.", min=16, max=65536)
    caseops_enabled: bool = knob(False, "CaseOps data (the 2026-04-27 record's): text lowercased with case markers, tokenized by "
                                 "its SP8192 CaseOps tokenizer (the sp8192_caseops data variant; needs VOCAB_SIZE 8192); val_bpb "
                                 "counts the original text's bytes, from the val byte sidecar.")
    bos_token_id: int = knob(1, "Token that starts every document; SmearGate never blends across it.", min=0, max=65535)
    num_layers: int = knob(11, "Transformer blocks.", min=1, max=64)
    model_dim: int = knob(512, "Residual width.", min=16, max=8192)
    num_heads: int = knob(8, "Query heads.", min=1, max=128)
    num_kv_heads: int = knob(4, "Key/value heads (GQA); must divide NUM_HEADS.", min=1, max=128)
    mlp_mult: float = knob(3.0, "MLP hidden width as a multiple of MODEL_DIM.", min=0.25, max=16.0)
    mlp_activation: str = knob("leaky_relu2", "MLP nonlinearity: LeakyReLU(0.5) squared, or ReLU squared.", choices=("leaky_relu2", "relu2"))
    leaky_slope: float = knob(0.5, "Negative slope of the LeakyReLU before squaring.", min=0.0, max=1.0)
    tie_embeddings: bool = knob(True, "Share the input embedding and the output projection.")
    tied_embed_init_std: float = knob(0.005, "Init std of the tied embedding.", min=0.0, max=1.0)
    logit_softcap: float = knob(30.0, "Soft cap c in logits = c*tanh(z/c); 0 disables.", min=0.0, max=1000.0)
    rope_base: float = knob(10000.0, "Rotary embedding base.", min=1.0, max=1e7)
    rope_dims: int = knob(16, "Head dims that get rotary embedding (partial RoPE); must be even and <= head dim.", min=0, max=1024)
    qk_gain_init: float = knob(1.5, "Initial per-head query gain.", min=0.0, max=100.0)
    attn_gate: str = knob("none", "Per-head sigmoid gate on the attention output before its projection: sparse (from the first "
                          "GATE_WINDOW dims of the block's input, zero-init; the 2026-04-27 record) or dense (from all of them, "
                          "arXiv 2505.06708).", choices=("none", "sparse", "dense"))
    gate_window: int = knob(12, "Input dims of the sparse attention gate (ATTN_GATE=sparse).", min=1, max=8192)
    attn_gate_scale: float = knob(1.0, "g = sigmoid(ATTN_GATE_SCALE * W x); the 2026-04-27 record uses 0.5.", min=0.0, max=100.0)
    xsa_last_n: int = knob(4, "Exclusive self attention on the last N layers (0 disables).", min=0, max=64)
    bigram_vocab_size: int = knob(2048, "BigramHash table rows (0 disables BigramHash).", min=0, max=1_000_000)
    bigram_dim: int = knob(128, "BigramHash table width before projection.", min=1, max=4096)
    smear_gate: bool = knob(True, "SmearGate on the embedding (never blends across a BOS boundary).")
    ln_scale: bool = knob(True, "Scale each block's normalised input by 1/sqrt(layer+1).")
    unet_skips: bool = knob(True, "U-Net skip connections from the first half of the blocks to the second.")
    ve_enabled: bool = knob(False, "Value embeddings added to V on VE_LAYERS.")
    ve_dim: int = knob(128, "Value embedding width before projection.", min=1, max=4096)
    ve_layers: str = knob("9,10", "Comma-separated layer indices that get value embeddings.")
    # --- frontier model-side knobs (the 2026-04-27 record's architecture; all off by default) ---
    num_loops: int = knob(0, "Depth recurrence: blocks LOOP_START..LOOP_END run NUM_LOOPS more times in a row once looping is on "
                          "(the 2026-04-27 record: 2, so 3 passes of layers 3-5); the U-Net halves split the looped order. 0 disables.",
                          min=0, max=8)
    loop_start: int = knob(3, "First block of the looped segment (NUM_LOOPS > 0).", min=0, max=63)
    loop_end: int = knob(5, "Last block of the looped segment, inclusive (NUM_LOOPS > 0).", min=0, max=63)
    enable_looping_at: float = knob(0.35, "Training fraction (step/ITERATIONS, or elapsed/cap under a wallclock cap, the larger) "
                                    "from which the loop runs; before it the blocks run once. Evaluation always loops.",
                                    min=0.0, max=1.0)
    parallel_start_layer: int = knob(0, "Parallel residuals: decoder blocks from this one on keep two lanes, attention reading lane 0 "
                                     "and the MLP lane 1, each output written to both with learned weights (the 2026-04-27 record: 8). "
                                     "0 disables.", min=0, max=63)
    parallel_final_lane: str = knob("mean", "What the parallel lanes hand to the final norm: their mean, lane 0 (attn) or lane 1 (mlp).",
                                    choices=("mean", "attn", "mlp"))
    fused_ce: bool = knob(False, "Training loss as one soft-capped cross-entropy that keeps only the raw logits and recomputes "
                          "c·tanh(x/c) in the backward (the 2026-04-27 record's fused kernel, in PyTorch); evaluation unchanged.")
    doc_attention: bool = knob(False, "Attention within documents: no token attends across a BOS_TOKEN_ID (the 2026-04-27 record's "
                               "variable-length attention over BOS-delimited documents, in training and evaluation). Runs on "
                               "PyTorch SDPA with a document mask.")
    skip_gates: bool = knob(False, "U-Net skip gates: a skip enters as lerp(w·skip, x, sigmoid(g)) with per-channel g learned from 0 "
                            "(the 2026-04-27 record); off: x + w·skip.")
    smear_gate_kind: str = knob("channel", "SmearGate form (SMEAR_GATE=1): channel, x + g·(x_prev - x) after the embedding norm with "
                                "g = sigmoid(w) per channel; or window (the 2026-04-27 record), x + λ·sigmoid(w·x[:GATE_WINDOW])·x_prev "
                                "before the norm, one gate per token, w and λ from 0. Both zero x_prev at a BOS.",
                                choices=("channel", "window"))
    residual_dtype: str = knob("bf16", "Residual stream dtype under CUDA autocast: bf16 as the records (half the memory traffic of the "
                               "element-wise, norm and per-channel gradient work; master weights stay fp32) or fp32. CPU runs are fp32.",
                               choices=("bf16", "fp32"))
    attention_backend: str = knob("auto", "auto: FlashAttention 3 when it imports, else PyTorch SDPA.", choices=("auto", "fa3", "sdpa"))

    # --- batch and schedule ----------------------------------------------
    train_seq_len: int = knob(2048, "Training sequence length.", min=8, max=65536, group="schedule")
    eval_seq_len: int = knob(2048, "Evaluation window length.", min=8, max=65536, group="schedule")
    train_batch_tokens: int = knob(786_432, "Global batch in tokens per step, independent of GPU count.", min=8, max=16_777_216, group="schedule")
    grad_accum_steps: int = knob(0, "Micro-steps per step; 0 = 8 / world size, so the global batch never depends on the GPU count.", min=0, max=1024, group="schedule")
    iterations: int = knob(9000, "Nominal step count (the warm-down length is measured against it).", min=1, max=1_000_000, group="schedule")
    warmup_steps: int = knob(20, "Compile warm-up steps whose weights are then reset.", min=0, max=1000, group="schedule")
    warmdown_iters: int = knob(3500, "Linear warm-down to 0 over the last N steps (estimated from wallclock under a cap).", min=0, max=1_000_000, group="schedule")
    min_lr: float = knob(0.0, "Floor of the LR scale during the warm-down (the 2026-04-27 record's MIN_LR=0.10; 0 = warm down to zero).",
                         min=0.0, max=1.0, group="schedule")
    max_wallclock_seconds: float = knob(600.0, "Training wallclock cap in seconds (0 = none); warm-down lands on it.", min=0.0, max=1e6, group="schedule")
    train_log_every: int = knob(200, "Log train_loss every N steps.", min=1, max=1_000_000, group="schedule")
    val_loss_every: int = knob(0, "Evaluate val_loss every N steps during training (0 = only at the end).", min=0, max=1_000_000, group="schedule")
    compile: bool = knob(True, "torch.compile the model on CUDA (never on CPU).", group="schedule")

    # --- optimiser ---------------------------------------------------------
    matrix_lr: float = knob(0.025, "Muon learning rate for 2-D block matrices.", min=0.0, max=10.0, group="optim")
    scalar_lr: float = knob(0.025, "Adam learning rate for scalars, gates and vectors.", min=0.0, max=10.0, group="optim")
    tied_embed_lr: float = knob(0.035, "Adam learning rate for the tied embedding.", min=0.0, max=10.0, group="optim")
    muon_momentum: float = knob(0.99, "Final Muon momentum.", min=0.0, max=1.0, group="optim")
    muon_momentum_warmup_start: float = knob(0.92, "Muon momentum at step 0.", min=0.0, max=1.0, group="optim")
    muon_momentum_warmup_steps: int = knob(1500, "Steps over which Muon momentum warms to MUON_MOMENTUM.", min=0, max=1_000_000, group="optim")
    muon_backend_steps: int = knob(5, "Newton-Schulz iterations.", min=1, max=20, group="optim")
    muon_ns_coeffs: str = knob("standard", "Newton-Schulz coefficients: the fixed quintic (3.4445, -4.775, 2.0315), or Polar Express's "
                               "per-iteration ones (2026-04-27 record; at most 5 iterations).", choices=("standard", "polar_express"), group="optim")
    muon_row_normalize: bool = knob(False, "MuonEq-R: scale each row of the Muon update to unit norm before Newton-Schulz (2026-04-27 record).",
                                    group="optim")
    muon_wd: float = knob(0.04, "Decoupled weight decay for Muon parameters.", min=0.0, max=1.0, group="optim")
    adam_wd: float = knob(0.04, "Decoupled weight decay for Adam parameters.", min=0.0, max=1.0, group="optim")
    beta1: float = knob(0.9, "Adam beta1.", min=0.0, max=1.0, group="optim")
    beta2: float = knob(0.95, "Adam beta2.", min=0.0, max=1.0, group="optim")
    adam_eps: float = knob(1e-8, "Adam epsilon.", min=0.0, max=1.0, group="optim")
    grad_clip_norm: float = knob(0.3, "Global gradient-norm clip (0 disables).", min=0.0, max=1e6, group="optim")

    # --- weight averaging and QAT -----------------------------------------
    ema_enabled: bool = knob(True, "Keep an EMA of all weights and apply it at the end.", group="averaging")
    ema_decay: float = knob(0.997, "EMA decay per step.", min=0.0, max=1.0, group="averaging")
    swa_enabled: bool = knob(False, "Average weights every SWA_EVERY steps once the LR scale < SWA_START_LR_SCALE.", group="averaging")
    swa_every: int = knob(50, "SWA snapshot interval in steps.", min=1, max=1_000_000, group="averaging")
    swa_start_lr_scale: float = knob(0.2, "SWA starts when the LR scale falls below this.", min=0.0, max=1.0, group="averaging")
    qat_enabled: bool = knob(True, "Late QAT: train through int6 fake-quantisation once the LR scale < LATE_QAT_THRESHOLD.", group="averaging")
    late_qat_threshold: float = knob(0.15, "LR scale below which late QAT switches on.", min=0.0, max=1.0, group="averaging")

    # --- artifact --------------------------------------------------------
    artifact_codec: str = knob("lzma", "Compressor of the artifact: lzma (xz, preset 6; 0.9% smaller than zstd-22 on trained weights), "
                               "zstd, brotli (quality 11), or pergroup (the 2026-04-27 record's: int matrices pooled by role, hot "
                               "groups' rows similarity-sorted, column-major, brotli-11 per group; the record uses lrzip per group).",
                               choices=("lzma", "zstd", "brotli", "pergroup"), group="artifact")
    zstd_level: int = knob(22, "zstd level for the compressed artifact (ARTIFACT_CODEC=zstd).", min=1, max=22, group="artifact")
    quant_clip_floor: float = knob(1.0, "Per-row clip floor F of int6/int8 quantisation and late QAT: scale = max(clip, F)/qmax, so rows "
                                   "with small weights use few levels and compress well (as the records do); 0 disables.",
                                   min=0.0, max=100.0, group="artifact")
    control_dtype: str = knob("fp16", "How control tensors (gates, scales, mixes) are stored in the artifact: fp16 as the records do, "
                              "or fp32 (exact, ~50 kB more).", choices=("fp16", "fp32"), group="artifact")
    # --- frontier quantisation and artifact knobs (the 2026-04-27 record's; issue 22; all off by default) ---
    gptq: bool = knob(False, "Full-Hessian GPTQ with std-based clipping (SDClip) for the int matrices and embedding, Hessians from "
                      "GPTQ_CALIBRATION_BATCHES training batches after training (the 2026-04-27 record); off: per-row clip search.",
                      group="artifact")
    gptq_calibration_batches: int = knob(16, "Training batches (of TRAIN_BATCH_TOKENS / grad-accum steps per rank) whose layer inputs "
                                         "give the GPTQ Hessians.", min=1, max=4096, group="artifact")
    gptq_block_size: int = knob(128, "Columns per GPTQ lazy-update block.", min=1, max=65536, group="artifact")
    gptq_reserve_seconds: float = knob(4.0, "At least this many seconds of MAX_WALLCLOCK_SECONDS kept for the GPTQ calibration, which "
                                       "reads training data and so counts as training: the loop (and its warm-down) stops this much "
                                       "earlier. A capped run times 2 calibration batches in its warm-up and keeps more where the "
                                       "calibration needs more, so loop plus calibration stays within the cap.",
                                       min=0.0, max=3600.0, group="schedule")
    matrix_clip_sigmas: float = knob(12.85, "SDClip k for matrices outside attention and MLP (scale = k·std(row)/qmax; GPTQ only).",
                                     min=0.01, max=1000.0, group="artifact")
    attn_clip_sigmas: float = knob(13.0, "SDClip k for attention matrices (GPTQ only).", min=0.01, max=1000.0, group="artifact")
    mlp_clip_sigmas: float = knob(10.0, "SDClip k for MLP matrices (GPTQ only; the record's run: 11.5).", min=0.01, max=1000.0, group="artifact")
    embed_clip_sigmas: float = knob(20.0, "SDClip k for the token embedding (GPTQ only; the record's run: 14.0).", min=0.01, max=1000.0,
                                    group="artifact")
    matrix_bits: int = knob(6, "Bits of the quantised matrices (int6: [-31, 31]).", min=2, max=8, group="artifact")
    embed_bits: int = knob(8, "Bits of the quantised token embedding (the record: 7).", min=2, max=8, group="artifact")
    attn_gate_int8: bool = knob(False, "Store the attention-gate weights as int8 per row instead of fp16 (the record's "
                                "GATED_ATTN_QUANT_GATE).", group="artifact")
    lqer_enabled: bool = knob(False, "LQER: a low-rank correction of the quantisation error of the LQER_TOP_K worst matrices.",
                              group="artifact")
    lqer_rank: int = knob(4, "Rank of the LQER correction.", min=1, max=512, group="artifact")
    lqer_top_k: int = knob(3, "Matrices (largest |W - Q|) that get an LQER correction.", min=1, max=4096, group="artifact")
    lqer_asym: bool = knob(True, "Asymmetric LQER factors: A int2 with one scale, B int4 per group of LQER_ASYM_GROUP (else both "
                           "LQER_FACTOR_BITS per row).", group="artifact")
    lqer_asym_group: int = knob(64, "Values per scale of the asymmetric LQER factor B.", min=1, max=65536, group="artifact")
    lqer_factor_bits: int = knob(4, "Bits of the symmetric LQER factors.", min=2, max=8, group="artifact")
    pergroup_backend: str = knob("brotli", "Compressor of each group under ARTIFACT_CODEC=pergroup: brotli-11, or lrzip -L 9 (ZPAQ; "
                                 "the record's; slower, needs the lrzip binary).", choices=("brotli", "lrzip"), group="artifact")
    artifact_settings: bool = knob(False, "Write the knobs that shape the model and its quantisation into the artifact (~0.6 kB), "
                                   "so EVAL_ARTIFACT can load it alone and refuse a mismatched setting.", group="artifact")
    eval_artifact: str = knob("", "Eval-only: skip training, load this artifact (written with ARTIFACT_SETTINGS=1) and evaluate it "
                              "as the run did; a model or quantisation knob set otherwise than the artifact's is refused.",
                              group="eval")

    # --- evaluation and test-time training ---------------------------------
    eval_stride: int = knob(64, "Sliding-window stride (0 = non-overlapping full-split evaluation).", min=0, max=65536, group="eval")
    eval_batch_seqs: int = knob(32, "Windows per evaluation batch.", min=1, max=4096, group="eval")
    ttt_enabled: bool = knob(True, "Legal score-first test-time training on val chunks already scored.", group="eval")
    ttt_chunk_tokens: int = knob(32768, "Tokens per TTT chunk.", min=1, max=1 << 30, group="eval")
    ttt_lr: float = knob(0.002, "TTT SGD learning rate (cosine-decayed across chunks).", min=0.0, max=10.0, group="eval")
    ttt_momentum: float = knob(0.9, "TTT SGD momentum.", min=0.0, max=1.0, group="eval")
    ttt_epochs: int = knob(3, "TTT epochs per chunk.", min=1, max=100, group="eval")
    ttt_batch_seqs: int = knob(32, "TTT batch size in sequences.", min=1, max=4096, group="eval")
    ttt_grad_clip: float = knob(1.0, "TTT gradient-norm clip (0 disables).", min=0.0, max=1e6, group="eval")
    ttt_mode: str = knob("whole", "whole: score-first TTT of the whole model over TTT_CHUNK_TOKENS chunks of the stream (the TTT_* knobs "
                         "above). lora_phased (the 2026-04-27 record's): BOS-delimited documents in batches of TTT_LORA_BATCH_DOCS "
                         "(longest first), each document scored TTT_LORA_CHUNK_TOKENS at a time by the model plus its own LoRA "
                         "(reset per batch), the LoRA trained on each chunk after it is scored; after the first "
                         "TTT_PREFIX_DOCS·p/TTT_PHASES documents are scored (p = 1..TTT_PHASES) the whole model takes SGD on the "
                         "scored documents (TTT_LR, TTT_MOMENTUM, TTT_EPOCHS, TTT_CHUNK_TOKENS, TTT_BATCH_SEQS, TTT_GRAD_CLIP; the "
                         "record's GLOBAL_TTT_*).", choices=("whole", "lora_phased"), group="eval")
    ttt_lora_rank: int = knob(96, "LoRA rank of TTT_MODE=lora_phased (the record's run: 80).", min=1, max=1024, group="eval")
    ttt_lora_alpha: float = knob(144.0, "LoRA delta scale α: delta = (α/rank)·x Aᵀ Bᵀ.", min=0.0, max=1e6, group="eval")
    ttt_lora_warm_start_a: bool = knob(True, "Keep each LoRA's A across the batches of a phase (only B is zeroed per batch).", group="eval")
    ttt_lora_lr: float = knob(1e-4, "AdamW learning rate of the LoRA (TTT_MODE=lora_phased).", min=0.0, max=10.0, group="eval")
    ttt_lora_beta1: float = knob(0.0, "AdamW beta1 of the LoRA.", min=0.0, max=1.0, group="eval")
    ttt_lora_beta2: float = knob(0.999, "AdamW beta2 of the LoRA (the record's run: 0.99).", min=0.0, max=1.0, group="eval")
    ttt_lora_weight_decay: float = knob(1.0, "AdamW decoupled weight decay of the LoRA (the record's run: 0.5).", min=0.0, max=100.0,
                                        group="eval")
    ttt_lora_chunk_tokens: int = knob(48, "Targets per LoRA TTT chunk: each is scored (window of up to EVAL_SEQ_LEN tokens ending "
                                      "at it), then trained on, TTT_LORA_GRAD_STEPS steps.", min=1, max=65536, group="eval")
    ttt_lora_grad_steps: int = knob(1, "LoRA optimiser steps per chunk.", min=1, max=100, group="eval")
    ttt_lora_batch_docs: int = knob(64, "Documents per LoRA TTT batch (one LoRA each).", min=1, max=4096, group="eval")
    ttt_phases: int = knob(1, "Phases of TTT_MODE=lora_phased: whole-model SGD after each (the record's run: 3).", min=1, max=64,
                           group="eval")
    ttt_prefix_docs: int = knob(2000, "Documents scored, over all phases, before the last whole-model SGD (the record's run: 2500; "
                                "0: LoRA only).", min=0, max=1 << 30, group="eval")

    # ------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_mult * self.model_dim)

    @property
    def ve_layer_list(self) -> list[int]:
        return [int(s) for s in self.ve_layers.split(",") if s.strip()]

    @property
    def data_variant(self) -> str:
        """The data a run trains and is scored on (a recipe of trainer/recipes.py): sp<VOCAB_SIZE>, or
        sp8192_caseops under CASEOPS_ENABLED."""
        return CASEOPS_VARIANT if self.caseops_enabled else f"sp{self.vocab_size}"

    # ------------------------------------------------------------------
    @classmethod
    def knobs(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @staticmethod
    def env_name(f: dataclasses.Field) -> str:
        return f.metadata.get("env") or f.name.upper()

    @classmethod
    def set_by(cls, who: str) -> frozenset[str]:
        """Env names of the knobs that ``who`` ("launcher" or "seeds") sets, never a run's config."""
        return frozenset(cls.env_name(f) for f in cls.knobs() if f.metadata.get("set_by") == who)

    @classmethod
    def _lookup(cls) -> dict[str, dataclasses.Field]:
        """Both spellings of each knob (``num_layers`` and ``NUM_LAYERS``) map to it."""
        table: dict[str, dataclasses.Field] = {}
        for f in cls.knobs():
            table[f.name] = f
            table[cls.env_name(f)] = f
        return table

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, strict: bool = True) -> "TrainerConfig":
        """Build from overrides keyed by field or env-var name; validate all of it.

        Raises ConfigError listing every unknown knob, wrong type and out-of-range
        value at once, so a user fixes a spec in one round.
        """
        table = cls._lookup()
        issues: list[ConfigIssue] = []
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            f = table.get(key) if isinstance(key, str) else None
            if f is None:
                if strict:
                    issues.append(ConfigIssue(str(key), raw, "unknown knob"))
                continue
            try:
                kwargs[f.name] = _coerce(f, raw)
                _check_bounds(f, kwargs[f.name])
            except ValueError as exc:
                issues.append(ConfigIssue(cls.env_name(f), raw, str(exc)))
        if issues:
            raise ConfigError(issues)
        stack = kwargs.get("stack", DEFAULT_STACK)
        cfg = cls(**{**cls.preset(stack), "stack": stack, **kwargs})
        cfg.validate()
        return cfg

    @classmethod
    def preset(cls, stack: str) -> dict[str, Any]:
        """The STACK preset's knob defaults, keyed by field name and coerced to each knob's type."""
        table = cls._lookup()
        return {table[k].name: _coerce(table[k], v) for k, v in STACKS[stack].items()}

    @classmethod
    def for_stack(cls, stack: str) -> "TrainerConfig":
        """Every knob at the STACK preset's default."""
        return cls(**{**cls.preset(stack), "stack": stack})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "TrainerConfig":
        """Read every knob whose env-var name is set; other variables are ignored."""
        environ = os.environ if environ is None else environ
        values = {cls.env_name(f): environ[cls.env_name(f)] for f in cls.knobs() if cls.env_name(f) in environ}
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Field-name keyed values (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_env(self) -> dict[str, str]:
        """Env-var form, as `torchrun -m trainer` reads it."""
        out = {}
        for f in self.knobs():
            v = getattr(self, f.name)
            out[self.env_name(f)] = ("1" if v else "0") if isinstance(v, bool) else str(v)
        return out

    def overrides(self) -> dict[str, Any]:
        """STACK (unless the default stack) and the knobs that differ from that stack's defaults, keyed by
        env-var name: from_dict of it gives this config back."""
        default = TrainerConfig.for_stack(self.stack)
        out = {"STACK": self.stack} if self.stack != DEFAULT_STACK else {}
        out.update({self.env_name(f): getattr(self, f.name) for f in self.knobs()
                    if f.name != "stack" and getattr(self, f.name) != getattr(default, f.name)})
        return out

    def validate(self) -> None:
        """Check every bound and the cross-field shape rules; raise ConfigError."""
        issues: list[ConfigIssue] = []
        for f in self.knobs():
            try:
                _check_bounds(f, getattr(self, f.name))
            except ValueError as exc:
                issues.append(ConfigIssue(self.env_name(f), getattr(self, f.name), str(exc)))
        if issues:
            raise ConfigError(issues)

        def bad(name: str, msg: str) -> None:
            issues.append(ConfigIssue(name, getattr(self, name.lower()), msg))

        if self.model_dim % self.num_heads:
            bad("NUM_HEADS", f"must divide MODEL_DIM={self.model_dim}")
        elif self.head_dim % 2:
            bad("NUM_HEADS", f"head dim MODEL_DIM/NUM_HEADS={self.head_dim} must be even")
        elif self.rope_dims > self.head_dim or self.rope_dims % 2:
            bad("ROPE_DIMS", f"must be even and <= head dim {self.head_dim}")
        if self.num_heads % self.num_kv_heads:
            bad("NUM_KV_HEADS", f"must divide NUM_HEADS={self.num_heads}")
        if self.attn_gate == "sparse" and self.gate_window > self.model_dim:
            bad("GATE_WINDOW", f"must be <= MODEL_DIM={self.model_dim}")
        if self.xsa_last_n > self.num_layers:
            bad("XSA_LAST_N", f"must be <= NUM_LAYERS={self.num_layers}")
        if self.train_batch_tokens % self.train_seq_len:
            bad("TRAIN_BATCH_TOKENS", f"must be a multiple of TRAIN_SEQ_LEN={self.train_seq_len}")
        if self.eval_stride > self.eval_seq_len:
            bad("EVAL_STRIDE", f"must be <= EVAL_SEQ_LEN={self.eval_seq_len}")
        if self.caseops_enabled and self.vocab_size != CASEOPS_VOCAB_SIZE:
            bad("CASEOPS_ENABLED", f"needs VOCAB_SIZE={CASEOPS_VOCAB_SIZE} (the CaseOps tokenizer's), not {self.vocab_size}")
        if self.bos_token_id >= self.vocab_size:
            bad("BOS_TOKEN_ID", f"must be < VOCAB_SIZE={self.vocab_size}")
        if self.mlp_hidden < 1:
            bad("MLP_MULT", "gives an MLP hidden width below 1")
        try:
            layers = self.ve_layer_list
        except ValueError:
            bad("VE_LAYERS", "must be comma-separated integers")
        else:
            if any(not 0 <= i < self.num_layers for i in layers) and self.ve_enabled:
                bad("VE_LAYERS", f"each layer must be in [0, {self.num_layers - 1}]")
        # frontier model-side knobs
        if self.num_loops and not self.loop_start <= self.loop_end < self.num_layers:
            bad("LOOP_END", f"must be >= LOOP_START={self.loop_start} and < NUM_LAYERS={self.num_layers} while NUM_LOOPS > 0")
        if self.parallel_start_layer and not self.num_layers // 2 <= self.parallel_start_layer < self.num_layers:
            bad("PARALLEL_START_LAYER", f"must be in the decoder half, [{self.num_layers // 2}, {self.num_layers - 1}]")
        elif self.parallel_start_layer and self.num_loops and self.parallel_start_layer <= self.loop_end:
            # the looped order revisits blocks below LOOP_END after later ones: lanes could not resume
            bad("PARALLEL_START_LAYER", f"must be > LOOP_END={self.loop_end} while NUM_LOOPS > 0")
        if self.fused_ce and self.logit_softcap <= 0:
            bad("FUSED_CE", "needs LOGIT_SOFTCAP > 0 (it is the soft-capped cross-entropy)")
        if self.doc_attention and self.attention_backend == "fa3":
            bad("ATTENTION_BACKEND", "must be auto or sdpa with DOC_ATTENTION (its document mask runs on SDPA)")
        if self.smear_gate and self.smear_gate_kind == "window" and self.gate_window > self.model_dim:
            bad("GATE_WINDOW", f"must be <= MODEL_DIM={self.model_dim} (SMEAR_GATE_KIND=window reads it)")
        if self.skip_gates and not self.unet_skips:
            bad("SKIP_GATES", "needs UNET_SKIPS (they gate the skip connections)")
        if self.muon_ns_coeffs == "polar_express" and self.muon_backend_steps > 5:
            bad("MUON_BACKEND_STEPS", "must be <= 5 with MUON_NS_COEFFS=polar_express (it has 5 iterations' coefficients)")
        if self.qat_enabled and self.min_lr >= self.late_qat_threshold > 0:
            bad("MIN_LR", f"must be < LATE_QAT_THRESHOLD={self.late_qat_threshold} while QAT_ENABLED (the LR scale never falls "
                          "below the floor, so late QAT would never switch on)")
        if self.muon_momentum_warmup_start > self.muon_momentum:
            bad("MUON_MOMENTUM_WARMUP_START", f"must be <= MUON_MOMENTUM={self.muon_momentum}")
        # frontier quantisation knobs (issue 22)
        if self.qat_enabled and self.matrix_bits != 6:
            bad("MATRIX_BITS", "must be 6 while QAT_ENABLED (late QAT fake-quantises to int6)")
        if self.gptq and 0 < self.max_wallclock_seconds <= self.gptq_reserve_seconds:
            bad("GPTQ_RESERVE_SECONDS", f"must be < MAX_WALLCLOCK_SECONDS={self.max_wallclock_seconds} with GPTQ (no time left to train)")
        if self.ttt_mode == "lora_phased" and self.ttt_lora_chunk_tokens > self.eval_seq_len:
            bad("TTT_LORA_CHUNK_TOKENS", f"must be <= EVAL_SEQ_LEN={self.eval_seq_len} (a chunk is scored inside one window)")
        if issues:
            raise ConfigError(issues)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON Schema of the overrides a run spec may carry (keyed by env-var name)."""
        props: dict[str, Any] = {}
        stacks = {stack: cls.for_stack(stack) for stack in STACKS}
        for f in cls.knobs():
            t = _field_type(f)
            prop: dict[str, Any] = {
                "type": {bool: "boolean", int: "integer", float: "number", str: "string"}[t],
                "default": getattr(stacks[DEFAULT_STACK], f.name),  # what a spec without this knob (or STACK) gets
                "description": f.metadata["help"],
                "x-field": f.name,
                "x-group": f.metadata["group"],
            }
            if f.metadata["min"] is not None:
                prop["minimum"] = f.metadata["min"]
            if f.metadata["max"] is not None:
                prop["maximum"] = f.metadata["max"]
            if f.metadata["choices"]:
                prop["enum"] = list(f.metadata["choices"])
            differ = {stack: getattr(c, f.name) for stack, c in stacks.items() if getattr(c, f.name) != prop["default"]}
            if differ and f.name != "stack":  # the default under each STACK preset that changes it
                prop["x-stack-defaults"] = {stack: getattr(c, f.name) for stack, c in stacks.items()}
            props[cls.env_name(f)] = prop
        return {"type": "object", "additionalProperties": False, "properties": props}


# --- the settings an artifact carries (issue 22 item 7) -------------------------------------------
# Enforced: the knobs that shape the model and its quantisation (groups model and artifact), less
# the ones that only pick an implementation. Eval defaults: how the run scored it, which an
# eval-only run may change.
ARTIFACT_SETTING_GROUPS = ("model", "artifact")
NOT_ARTIFACT_SETTINGS = ("attention_backend", "artifact_settings", "stack")
ARTIFACT_EVAL_DEFAULTS = ("eval_seq_len", "val_tokens_limit")


def artifact_settings(cfg: TrainerConfig) -> dict[str, dict[str, Any]]:
    """{"model": enforced knobs, "eval": eval defaults}, keyed by env-var name."""
    fixed, evals = {}, {}
    for f in cfg.knobs():
        name = cfg.env_name(f)
        if f.metadata["group"] in ARTIFACT_SETTING_GROUPS and f.name not in NOT_ARTIFACT_SETTINGS:
            fixed[name] = getattr(cfg, f.name)
        elif (f.metadata["group"] == "eval" or f.name in ARTIFACT_EVAL_DEFAULTS) and f.name != "eval_artifact":
            evals[name] = getattr(cfg, f.name)
    return {"model": fixed, "eval": evals}


def config_for_artifact(values: Mapping[str, Any], settings: Mapping[str, Any] | None) -> TrainerConfig:
    """The config of an eval-only run: the artifact's model and quantisation knobs, its eval
    knobs unless ``values`` (the knobs set for this run) change them, the rest from ``values``.

    Raises ConfigError when the artifact carries no settings, or when ``values`` sets an
    enforced knob to another value than the artifact's (never loaded silently).
    """
    table = TrainerConfig._lookup()
    unknown = [ConfigIssue(str(k), v, "unknown knob") for k, v in values.items() if not (isinstance(k, str) and k in table)]
    if unknown:
        raise ConfigError(unknown)
    own = {table[k].name: v for k, v in values.items()}
    if not settings:
        raise ConfigError([ConfigIssue("EVAL_ARTIFACT", own.get("eval_artifact"), "the artifact carries no settings (it was written "
                                       "without ARTIFACT_SETTINGS=1), so its model shape is unknown; refusing to guess")])
    issues = []
    for env, stored in settings["model"].items():  # each given value on its own: the whole config is the artifact's
        f = table.get(env)
        if f is None or f.name not in own:
            continue
        try:
            value = _coerce(f, own[f.name])
        except ValueError as exc:
            issues.append(ConfigIssue(env, own[f.name], str(exc)))
            continue
        if value != stored:
            issues.append(ConfigIssue(env, value, f"the artifact was written with {env}={stored!r}; eval-only "
                                      f"takes the model and quantisation knobs from the artifact (unset {env} or set it to {stored!r})"))
    if issues:
        raise ConfigError(issues)
    merged = {**settings.get("eval", {}), **own, **settings["model"]}
    return TrainerConfig.from_dict(merged)


_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def _field_type(f: dataclasses.Field) -> type:
    # Annotations are strings under `from __future__ import annotations`.
    return _TYPES[f.type] if isinstance(f.type, str) else f.type


def _coerce(f: dataclasses.Field, raw: Any) -> Any:
    """Turn a JSON/YAML value or an env-var string into the knob's type, strictly:
    a float like 2.5 for an int knob is an error, never silently truncated."""
    t = _field_type(f)
    if t is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        raise ValueError("expected a boolean (true/false or 1/0)")
    if t is int:
        if isinstance(raw, bool):
            raise ValueError("expected an integer, got a boolean")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise ValueError("expected an integer")
    if t is float:
        if isinstance(raw, bool):
            raise ValueError("expected a number, got a boolean")
        if isinstance(raw, (int, float)):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw.strip())
            except ValueError:
                pass
        raise ValueError("expected a number")
    if not isinstance(raw, str):
        raise ValueError("expected a string")
    if len(raw) > 4096:
        raise ValueError("longer than 4096 characters")
    return raw


def _check_bounds(f: dataclasses.Field, value: Any) -> None:
    lo, hi, choices = f.metadata["min"], f.metadata["max"], f.metadata["choices"]
    if choices and value not in choices:
        raise ValueError(f"must be one of {', '.join(map(str, choices))}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if value != value:  # NaN
        raise ValueError("must be a finite number")
    if lo is not None and value < lo:
        raise ValueError(f"must be >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
    if hi is not None and value > hi:
        raise ValueError(f"must be <= {hi}" + (f" and >= {lo}" if lo is not None else ""))
