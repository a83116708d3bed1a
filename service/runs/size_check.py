"""Pre-flight size check: will a config's artifact fit the 16,000,000-byte limit?

Before a ``10min_16mb`` spec is queued, its artifact is estimated from the
trainer's config alone (no torch):

* the model's tensors, from the config's shape knobs, each stored as the
  artifact stores it (trainer/quant.py): matrices over 65,536 values as int6
  per row (the token embedding int8), with an fp16 scale per row; control
  tensors (gates, scales, mixes, any vector) in CONTROL_DTYPE; other small
  tensors in fp16. Their packed size is Σ values x bits / 8;
* x the compression ratio the codec achieves on trained weights: measured on
  the team's finished runs (the median of model_bytes / packed bytes of its
  SUCCEEDED trainer runs on the track), else the codec's ratio for each storage
  kind (CODEC_RATIOS: ARTIFACT_CODEC, PERGROUP_BACKEND and bit width);
* + the code: the median code_bytes of those runs, else DEFAULT_CODE_BYTES.

DEFAULT_RATIO (0.70) is below the ~0.79 of full-length trained records
(15.9 MB from ~20 MB packed), so the check refuses only what will not fit
even with better compression than records get: a refusal should be certain.
``allow_noncompliant: true`` runs such a spec anyway (its results never count
for the track), as for the track's other rules.

Everything above ``measured_ratio`` is pure.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, fields as dataclass_fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, bindparam, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from service.core.models import TRAINER_KIND, Run
from service.core.status import RunStatus
from service.runs.compliance import RECORD_TRACK
from trainer.config import ARTIFACT_LIMIT_BYTES, CONTROL_TENSOR_PATTERNS, QUANT_SMALL_NUMEL, ConfigError, TrainerConfig

SIZE_CHECKED_TRACK = RECORD_TRACK
K = TypeVar("K")
V = TypeVar("V")
DEFAULT_RATIO = 0.70
# compressed / packed bytes by codec ("lzma", "zstd", "brotli", "pergroup/<PERGROUP_BACKEND>") and storage kind;
# a kind not listed takes DEFAULT_RATIO. Sources:
# * lzma, zstd, brotli: DEFAULT_RATIO for every kind (the 2026-03-23 stack's estimate, unchanged).
# * pergroup/lrzip: the 2026-04-27 record (records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_
#   9HpStack_1.0611/train_seed42.log): 15,865,260 model bytes ("Serialized model quantized+pergroup") for
#   35,945,671 params, whose packed bytes here are int6 23,879,680 + int7 3,686,400 + fp16 51,376 (+ ~1 kB int8
#   gate rows): 0.574 overall. Split by bit width with the entropy of an SDClip grid (std(q) = qmax/k;
#   H = log2(std(q)·sqrt(2πe))): int6 at k 11.5 (MLP) / 13 (attn) 3.43 bits of 6, int7 at k 14 4.22 bits of 7,
#   so int7/int6 = 0.603/0.572 = 1.054; fp16 0.87 (bench/results/artifact_anatomy_600.md: blocks.*.resid_mix,
#   19,680 of 22,528 bytes), int8 gate rows 1.0. Solving 15,865,260 = r6·23,879,680 + 1.054·r6·3,686,400 + 0.87·51,376
#   gives r6 0.570, r7 0.600. LQER factors (rank 4, 3 matrices, ~3 kB) are left to the rounding.
# * pergroup/brotli: the same record's base with COMPRESSOR=brotli (records/.../2026-04-27_SmearGateBOSFix_
#   PR1787Base_LQERAsym_PhasedTTT/train_seed42.log: 15,920,836 bytes, same params and bit widths) is 1.0035x the
#   lrzip figure; caddie's per-group brotli lies between the two (the record's README: lrzip saves ~280 kB over
#   whole-blob brotli of its layout), so the lrzip ratios x 1.0035, an upper bound.
CODEC_RATIOS: dict[str, dict[str, float]] = {
    "pergroup/lrzip": {"int6": 0.570, "int7": 0.600, "int8": 1.0, "fp16": 0.87, "fp32": 0.87},
    "pergroup/brotli": {"int6": 0.572, "int7": 0.602, "int8": 1.0, "fp16": 0.87, "fp32": 0.87},
}
DEFAULT_CODE_BYTES = 80_000
# The measured ratio uses at most this many of the team's latest finished runs.
RATIO_SAMPLE = 20


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def model_tensors(cfg: TrainerConfig) -> list[Tensor]:
    """The tensors of trainer.model.GPT(cfg)'s state dict, by name and shape (tests check it against the model)."""
    d, kv = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim
    out = [Tensor("tok_emb.weight", (cfg.vocab_size, d))]
    if cfg.bigram_vocab_size:
        out += [Tensor("bigram.table.weight", (cfg.bigram_vocab_size, cfg.bigram_dim)), Tensor("bigram.proj.weight", (d, cfg.bigram_dim)),
                Tensor("bigram.scale", ())]  # fmt: skip
    if cfg.smear_gate:
        out += [Tensor("smear.gate_w", (cfg.gate_window,)), Tensor("smear.lam", (1,))] if cfg.smear_gate_kind == "window" else [Tensor("smear.gate", (d,))]
    gate_width = {"none": 0, "sparse": cfg.gate_window, "dense": d}[cfg.attn_gate]
    for i in range(cfg.num_layers):
        b = f"blocks.{i}."
        out += [
            Tensor(b + "attn.c_q.weight", (d, d)), Tensor(b + "attn.c_k.weight", (kv, d)), Tensor(b + "attn.c_v.weight", (kv, d)),
            Tensor(b + "attn.proj.weight", (d, d)), Tensor(b + "attn.q_gain", (cfg.num_heads,)),
            Tensor(b + "mlp.up.weight", (cfg.mlp_hidden, d)), Tensor(b + "mlp.down.weight", (d, cfg.mlp_hidden)),
            Tensor(b + "resid_mix", (2, d)), Tensor(b + "attn_scale", (d,)), Tensor(b + "mlp_scale", (d,)),
        ]  # fmt: skip
        if gate_width:
            out.append(Tensor(b + "attn.attn_gate_w", (cfg.num_heads, gate_width)))
        if cfg.parallel_start_layer and i >= cfg.parallel_start_layer:
            out += [Tensor(b + "lane_resid", (2,)), Tensor(b + "lane_post", (4,))]
    ve_layers = len(cfg.ve_layer_list) if cfg.ve_enabled else 0
    if ve_layers:
        out += [Tensor("ve.table.weight", (cfg.vocab_size, cfg.ve_dim)), Tensor("ve.proj.weight", (kv, cfg.ve_dim)), Tensor("ve.ve_scale", (ve_layers,))]
    skips = _num_skips(cfg)
    if skips:
        out.append(Tensor("skip_weights", (skips, d)))
        if cfg.skip_gates:
            out.append(Tensor("skip_gates", (skips * d,)))
    if not cfg.tie_embeddings:
        out.append(Tensor("lm_head.weight", (cfg.vocab_size, d)))
    return out


