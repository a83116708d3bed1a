"""The artifact is enough (issue 22 item 7): it carries its model and quantisation knobs, and an
eval-only run of the bundled script loads it alone and reproduces the run's val_bpb bit for bit;
a knob set otherwise than the artifact's is refused."""

from __future__ import annotations

import json
import sys

import pytest
from test_train import TINY, corpus_knobs, run_trainer

from trainer.config import ConfigError, TrainerConfig, artifact_settings, config_for_artifact
from trainer.quant import unpack_artifact_with_settings
from trainer.train import ARTIFACT_NAME, CODE_NAME

# TINY, wide enough (128, MLP 5x) that the embedding and MLP matrices are quantised, with the
# record's quantiser and compressor on, so the artifact's settings really steer the load.
FRONTIER = {**TINY, "MODEL_DIM": 128, "MLP_MULT": 5, "ARTIFACT_SETTINGS": 1, "GPTQ": 1, "GPTQ_CALIBRATION_BATCHES": 2,
            "EMBED_BITS": 7, "LQER_ENABLED": 1, "LQER_TOP_K": 2, "ARTIFACT_CODEC": "pergroup", "MLP_CLIP_SIGMAS": 11.5}


def test_settings_of_an_artifact_decide_the_eval_config_and_a_mismatch_is_refused():
    run = TrainerConfig.from_dict({"STACK": "2026-03-23", "NUM_LAYERS": 5, "EMBED_BITS": 7, "EVAL_STRIDE": 32, "OUTPUT_DIR": "/tmp/run"})
    settings = json.loads(json.dumps(artifact_settings(run)))  # as the artifact's JSON header stores them
    assert "NUM_LAYERS" in settings["model"] and "EMBED_BITS" in settings["model"] and "EVAL_STRIDE" in settings["eval"]
    assert "OUTPUT_DIR" not in settings["model"] and "ATTENTION_BACKEND" not in settings["model"]
    cfg = config_for_artifact({"EVAL_ARTIFACT": "a.ptz", "NUM_LAYERS": "5", "eval_stride": 16}, settings)
    assert (cfg.num_layers, cfg.embed_bits, cfg.eval_stride, cfg.output_dir) == (5, 7, 16, TrainerConfig.output_dir)
    with pytest.raises(ConfigError) as exc:
        config_for_artifact({"EVAL_ARTIFACT": "a.ptz", "NUM_LAYERS": 4, "EMBED_BITS": 8}, settings)
    assert [i.field for i in exc.value.issues] == ["NUM_LAYERS", "EMBED_BITS"]
    assert "the artifact was written with NUM_LAYERS=5" in str(exc.value)
    with pytest.raises(ConfigError, match="carries no settings"):
        config_for_artifact({"EVAL_ARTIFACT": "a.ptz"}, None)


def test_eval_only_from_the_artifact_alone_reproduces_the_runs_val_bpb(smoke_corpus, tmp_path):
    out = tmp_path / "run"
    knobs = {**FRONTIER, **corpus_knobs(smoke_corpus), "OUTPUT_DIR": str(out)}
    trained = run_trainer([sys.executable, "-m", "trainer"], knobs)
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    blob = (out / ARTIFACT_NAME).read_bytes()
    obj, settings = unpack_artifact_with_settings(blob)
    assert blob[:4] == b"PGRP" and settings["model"]["EMBED_BITS"] == 7 and settings["model"]["MODEL_DIM"] == 128
    assert obj["tok_emb.weight"]["kind"] == "int7" and sum("la" in e for e in obj.values()) == 2

    # the bundled script the run wrote, the artifact, the data: no model knob given
    alone = {**corpus_knobs(smoke_corpus), "EVAL_ARTIFACT": str(out / ARTIFACT_NAME), "OUTPUT_DIR": str(out)}
    evaluated = run_trainer([sys.executable, str(out / CODE_NAME)], alone, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads((out / "eval_result.json").read_text())
    assert again["status"] == "succeeded"
    assert again["val_bpb"] == result["val_bpb"] and again["pre_ttt_bpb"] == result["pre_ttt_bpb"]
    assert again["val_loss"] == result["val_loss"] and again["val_tokens_scored"] == result["val_tokens_scored"]
    assert json.loads((out / "result.json").read_text()) == result  # the run's own files are untouched

    # a knob that disagrees with the artifact is refused, with a line that says which and why
    refused = run_trainer([sys.executable, "-m", "trainer"], {**alone, "NUM_LAYERS": 3})
    assert refused.returncode == 2
    assert "NUM_LAYERS=3" in refused.stderr and "the artifact was written with NUM_LAYERS=2" in refused.stderr
    assert json.loads((out / "eval_result.json").read_text())["status"] == "failed"
    assert json.loads((out / "result.json").read_text()) == result


def test_gptq_on_two_ranks_quantises_alike_and_the_artifact_scores_the_same_alone(smoke_corpus, tmp_path):
    # ~30 s: a 2-rank torchrun (gloo). Each rank calibrates on its own share of the training data; the
    # Hessians are averaged so both ranks build the same artifact. Were they not, rank 1 would score
    # another model than the artifact rank 0 wrote, and the single-process eval below would disagree.
    out = tmp_path / "ddp"
    knobs = {**FRONTIER, **corpus_knobs(smoke_corpus), "OUTPUT_DIR": str(out), "GRAD_ACCUM_STEPS": 1, "TTT_ENABLED": 0,
             "EVAL_STRIDE": 0}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer"]
    proc = run_trainer(cmd, knobs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and "gptq_calibration_time" in (out / "train.log").read_text()
    alone = {**corpus_knobs(smoke_corpus), "EVAL_ARTIFACT": str(out / ARTIFACT_NAME), "OUTPUT_DIR": str(out)}
    evaluated = run_trainer([sys.executable, "-m", "trainer"], alone)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads((out / "eval_result.json").read_text())
    assert again["val_tokens_scored"] == result["val_tokens_scored"]
    assert again["val_bpb"] == pytest.approx(result["val_bpb"], abs=1e-9)  # two ranks sum in another order
