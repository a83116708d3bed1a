"""The training run: schedule, batch split, artifact accounting, and whole runs end to end."""

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from trainer.bundle import bundled_source
from trainer.config import ARTIFACT_LIMIT_BYTES, ConfigError, TrainerConfig
from trainer.model import GPT
from trainer.quant import dequantize, unpack_artifact
from trainer.train import RESULT_KEYS, StepClock, artifact_accounting, calibration_reserve, content_fingerprint, grad_accum_for, lr_scale_at, train

REPO = Path(__file__).resolve().parents[2]

# 2 layers, dim 64, seq 64, batch 8 x 64 tokens: every feature of the stack on, a few steps.
TINY = {"STACK": "2026-03-23", "NUM_LAYERS": 2, "MODEL_DIM": 64, "NUM_HEADS": 4, "NUM_KV_HEADS": 2, "TRAIN_SEQ_LEN": 64, "EVAL_SEQ_LEN": 64,
        "TRAIN_BATCH_TOKENS": 512, "GRAD_ACCUM_STEPS": 2, "ITERATIONS": 8, "WARMUP_STEPS": 1, "WARMDOWN_ITERS": 4,
        "MAX_WALLCLOCK_SECONDS": 0, "XSA_LAST_N": 1, "BIGRAM_VOCAB_SIZE": 128, "BIGRAM_DIM": 16, "ROPE_DIMS": 8,
        "VE_ENABLED": 1, "VE_DIM": 16, "VE_LAYERS": "1", "VAL_TOKENS_LIMIT": 2048, "EVAL_STRIDE": 32,
        "EVAL_BATCH_SEQS": 8, "TTT_CHUNK_TOKENS": 512, "TTT_EPOCHS": 1, "TTT_BATCH_SEQS": 4,
        "TRAIN_LOG_EVERY": 2, "EMA_DECAY": 0.5, "SWA_ENABLED": 1, "SWA_EVERY": 2, "SWA_START_LR_SCALE": 0.6,
        "LATE_QAT_THRESHOLD": 0.4, "ZSTD_LEVEL": 3}


def corpus_knobs(corpus: Path) -> dict:
    return {"DATA_PATH": str(corpus / "datasets" / "fineweb10B_sp1024"),
            "TOKENIZER_PATH": str(corpus / "tokenizers" / "fineweb_1024_bpe.model")}


def run_trainer(cmd: list[str], knobs: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in TrainerConfig().to_env()}
    env.update({k: str(v) for k, v in knobs.items()})
    env["PYTHONPATH"] = str(REPO) if cwd == REPO else ""
    env["OMP_NUM_THREADS"] = "1"  # tiny matrices: threads only add overhead on a shared 2-core machine
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)


# --- pure pieces -----------------------------------------------------------------


def test_a_renamed_copy_has_the_same_fingerprint_and_one_changed_byte_does_not(tmp_path):
    data = bytes(range(256)) * 20_000  # 5 MB: blocks are sampled, not all read
    a, b, c = tmp_path / "fineweb_val_000000.bin", tmp_path / "fineweb_train_000099.bin", tmp_path / "c.bin"
    a.write_bytes(data)
    b.write_bytes(data)
    c.write_bytes(data[:-1] + b"\x00")
    assert content_fingerprint(str(a)) == content_fingerprint(str(b)) != content_fingerprint(str(c))


def test_lr_schedule_is_constant_then_linear_to_zero_by_steps():
    cfg = TrainerConfig(iterations=100, warmdown_iters=20, max_wallclock_seconds=0)
    assert [lr_scale_at(s, 0.0, cfg) for s in (0, 50, 80)] == [1.0, 1.0, 1.0]
    assert lr_scale_at(90, 0.0, cfg) == pytest.approx(0.5)
    assert lr_scale_at(100, 0.0, cfg) == 0.0


def test_wallclock_warmdown_lands_on_the_cap():
    # 100 ms per step, a 60 s cap: 600 steps fit; the warm-down must be the last 200 of them.
    cfg = TrainerConfig(iterations=9000, warmdown_iters=200, max_wallclock_seconds=60)
    scale = [lr_scale_at(s, 100.0 * s, cfg) for s in range(1, 601)]
    assert scale[399 - 1] == 1.0 and scale[450 - 1] == pytest.approx(0.75)
    assert scale[-1] == 0.0 and all(a >= b for a, b in zip(scale, scale[1:]))


def run_capped(cap_ms: float, durations: list[float]) -> tuple[int, float]:
    """Drive StepClock like the loop does, steps taking the given durations: (steps run, clock at the stop)."""
    clock, elapsed, steps = StepClock(cap_ms), 0.0, 0
    while not clock.would_cross(elapsed, synced=clock.near):
        elapsed += durations[steps]
        steps += 1
    return steps, elapsed