def _num_skips(cfg: TrainerConfig) -> int:
    """U-Net skips: the shorter half of the looped block order (trainer.model.block_order)."""
    if not cfg.unet_skips:
        return 0
    n = cfg.num_layers + (cfg.num_loops * (cfg.loop_end - cfg.loop_start + 1) if cfg.num_loops else 0)
    return n // 2


def storage_kind(t: Tensor, cfg: TrainerConfig) -> str:
    """How the artifact stores ``t`` (trainer/quant.py's quantize_state_dict): "int<bits>",
    "fp16" or "fp32"."""
    if cfg.attn_gate_int8 and len(t.shape) == 2 and t.name.endswith(".attn_gate_w") and 32 <= t.numel <= 8192:
        return "int8"  # trainer/quant.py's is_gate_row_tensor
    if len(t.shape) < 2 or any(p in t.name for p in CONTROL_TENSOR_PATTERNS):
        return cfg.control_dtype
    if t.numel > QUANT_SMALL_NUMEL:
        return f"int{cfg.embed_bits if 'tok_emb' in t.name else cfg.matrix_bits}"
    return "fp16"


def _bits(kind: str) -> int:
    return int(kind.removeprefix("int").removeprefix("fp"))


# The knob groups the artifact's size depends on: the model's shape and how the artifact stores it. Learning
# rates, schedules, averaging, evaluation and data never change it (tests/runs/test_size_check.py checks that
# packed_by_kind reads nothing else), so the sweep of a learning rate costs one walk of the model, not one per submit.
SIZE_GROUPS = ("model", "artifact")
SIZE_KNOBS = tuple(f.name for f in dataclass_fields(TrainerConfig) if f.metadata.get("group", "model") in SIZE_GROUPS)
_PACKED_BY_SHAPE_MAX = 4096
_packed_by_shape: dict[str, dict[str, int]] = {}  # repr of a config's SIZE_KNOBS values -> packed_by_kind


