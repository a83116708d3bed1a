"""The trainer config is the run spec's schema: defaults, parsing and errors."""

import subprocess
import sys

import pytest

from trainer.config import ConfigError, TrainerConfig


def test_defaults_are_the_seed_stack():
    cfg = TrainerConfig()
    cfg.validate()
    assert (cfg.num_layers, cfg.model_dim, cfg.num_heads, cfg.num_kv_heads) == (11, 512, 8, 4)
    assert cfg.mlp_hidden == 1536 and cfg.head_dim == 64
    assert cfg.xsa_last_n == 4 and cfg.bigram_vocab_size == 2048
    assert cfg.train_batch_tokens == 786_432 and cfg.ttt_chunk_tokens == 32_768
    assert cfg.ttt_enabled and cfg.ema_enabled and cfg.zstd_level == 22


def test_imports_without_torch():
    code = "import sys, trainer.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_env_and_dict_spellings_agree():
    a = TrainerConfig.from_env({"STACK": "2026-03-23", "NUM_LAYERS": "4", "XSA_LAST_N": "2", "TTT_ENABLED": "0", "PATH": "/bin"})
    b = TrainerConfig.from_dict({"stack": "2026-03-23", "num_layers": 4, "xsa_last_n": 2, "ttt_enabled": False})
    assert a == b
    assert a.overrides() == {"STACK": "2026-03-23", "NUM_LAYERS": 4, "XSA_LAST_N": 2, "TTT_ENABLED": False}
    assert TrainerConfig.from_env(a.to_env()) == a


def test_errors_name_field_value_and_limit():
    with pytest.raises(ConfigError) as exc:
        TrainerConfig.from_dict({"NUM_LAYERS": 200, "NO_SUCH_KNOB": 1, "MODEL_DIM": "wide", "SEED": 2.5})
    issues = {i.field: i for i in exc.value.issues}
    assert set(issues) == {"NUM_LAYERS", "NO_SUCH_KNOB", "MODEL_DIM", "SEED"}
    assert "<= 64" in issues["NUM_LAYERS"].message
    assert issues["NO_SUCH_KNOB"].message == "unknown knob"
    assert "integer" in issues["MODEL_DIM"].message and "integer" in issues["SEED"].message


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"NUM_HEADS": 7}, "NUM_HEADS"),
        ({"NUM_KV_HEADS": 3}, "NUM_KV_HEADS"),
        ({"XSA_LAST_N": 12}, "XSA_LAST_N"),
        ({"TRAIN_BATCH_TOKENS": 1000}, "TRAIN_BATCH_TOKENS"),
        ({"ROPE_DIMS": 80}, "ROPE_DIMS"),
        ({"MLP_ACTIVATION": "gelu"}, "MLP_ACTIVATION"),
        ({"VE_ENABLED": True, "VE_LAYERS": "3,11"}, "VE_LAYERS"),
    ],
)
def test_inconsistent_shapes_are_rejected(overrides, field):
    with pytest.raises(ConfigError) as exc:
        TrainerConfig.from_dict(overrides)
    assert field in [i.field for i in exc.value.issues]


def test_json_schema_covers_every_knob():
    schema = TrainerConfig.json_schema()
    assert set(schema["properties"]) == {TrainerConfig.env_name(f) for f in TrainerConfig.knobs()}
    assert schema["properties"]["NUM_LAYERS"]["maximum"] == 64
    assert schema["properties"]["MLP_ACTIVATION"]["enum"] == ["leaky_relu2", "relu2"]