def test_capped_loop_stops_before_the_step_that_would_cross_the_cap():
    # 100 ms steps, a 60 s cap: exactly 600 fit; the old check-before-step ran a 601st to 60.1 s.
    assert run_capped(60_000, [100.0] * 1000) == (600, 60_000.0)
    assert run_capped(60_050, [100.0] * 1000) == (600, 60_000.0)
    # jittery steps (95-105 ms): never past the cap, at most one step lost against the ideal
    import random
    rng = random.Random(0)
    for cap in (60_000, 120_000, 3_333):
        durations = [rng.uniform(95, 105) for _ in range(2000)]
        steps, elapsed = run_capped(cap, durations)
        ideal = max(n for n in range(len(durations)) if sum(durations[:n]) <= cap)
        assert elapsed <= cap and steps >= ideal - 1, (cap, steps, ideal)


def test_step_clock_ignores_the_step_that_drains_the_gpu_queue():
    # the host ran ahead: unsynchronised marks every 50 ms, then the first sync waits 300 ms
    clock = StepClock(10_000)
    for t in range(0, 9_000, 50):
        clock.would_cross(float(t))
    assert clock.next_step_ms() == pytest.approx(50.0)
    clock.near = True
    assert not clock.would_cross(9_250.0, synced=True)  # drained queue: not an exact step time
    assert not clock.would_cross(9_350.0, synced=True)
    assert clock.next_step_ms() == pytest.approx(100.0)
    assert clock.would_cross(9_950.0, synced=True)  # 9,950 + 600 would cross 10,000


def test_grad_accum_keeps_the_global_batch_for_any_gpu_count():
    cfg = TrainerConfig()  # 786,432 tokens = 384 sequences of 2048
    assert [grad_accum_for(cfg, w) for w in (1, 2, 4, 8, 3)] == [8, 4, 2, 1, 2]
    with pytest.raises(ConfigError, match="TRAIN_BATCH_TOKENS"):
        grad_accum_for(cfg, 5)  # 384 sequences do not split over 5 ranks
    tiny = TrainerConfig(train_seq_len=64, train_batch_tokens=256, eval_seq_len=64)
    assert grad_accum_for(tiny, 1) == 4  # only 4 sequences: the closest divisor to 8
    with pytest.raises(ConfigError, match="GRAD_ACCUM_STEPS"):
        grad_accum_for(TrainerConfig(grad_accum_steps=5), 1)


def test_artifact_accounting_flips_at_the_limit():
    ok = artifact_accounting(code_bytes=60_000, model_bytes=ARTIFACT_LIMIT_BYTES - 60_000)
    assert ok == {"code_bytes": 60_000, "model_bytes": 15_940_000, "total_bytes": 16_000_000, "artifact_ok": True}
    over = artifact_accounting(code_bytes=60_001, model_bytes=ARTIFACT_LIMIT_BYTES - 60_000)
    assert over["total_bytes"] == 16_000_001 and over["artifact_ok"] is False


# --- whole runs ----------------------------------------------------------------------


@pytest.mark.slow
def test_compile_warmup_steps_are_undone(smoke_corpus, tmp_path):
    """Warm-up steps must leave no trace: weights, optimiser state and data order reset."""
    results = []
    for warmup in (0, 3):
        cfg = TrainerConfig.from_dict({**TINY, **corpus_knobs(smoke_corpus), "WARMUP_STEPS": warmup,
                                       "TTT_ENABLED": 0, "OUTPUT_DIR": str(tmp_path / f"w{warmup}")})
        results.append(train(cfg))
        lines = (tmp_path / f"w{warmup}" / "metrics.jsonl").read_text().splitlines()
        results[-1]["curve"] = [json.loads(line).get("train_loss") for line in lines]
    assert results[0]["curve"] == results[1]["curve"]
    assert results[0]["val_bpb"] == results[1]["val_bpb"]