def packed_by_kind(cfg: TrainerConfig) -> dict[str, int]:
    """Bytes of the quantised tensors by storage kind at their bit widths (plus an fp16 scale per quantised row), before compression.

    Kept per process by the config's size knobs: walking every tensor (~0.35 ms) was a tenth of a submit's CPU."""
    key = repr(tuple(getattr(cfg, name) for name in SIZE_KNOBS))
    known = _packed_by_shape.get(key)
    if known is None:
        known = _keep(_packed_by_shape, key, _packed_by_kind(cfg), _PACKED_BY_SHAPE_MAX)
    return dict(known)


def _keep(cache: dict[K, V], key: K, value: V, most: int) -> V:
    """Store ``value`` under ``key`` in a per-process cache of at most ``most`` entries (the oldest go first); ``value``."""
    cache[key] = value
    while len(cache) > most:
        cache.pop(next(iter(cache)), None)
    return value


def _packed_by_kind(cfg: TrainerConfig) -> dict[str, int]:
    bits: dict[str, int] = {}
    for t in model_tensors(cfg):
        kind = storage_kind(t, cfg)
        bits[kind] = bits.get(kind, 0) + t.numel * _bits(kind) + (t.shape[0] * 16 if kind.startswith("int") else 0)
    return {kind: b // 8 for kind, b in bits.items()}


def packed_bytes(cfg: TrainerConfig) -> int:
    """Bytes of the quantised tensors at their bit widths (plus an fp16 scale per quantised row), before compression."""
    return sum(packed_by_kind(cfg).values())


def codec_ratio(cfg: TrainerConfig, by_kind: dict[str, int] | None = None) -> float:
    """The compression ratio of ``cfg``'s codec on its packed bytes (CODEC_RATIOS, weighted by storage kind);
    ``by_kind``: ``packed_by_kind(cfg)`` if the caller has it."""
    codec = f"pergroup/{cfg.pergroup_backend}" if cfg.artifact_codec == "pergroup" else cfg.artifact_codec
    ratios = CODEC_RATIOS.get(codec, {})
    by_kind = packed_by_kind(cfg) if by_kind is None else by_kind
    total = sum(by_kind.values())
    return sum(n * ratios.get(kind, DEFAULT_RATIO) for kind, n in by_kind.items()) / total if total else DEFAULT_RATIO


@dataclass(frozen=True)
class SizeEstimate:
    packed_bytes: int
    ratio: float
    ratio_measured_on: int  # runs the ratio comes from (0: the default)
    code_bytes: int

    @property
    def total_bytes(self) -> int:
        return round(self.packed_bytes * self.ratio) + self.code_bytes

    @property
    def over_by(self) -> int:
        return self.total_bytes - ARTIFACT_LIMIT_BYTES

    def problem(self) -> str | None:
        """Why the artifact cannot fit, with the figures; None if it may."""
        if self.over_by <= 0:
            return None
        source = f"the median of your team's {self.ratio_measured_on} finished runs" if self.ratio_measured_on else "the default for its codec, no finished run to measure"
        return (f"the artifact is estimated at {self.total_bytes:,} bytes, {self.over_by:,} over the {ARTIFACT_LIMIT_BYTES:,}-byte limit "
                f"({self.packed_bytes:,} bytes of quantised weights x compression {self.ratio:.2f} ({source}) + {self.code_bytes:,} bytes of code)")  # fmt: skip


def estimate(cfg: TrainerConfig, ratios: list[float], code_sizes: list[int]) -> SizeEstimate:
    """The artifact estimate of ``cfg`` with the team's measured ratios and code sizes (empty: the defaults)."""
    by_kind = packed_by_kind(cfg)  # once: it walks every tensor of the model (~0.35 ms), and a submit runs this
    ratio = statistics.median(ratios) if ratios else codec_ratio(cfg, by_kind)
    code = round(statistics.median(code_sizes)) if code_sizes else DEFAULT_CODE_BYTES
    return SizeEstimate(sum(by_kind.values()), ratio, len(ratios), code)


# --- I/O -------------------------------------------------------------------------------------
def measured(session: Session, team_id: int) -> tuple[list[float], list[int]]:
    """Compression ratios (model_bytes / packed bytes) and code sizes of the team's latest finished trainer runs on the track.

    The team's figures are kept per process and keyed by its latest SUCCEEDED run (one
    index lookup): they change only when a run of the team succeeds, so a submit reads
    that id, not the team's history (the sample's query scanned a 40,000-run team's
    history when few of its runs qualify: 40 ms, 45% of a submit).
    """
    latest_row = session.execute(_LATEST_SUCCESS, {"team_id": team_id}).first()
    return measured_as_of(session, team_id, tuple(latest_row) if latest_row is not None else None)


def latest_success_of(team_id: ColumnElement[int] | InstrumentedAttribute[int]) -> list[ColumnElement[Any]]:
    """The team's latest SUCCEEDED run (id, submitted_at, finished_at) as three columns (scalar subqueries,
    each one index lookup) of a query that reads the team: ``measured_as_of``'s ``latest`` comes with the team."""
    latest = select(Run).where(Run.team_id == team_id, Run.status == RunStatus.SUCCEEDED.value).order_by(Run.id.desc()).limit(1)
    return [latest.with_only_columns(c).scalar_subquery().label(f"latest_success_{c.key}") for c in (Run.id, Run.submitted_at, Run.finished_at)]


def measured_as_of(session: Session, team_id: int, latest: tuple[Any, ...] | None) -> tuple[list[float], list[int]]:
    """``measured``, the team's latest SUCCEEDED run (id, submitted_at, finished_at; None: none) read by the caller."""
    # Its id and times: a database emptied and refilled (tests) can reuse ids.
    latest = latest if latest is not None and latest[0] is not None else None
    key = (session.get_bind().engine.url.render_as_string(hide_password=True), team_id)
    known = _team_figures.get(key)
    if known is not None and known[0] == latest:
        return known[1]
    return _keep(_team_figures, key, (latest, _measure(session, team_id)), _PACKED_CACHE_MAX)[1]


# Built once with a bound team id (SQLAlchemy reuses its compiled form): every submit asks.
_LATEST_SUCCESS = (
    select(Run.id, Run.submitted_at, Run.finished_at)
    .where(Run.team_id == bindparam("team_id"), Run.status == RunStatus.SUCCEEDED.value)
    .order_by(Run.id.desc())
    .limit(1)
)

# (database, team id) -> (the team's latest SUCCEEDED run (id, submitted_at, finished_at) when measured, its figures)
_team_figures: dict[tuple[str, int], tuple[tuple[Any, ...] | None, tuple[list[float], list[int]]]] = {}


def _measure(session: Session, team_id: int) -> tuple[list[float], list[int]]:
    rows = session.execute(
        select(Run.id, Run.submitted_at, Run.model_bytes, Run.code_bytes)
        .where(Run.team_id == team_id, Run.track == SIZE_CHECKED_TRACK, Run.status == RunStatus.SUCCEEDED.value, Run.kind == TRAINER_KIND, Run.model_bytes > 0)
        .order_by(Run.id.desc())
        .limit(RATIO_SAMPLE)
    ).all()  # fmt: skip
    # A finished run's spec never changes: its packed size is parsed once per process, not per submit
    # (re-parsing 20 configs was 4 ms of CPU on every submit).
    db = session.get_bind().engine.url.render_as_string(hide_password=True)
    unknown = {run_id: at for run_id, at, _, _ in rows if (db, run_id, at) not in _packed_by_run}
    if unknown:
        for run_id, spec in session.execute(select(Run.id, Run.spec).where(Run.id.in_(unknown))):
            cfg = _config_or_none(spec)
            _keep(_packed_by_run, (db, run_id, unknown[run_id]), packed_bytes(cfg) if cfg is not None else None, _PACKED_CACHE_MAX)
    ratios, codes = [], []
    for run_id, at, model_bytes, code_bytes in rows:
        packed = _packed_by_run.get((db, run_id, at))
        if packed is not None and model_bytes is not None:
            ratios.append(model_bytes / max(1, packed))
        if code_bytes:
            codes.append(int(code_bytes))
    return ratios, codes


_PACKED_CACHE_MAX = 100_000
_packed_by_run: dict[tuple[str, int, datetime], int | None] = {}  # (database, run id, submitted) -> packed bytes; None: no parsable config


def _config_or_none(spec: Mapping[str, Any] | None) -> TrainerConfig | None:
    try:
        return TrainerConfig.from_dict(dict(spec or {}))
    except ConfigError:  # a config the trainer no longer accepts tells nothing about compression
        return None
