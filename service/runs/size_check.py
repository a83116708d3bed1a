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
  SUCCEEDED trainer runs on the track), else DEFAULT_RATIO;
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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.models import Run
from service.runs.status import RunStatus
from trainer.config import ARTIFACT_LIMIT_BYTES, CONTROL_TENSOR_PATTERNS, QUANT_SMALL_NUMEL, ConfigError, TrainerConfig

SIZE_CHECKED_TRACK = "10min_16mb"
DEFAULT_RATIO = 0.70
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
        out.append(Tensor("smear.gate", (d,)))
    for i in range(cfg.num_layers):
        b = f"blocks.{i}."
        out += [
            Tensor(b + "attn.c_q.weight", (d, d)), Tensor(b + "attn.c_k.weight", (kv, d)), Tensor(b + "attn.c_v.weight", (kv, d)),
            Tensor(b + "attn.proj.weight", (d, d)), Tensor(b + "attn.q_gain", (cfg.num_heads,)),
            Tensor(b + "mlp.up.weight", (cfg.mlp_hidden, d)), Tensor(b + "mlp.down.weight", (d, cfg.mlp_hidden)),
            Tensor(b + "resid_mix", (2, d)), Tensor(b + "attn_scale", (d,)), Tensor(b + "mlp_scale", (d,)),
        ]  # fmt: skip
    ve_layers = len(cfg.ve_layer_list) if cfg.ve_enabled else 0
    if ve_layers:
        out += [Tensor("ve.table.weight", (cfg.vocab_size, cfg.ve_dim)), Tensor("ve.proj.weight", (kv, cfg.ve_dim)), Tensor("ve.ve_scale", (ve_layers,))]
    if cfg.unet_skips and cfg.num_layers // 2:
        out.append(Tensor("skip_weights", (cfg.num_layers // 2, d)))
    if not cfg.tie_embeddings:
        out.append(Tensor("lm_head.weight", (cfg.vocab_size, d)))
    return out


def storage_kind(t: Tensor, cfg: TrainerConfig) -> str:
    """How the artifact stores ``t`` (trainer/quant.py's quantize_state_dict): "int<bits>",
    "fp16" or "fp32"."""
    if len(t.shape) < 2 or any(p in t.name for p in CONTROL_TENSOR_PATTERNS):
        return cfg.control_dtype
    if t.numel > QUANT_SMALL_NUMEL:
        return f"int{cfg.embed_bits if 'tok_emb' in t.name else cfg.matrix_bits}"
    return "fp16"


def _bits(kind: str) -> int:
    return int(kind.removeprefix("int").removeprefix("fp"))


def packed_bytes(cfg: TrainerConfig) -> int:
    """Bytes of the quantised tensors at their bit widths (plus an fp16 scale per quantised row), before compression."""
    bits = 0
    for t in model_tensors(cfg):
        kind = storage_kind(t, cfg)
        bits += t.numel * _bits(kind) + (t.shape[0] * 16 if kind.startswith("int") else 0)
    return bits // 8


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
        source = f"the median of your team's {self.ratio_measured_on} finished runs" if self.ratio_measured_on else "the default, no finished run to measure"
        return (f"the artifact is estimated at {self.total_bytes:,} bytes, {self.over_by:,} over the {ARTIFACT_LIMIT_BYTES:,}-byte limit "
                f"({self.packed_bytes:,} bytes of quantised weights x compression {self.ratio:.2f} ({source}) + {self.code_bytes:,} bytes of code)")  # fmt: skip


def estimate(cfg: TrainerConfig, ratios: list[float], code_sizes: list[int]) -> SizeEstimate:
    """The artifact estimate of ``cfg`` with the team's measured ratios and code sizes (empty: the defaults)."""
    ratio = statistics.median(ratios) if ratios else DEFAULT_RATIO
    code = round(statistics.median(code_sizes)) if code_sizes else DEFAULT_CODE_BYTES
    return SizeEstimate(packed_bytes(cfg), ratio, len(ratios), code)


# --- I/O -------------------------------------------------------------------------------------
def measured(session: Session, team_id: int) -> tuple[list[float], list[int]]:
    """Compression ratios (model_bytes / packed bytes) and code sizes of the team's latest finished trainer runs on the track.

    The team's figures are kept per process and keyed by its latest SUCCEEDED run (one
    index lookup): they change only when a run of the team succeeds, so a submit reads
    that id, not the team's history (the sample's query scanned a 40,000-run team's
    history when few of its runs qualify: 40 ms, 45% of a submit).
    """
    # Its id and times: a database emptied and refilled (tests) can reuse ids.
    latest_row = session.execute(
        select(Run.id, Run.submitted_at, Run.finished_at).where(Run.team_id == team_id, Run.status == RunStatus.SUCCEEDED.value).order_by(Run.id.desc()).limit(1)
    ).first()
    latest = tuple(latest_row) if latest_row is not None else None
    key = (session.get_bind().engine.url.render_as_string(hide_password=True), team_id)
    known = _team_figures.get(key)
    if known is not None and known[0] == latest:
        return known[1]
    figures = _measure(session, team_id)
    _team_figures[key] = (latest, figures)
    while len(_team_figures) > _PACKED_CACHE_MAX:
        _team_figures.pop(next(iter(_team_figures)), None)
    return figures


# (database, team id) -> (the team's latest SUCCEEDED run (id, submitted_at, finished_at) when measured, its figures)
_team_figures: dict[tuple[str, int], tuple[tuple[Any, ...] | None, tuple[list[float], list[int]]]] = {}


def _measure(session: Session, team_id: int) -> tuple[list[float], list[int]]:
    rows = session.execute(
        select(Run.id, Run.submitted_at, Run.model_bytes, Run.code_bytes)
        .where(Run.team_id == team_id, Run.track == SIZE_CHECKED_TRACK, Run.status == RunStatus.SUCCEEDED.value, Run.kind == "trainer", Run.model_bytes > 0)
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
            _packed_by_run[(db, run_id, unknown[run_id])] = packed_bytes(cfg) if cfg is not None else None
        while len(_packed_by_run) > _PACKED_CACHE_MAX:
            _packed_by_run.pop(next(iter(_packed_by_run)), None)  # oldest first
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