@pytest.mark.slow
def test_a_capped_gptq_run_keeps_its_calibration_inside_the_cap(smoke_corpus, tmp_path):
    """Found on one H100 (bench/results/wallclock_cap.md): with the record's fixed 0.5 s reserve the
    loop stopped under a 120 s cap, then 6.7 s of calibration made train_time 125.9 s. The warm-up now
    times calibrations of 1 and 4 batches and reserves what GPTQ_CALIBRATION_BATCHES of them need."""
    out = tmp_path / "out"
    # 200 calibration batches cost about a second here: far more than the 0.05 s the knob keeps.
    knobs = {**TINY, **corpus_knobs(smoke_corpus), "OUTPUT_DIR": str(out), "ITERATIONS": 100000, "MAX_WALLCLOCK_SECONDS": 6,
             "WARMDOWN_ITERS": 5, "GPTQ": 1, "GPTQ_RESERVE_SECONDS": 0.05, "GPTQ_CALIBRATION_BATCHES": 200, "TTT_ENABLED": 0}
    proc = run_trainer([sys.executable, "-m", "trainer"], knobs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "train.log").read_text()
    reserve = float(re.search(r"gptq_reserve:([0-9.]+)s probe:1 in \d+ms, 4 in \d+ms for 200", log).group(1))
    calibration = re.search(r"gptq_calibration_time:(\d+)ms reserve:(\d+)ms train_time:(\d+)ms", log)
    assert calibration, log[-2000:]
    calib_ms, reserved_ms, train_ms = map(int, calibration.groups())
    assert reserve > 0.05 and abs(reserved_ms - 1000 * reserve) <= 10
    # 200 batches from probes of 1 and 4 (a few ms each) on a shared 2-core CPU: 50x extrapolated, so
    # within 20% on a quiet machine and 1.21x seen under the full suite's load; on an H100 the calibration's
    # time repeats to 1% (the 1.1x margin's ground). train_time below is the rule itself.
    assert calib_ms <= 1.5 * reserved_ms, "the probe under-estimated the calibration"
    result = json.loads((out / "result.json").read_text())
    assert result["train_seconds"] == pytest.approx(train_ms / 1000, abs=0.002)
    assert result["config"]["gptq_reserve_seconds"] == 0.05  # the run's config is what was asked; the reserve is the clock's
    assert 0 < result["train_seconds"] <= 6.15  # loop + calibration: within the cap (one slow CI step aside)


def test_the_reserve_separates_the_calibrations_fixed_part_from_its_batches():
    # One H100, 16 batches (bench/results/wallclock_cap.md): about 0.23 s fixed and 0.215 s a batch; the
    # calibration then took 3,668 ms. One 2-batch probe scaled by 8 reserved 6.6 s; two sizes keep 1.1x.
    cfg = TrainerConfig(gptq_calibration_batches=16, gptq_reserve_seconds=0.5)
    reserve = calibration_reserve(cfg, [(1, 0.445), (4, 1.09)])
    assert reserve == pytest.approx(1.1 * (0.23 + 16 * 0.215), abs=0.01) and 3.668 < reserve < 4.1
    # A noisy pair (the larger probe barely slower) cannot make a batch free: 0.75x the larger probe's mean.
    assert calibration_reserve(cfg, [(4, 1.0), (1, 0.99)]) >= 1.1 * 16 * 0.75 * 0.25
    assert calibration_reserve(replace(cfg, gptq_reserve_seconds=30.0), [(1, 0.445), (4, 1.09)]) == 30.0  # the knob is a floor


