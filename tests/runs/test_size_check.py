"""The pre-flight artifact estimate (service.runs.size_check) against the real model and quantiser:
the same tensors, stored the same way, for several shapes of the config."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from service.runs import size_check
from service.runs.size_check import ARTIFACT_LIMIT_BYTES, DEFAULT_RATIO, estimate, model_tensors, packed_bytes, storage_kind
from trainer.config import STACKS, TrainerConfig

torch = pytest.importorskip("torch")

SEED = {"STACK": "2026-03-23"}  # the shapes below are written against the seed stack (TrainerConfig())

CONFIGS = [
    {},  # the default stack: 2026-04-27's
    SEED,
    {**SEED, "NUM_LAYERS": 3, "XSA_LAST_N": 1, "MODEL_DIM": 128, "NUM_HEADS": 4, "NUM_KV_HEADS": 2, "BIGRAM_VOCAB_SIZE": 0, "SMEAR_GATE": 0, "UNET_SKIPS": 0},
    {**SEED, "NUM_LAYERS": 4, "MODEL_DIM": 256, "TIE_EMBEDDINGS": 0, "VE_ENABLED": 1, "VE_LAYERS": "2,3", "CONTROL_DTYPE": "fp32", "MLP_MULT": 2.5},
    {**SEED, "NUM_LAYERS": 1, "XSA_LAST_N": 0, "MODEL_DIM": 64, "NUM_HEADS": 2, "NUM_KV_HEADS": 1, "VOCAB_SIZE": 4096},
    # the 2026-04-27 record's bit widths: int7 embedding, int5 matrices (QAT rounds to int6, so off)
    {**SEED, "NUM_LAYERS": 2, "XSA_LAST_N": 2, "MODEL_DIM": 128, "NUM_HEADS": 4, "NUM_KV_HEADS": 2, "EMBED_BITS": 7, "MATRIX_BITS": 5, "QAT_ENABLED": 0},
    # the 2026-04-27 stack's tensors (loops, parallel lanes, gates), shrunk
    {"STACK": "2026-04-27", "NUM_LAYERS": 6, "XSA_LAST_N": 6, "MODEL_DIM": 128, "NUM_HEADS": 4, "NUM_KV_HEADS": 2, "VOCAB_SIZE": 1024,
     "LOOP_START": 2, "LOOP_END": 3, "PARALLEL_START_LAYER": 4, "LQER_ENABLED": 0},
]


@pytest.mark.parametrize("overrides", CONFIGS)
def test_the_estimate_lists_the_models_tensors_and_their_storage(overrides: dict) -> None:
    from trainer.model import GPT
    from trainer.quant import FrontierQuant, quantize_state_dict

    cfg = TrainerConfig.from_dict(overrides)
    state = GPT(cfg).state_dict()
    assert {t.name: t.shape for t in model_tensors(cfg)} == {name: tuple(v.shape) for name, v in state.items()}
    stored = quantize_state_dict(state, control_dtype=cfg.control_dtype, frontier=FrontierQuant.from_config(cfg))
    assert {t.name: storage_kind(t, cfg) for t in model_tensors(cfg)} == {name: e["kind"] for name, e in stored.items()}


def test_the_seed_stack_fits_and_two_more_layers_do_not() -> None:
    seed_stack = estimate(TrainerConfig(), [], [])
    assert seed_stack.ratio == DEFAULT_RATIO and seed_stack.problem() is None and seed_stack.total_bytes < ARTIFACT_LIMIT_BYTES
    bigger = estimate(TrainerConfig.from_dict({**SEED, "NUM_LAYERS": 13}), [], [])
    assert bigger.over_by > 0 and f"{bigger.over_by:,} over" in (bigger.problem() or "")
    # A team whose runs compress to 60% of the packed size fits 13 layers.
    assert estimate(TrainerConfig.from_dict({**SEED, "NUM_LAYERS": 13}), [0.6, 0.55, 0.65], [60_000]).problem() is None
    assert packed_bytes(TrainerConfig.from_dict({**SEED, "NUM_LAYERS": 13})) > packed_bytes(TrainerConfig())


def test_the_2026_04_27_stack_is_estimated_within_3_percent_of_the_records_artifact() -> None:
    # records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611/train_seed42.log:
    # "Total submission size quantized+pergroup: 15897259 bytes"
    record = estimate(TrainerConfig.from_dict({"STACK": "2026-04-27"}), [], [])
    assert abs(record.total_bytes / 15_897_259 - 1) < 0.03 and record.problem() is None
    assert round(record.ratio, 3) == 0.575  # pergroup/lrzip: int6 0.570, int7 0.600
    assert estimate(TrainerConfig.from_dict({}), [], []) == record  # the default stack: a spec without STACK fits
    wider = estimate(TrainerConfig.from_dict({"STACK": "2026-04-27", "MODEL_DIM": 576}), [], [])
    assert wider.over_by > 0 and "16,000,000-byte limit" in (wider.problem() or "")


@pytest.mark.parametrize("overrides", CONFIGS + [{"STACK": stack} for stack in STACKS])
def test_the_packed_size_reads_only_the_size_knobs_it_is_kept_by(overrides: dict) -> None:
    """packed_by_kind is kept per process by SIZE_KNOBS (the model and artifact groups): a knob of another group
    that changed the size would get a stale figure, so the walk of the model must read none."""
    read: set[str] = set()

    class Recording(TrainerConfig):
        def __getattribute__(self, name: str) -> Any:
            read.add(name)
            return super().__getattribute__(name)

    cfg = TrainerConfig.from_dict(overrides)
    recording = Recording(**{f.name: getattr(cfg, f.name) for f in fields(TrainerConfig)})
    read.clear()  # what building it read
    assert size_check._packed_by_kind(recording) == size_check.packed_by_kind(cfg)
    knobs = {f.name for f in fields(TrainerConfig)}
    assert read & knobs and (read & knobs) <= set(size_check.SIZE_KNOBS), sorted((read & knobs) - set(size_check.SIZE_KNOBS))


def test_a_learning_rate_sweep_shares_one_packed_size_and_a_shape_change_does_not() -> None:
    base = TrainerConfig.from_dict({"NUM_LAYERS": 11})
    lr = TrainerConfig.from_dict({"NUM_LAYERS": 11, "MATRIX_LR": 0.04, "WARMDOWN_ITERS": 100, "TTT_LR": 0.01})
    assert repr(tuple(getattr(lr, k) for k in size_check.SIZE_KNOBS)) == repr(tuple(getattr(base, k) for k in size_check.SIZE_KNOBS))
    assert size_check.packed_by_kind(lr) == size_check._packed_by_kind(lr)
    for change in ({"NUM_LAYERS": 12, "XSA_LAST_N": 12}, {"MATRIX_BITS": 5}, {"VOCAB_SIZE": 4096}):
        other = TrainerConfig.from_dict({"NUM_LAYERS": 11, **change})
        assert size_check.packed_by_kind(other) == size_check._packed_by_kind(other) != size_check.packed_by_kind(base)