def test_end_to_end_run_writes_a_valid_result(smoke_corpus, tmp_path):
    out = tmp_path / "out"
    knobs = {**TINY, **corpus_knobs(smoke_corpus), "OUTPUT_DIR": str(out), "ITERATIONS": 100000, "MAX_WALLCLOCK_SECONDS": 3,
             "WARMDOWN_ITERS": 5}
    proc = run_trainer([sys.executable, "-m", "trainer"], knobs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert set(result) == set(RESULT_KEYS)
    assert result["status"] == "succeeded" and result["error"] is None
    assert 0 < result["steps"] < 100000  # stopped by the wallclock cap
    assert 0 < result["val_bpb"] < 20 and 0 < result["pre_ttt_bpb"] < 20
    assert result["model_bytes"] == (out / "model.int6.ptz").stat().st_size
    assert result["code_bytes"] == len(bundled_source().encode())
    assert result["total_bytes"] == result["code_bytes"] + result["model_bytes"] and result["artifact_ok"] is True
    assert result["world_size"] == 1 and result["seed"] == 1337 and result["config"]["num_layers"] == 2
    # The stop rule is tested exactly on a simulated clock (test_step_clock*); here a real step on a
    # shared CI core can take longer than every step before it, so the last one may overrun a little.
    assert 0 < result["train_seconds"] <= 3.15 and result["eval_seconds"] > 0
    assert result["peak_memory_mib"] > 0  # on the CPU: the process's peak RSS
    assert result["trainer_revision"]
    # the facts the rules judge by: the hash of the code that ran, the shards by content
    assert result["code_sha256"] == hashlib.sha256(bundled_source().encode()).hexdigest()
    assert result["code_dirty"] in (True, False, None)
    assert result["train_fingerprints"] and result["val_fingerprints"]
    assert not set(result["train_fingerprints"]) & set(result["val_fingerprints"])

    log = (out / "train.log").read_text()
    for shape in (r"^step:\d+/100000 train_loss:\d+\.\d{4} train_time:\d+ms step_avg:\d+\.\d{2}ms$",
                  r"^step:\d+/100000 val_loss:\d+\.\d{4} val_bpb:\d+\.\d{4} train_time:\d+ms step_avg:\d+\.\d{2}ms$",
                  r"^stopping_early: wallclock_cap train_time:\d+ms step:\d+/100000$",
                  r"^peak memory allocated: \d+ MiB reserved: \d+ MiB$",
                  r"^Code size: \d+ bytes$", r"^Total submission size int6\+lzma: \d+ bytes$",
                  r"^final_int6_sliding_window_exact val_loss:\d+\.\d{8} val_bpb:\d+\.\d{8}$",
                  r"^final_ttt val_loss:\d+\.\d{8} val_bpb:\d+\.\d{8}$"):
        assert re.search(shape, log, re.M), shape
    assert f"val_bpb:{result['val_bpb']:.8f}" in log
    points = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {p["kind"] for p in points} == {"train", "val"}
    assert all(p["elapsed_ms"] >= 0 and p["step"] >= 1 for p in points)

    # the artifact alone rebuilds the model
    sd = dequantize(unpack_artifact((out / "model.int6.ptz").read_bytes()))
    GPT(TrainerConfig.from_dict(result["config"])).load_state_dict(sd)


def test_bad_config_exits_nonzero_with_one_error_line(tmp_path):
    out = tmp_path / "bad"
    proc = run_trainer([sys.executable, "-m", "trainer"], {"OUTPUT_DIR": str(out), "NUM_HEADS": "3", "NUM_LAYERS": "many"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "NUM_LAYERS" in lines[0] and "Traceback" not in proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and result["error"] == lines[0].removeprefix("error: ")
    assert set(result) == set(RESULT_KEYS)


def test_bad_data_exits_nonzero_with_one_error_line(tmp_path):
    out = tmp_path / "nodata"
    proc = run_trainer([sys.executable, "-m", "trainer"], {**TINY, "OUTPUT_DIR": str(out), "DATA_PATH": str(tmp_path / "missing")})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: " + json.loads((out / "result.json").read_text())["error"]]
    assert "DATA_PATH" in proc.stderr


def test_config_file_then_env_overrides(tmp_path, smoke_corpus):
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps({"num_layers": 3, "MODEL_DIM": 48, "SEED": 7}))
    out = tmp_path / "cfg"
    proc = run_trainer([sys.executable, "-m", "trainer", "--config", str(cfg_file)],
                       {**TINY, **corpus_knobs(smoke_corpus), "OUTPUT_DIR": str(out), "ITERATIONS": 1, "TTT_ENABLED": 0,
                        "EVAL_STRIDE": 0, "MODEL_DIM": 32, "NUM_LAYERS": 2})
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "result.json").read_text())["config"]
    assert (config["num_layers"], config["model_dim"], config["seed"]) == (2, 32, 7)


@pytest.mark.slow
def test_ddp_on_two_cpu_ranks_follows_the_single_process_curve(smoke_corpus, tmp_path):
    """torchrun with 2 ranks (gloo) and half the accumulation gives the same global batch, so the same losses.
    Late QAT is off here: its int6 rounding turns the two reduction orders' last-bit differences into a
    whole quantisation step where a weight sits on a boundary (3e-3 at the last step, seen with one
    release of the smoke corpus's tokenizer), which says nothing about DDP."""
    curves = {}
    for nproc in (1, 2):
        out = tmp_path / f"ddp{nproc}"
        knobs = {**TINY, **corpus_knobs(smoke_corpus), "OUTPUT_DIR": str(out), "GRAD_ACCUM_STEPS": 4 // nproc,
                 "TRAIN_LOG_EVERY": 1, "TTT_ENABLED": 0, "EVAL_STRIDE": 0, "QAT_ENABLED": 0}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "trainer"]
        proc = run_trainer(cmd, knobs)
        assert proc.returncode == 0, proc.stderr[-3000:]
        curves[nproc] = [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
                         if '"train"' in line]
        assert json.loads((out / "result.json").read_text())["world_size"] == nproc
    assert len(curves[1]) == len(curves[2]) == TINY["ITERATIONS"]
    assert max(abs(a - b) for a, b in zip(curves[1], curves[2])) < 1e-3
