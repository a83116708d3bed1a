"""One training run, start to finish.

setup (device, DDP) -> data and model -> compile warm-up, then undone -> training
loop under the wallclock cap (warm-down lands on the cap; EMA, SWA, late QAT) ->
averaged weights -> quantise + zstd (the artifact) -> de-quantise ("roundtrip") ->
sliding-window eval -> legal TTT -> train.log, metrics.jsonl, result.json.

The training timer runs only around training steps: compile warm-up, evaluation
and serialisation are outside it.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainer.bpb import ByteLUTs
from trainer.bundle import bundled_source
from trainer.config import ARTIFACT_LIMIT_BYTES, ConfigError, ConfigIssue, TrainerConfig, artifact_settings, config_for_artifact
from trainer.data import ShardError, TokenStream, load_val_bytes, load_val_tokens, read_shard_header, shard_files
from trainer.evaluate import Tick, evaluate_full, evaluate_sliding, evaluate_ttt, evaluate_ttt_lora_phased
from trainer.gptq import collect_hessians
from trainer.model import GPT, BlockLinear, block_order, count_parameters
from trainer.optim import build_optimizers, set_schedule
from trainer.quant import FrontierQuant, dequantize, pack_artifact, quantize_state_dict, unpack_artifact, unpack_artifact_with_settings

ARTIFACT_NAME = "model.int6.ptz"
CODE_NAME = "train_gpt.py"
RESULT_KEYS = ("status", "error", "val_loss", "val_bpb", "pre_ttt_bpb", "code_bytes", "model_bytes", "total_bytes", "artifact_ok",
               "steps", "train_seconds", "eval_seconds", "peak_memory_mib", "world_size", "seed", "config", "trainer_revision",
               "val_tokens_scored", "val_tokens_total", "ttt_protocol", "train_shards", "val_shards", "gpu_name",
               "code_sha256", "code_dirty", "train_fingerprints", "val_fingerprints")


class RunError(ValueError):
    """A problem with the run's inputs (missing files, impossible batch split): one clear line."""


# The longest a phase of the final evaluation goes without a line (a TTT evaluation takes minutes).
PROGRESS_EVERY_S = 30.0


class RunLog:
    """train.log + stdout for people, metrics.jsonl for machines; only rank 0 writes."""

    def __init__(self, out_dir: Path, enabled: bool, stem: str = "train"):
        self.enabled = enabled
        if enabled:  # eval-only runs write eval.log and eval_metrics.jsonl beside the run's own files
            out_dir.mkdir(parents=True, exist_ok=True)
            self.text = open(out_dir / f"{stem}.log", "w", encoding="utf-8")
            self.metrics = open(out_dir / ("metrics.jsonl" if stem == "train" else f"{stem}_metrics.jsonl"), "w", encoding="utf-8")

    def line(self, msg: str) -> None:
        if self.enabled:
            print(msg, flush=True)
            self.text.write(msg + "\n")
            self.text.flush()

    def ticker(self, phase: str, every_s: float = PROGRESS_EVERY_S) -> Tick | None:
        """A Tick for an evaluation phase that prints ``<phase>_progress:done/total elapsed:Ns`` at most
        every ``every_s`` (rank 0 only): a person watching the log sees the phase move, as the records'
        own logs show their TTT batches, and caddie's silence watchdog hears the trainer is alive."""
        if not self.enabled:
            return None
        t0 = last = time.perf_counter()

        def tick(done: int, total: int) -> None:
            nonlocal last
            now = time.perf_counter()
            if done < total and now - last >= every_s:
                last = now
                self.line(f"{phase}_progress:{done}/{total} elapsed:{now - t0:.0f}s")

        return tick

    def point(self, **values) -> None:
        if self.enabled:
            self.metrics.write(json.dumps(values) + "\n")
            self.metrics.flush()

    def close(self) -> None:
        if self.enabled:
            self.text.close()
            self.metrics.close()


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device); joins the process group when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return rank, world, device


def grad_accum_for(cfg: TrainerConfig, world: int) -> int:
    """Micro-steps per step so that world x accum x micro-batch = TRAIN_BATCH_TOKENS.

    GRAD_ACCUM_STEPS when set; otherwise the divisor of the batch's sequence count
    closest to 8 / world_size (8 on one GPU, 1 on eight).
    """
    seqs = cfg.train_batch_tokens // cfg.train_seq_len
    if cfg.grad_accum_steps:
        if seqs % (cfg.grad_accum_steps * world):
            raise ConfigError([ConfigIssue("GRAD_ACCUM_STEPS", cfg.grad_accum_steps,
                                           f"times world size {world} must divide the batch's {seqs} sequences (TRAIN_BATCH_TOKENS/TRAIN_SEQ_LEN)")])
        return cfg.grad_accum_steps
    valid = [a for a in range(1, seqs // world + 1) if seqs % (a * world) == 0]
    if not valid:
        raise ConfigError([ConfigIssue("TRAIN_BATCH_TOKENS", cfg.train_batch_tokens,
                                       f"holds {seqs} sequences of TRAIN_SEQ_LEN={cfg.train_seq_len}, fewer than the {world} ranks")])
    target = max(1, 8 // world)
    return min(valid, key=lambda a: (abs(a - target), -a))


def loop_seconds(cfg: TrainerConfig) -> float:
    """The training loop's wallclock cap: MAX_WALLCLOCK_SECONDS, less GPTQ_RESERVE_SECONDS under GPTQ
    (its calibration reads training data, so it is training time; the record reserves it the same way)."""
    return cfg.max_wallclock_seconds - (cfg.gptq_reserve_seconds if cfg.gptq and cfg.max_wallclock_seconds > 0 else 0.0)


GPTQ_PROBE_BATCHES = (1, 4)  # two timed calibrations in the warm-up (after one untimed): a fixed part and a per-batch part
# How much the real calibration may exceed the probe's estimate. On one H100 two runs calibrated in 3,668
# and 3,692 ms; every 0.1 of margin is a tenth of the calibration taken from training.
CALIBRATION_MARGIN = 1.1


def calibration_reserve(cfg: TrainerConfig, probes: Sequence[tuple[int, float]]) -> float:
    """The seconds a capped GPTQ run keeps for its calibration: GPTQ_RESERVE_SECONDS, or more where the
    warm-up's probes, (batches, seconds) of two sizes, say GPTQ_CALIBRATION_BATCHES batches take longer.

    A fixed reserve cannot be right on every machine: the 2026-04-27 record kept 0.5 s and calibrated for
    4.7 s on 8x H100; on one H100 the same calibration took 6.7 s, so its train_time ended 5.9 s over a
    120 s cap. Scaling one probe by its batch count was too much: a calibration has a fixed part (hooks,
    the loader, the Hessians' allocation and reduction, ~0.23 s on an H100) that a 2-batch probe counted
    8 times (reserve 6.6 s for 3.7 s). Two sizes separate the parts; the per-batch part never falls below
    0.75x the larger probe's mean, so a noisy pair cannot estimate a free batch."""
    (n_small, t_small), (n_large, t_large) = sorted(probes)
    per_batch = max((t_large - t_small) / max(n_large - n_small, 1), 0.75 * t_large / max(n_large, 1))
    fixed = max(t_small - n_small * per_batch, 0.0)
    return max(cfg.gptq_reserve_seconds, CALIBRATION_MARGIN * (fixed + per_batch * cfg.gptq_calibration_batches))


def lr_scale_at(step: int, elapsed_ms: float, cfg: TrainerConfig) -> float:
    """1, then linear to MIN_LR (0 by default) over the last WARMDOWN_ITERS steps.

    by steps: (ITERATIONS - step) / WARMDOWN_ITERS.  Under a wallclock cap also by
    time: remaining_ms / (WARMDOWN_ITERS · ms_per_step so far), so the warm-down ends
    at the cap. The smaller of the two wins; clamped to [MIN_LR, 1].
    """
    if cfg.warmdown_iters <= 0:
        return 1.0
    scale = (cfg.iterations - step) / cfg.warmdown_iters
    if cfg.max_wallclock_seconds > 0 and step > 0:
        remaining_ms = loop_seconds(cfg) * 1000.0 - elapsed_ms
        scale = min(scale, remaining_ms / (cfg.warmdown_iters * elapsed_ms / step))
    return min(max(scale, cfg.min_lr), 1.0)


def training_progress(step: int, elapsed_ms: float, cfg: TrainerConfig) -> float:
    """How far training is, in [0, 1]: step / ITERATIONS, or under a wallclock cap the larger
    of that and elapsed / cap (the record's training fraction; ENABLE_LOOPING_AT compares to it)."""
    frac = step / cfg.iterations
    if cfg.max_wallclock_seconds > 0:
        frac = max(frac, elapsed_ms / (loop_seconds(cfg) * 1000.0))
    return min(frac, 1.0)


class StepClock:
    """Stops a capped loop before the step that would cross the cap.

    Fed the (rank-agreed) training clock at the top of every step, it predicts the
    next step's duration and says whether running it would end past the cap. On a
    GPU the host runs ahead of the device, so unsynchronised durations are jittery:
    the estimate is the mean of the last WINDOW steps, and once the cap is within
    NEAR estimated steps the caller synchronises every step (``near``), so the last
    durations are exact; then the estimate is the largest exact one (the first
    synchronised step also absorbs the queue, so it is left out).
    """

    WINDOW = 10
    NEAR = 4

    def __init__(self, cap_ms: float) -> None:
        self.cap_ms = cap_ms
        self.marks: list[float] = []   # clock at the top of recent steps
        self.exact: list[float] = []   # durations measured between two synchronised marks
        self.near = False              # the caller should synchronise before the next mark
        self.prev_synced = False

    def next_step_ms(self) -> float:
        if len(self.exact) >= 1:
            return max(self.exact[-self.WINDOW:])
        if len(self.marks) < 2:
            return 0.0
        return (self.marks[-1] - self.marks[0]) / (len(self.marks) - 1)

    def would_cross(self, elapsed_ms: float, synced: bool = False) -> bool:
        """Record this step's mark; True when one more step would pass the cap."""
        if synced and self.prev_synced:
            self.exact.append(elapsed_ms - self.marks[-1])
        self.prev_synced = synced
        self.marks = (self.marks + [elapsed_ms])[-(self.WINDOW + 1):]
        est = self.next_step_ms()
        if self.cap_ms <= 0:
            return False
        if est > 0 and elapsed_ms + est > self.cap_ms:
            return True
        self.near = self.near or (est > 0 and elapsed_ms + self.NEAR * est >= self.cap_ms)
        return elapsed_ms >= self.cap_ms


def artifact_accounting(code_bytes: int, model_bytes: int) -> dict:
    """total = code bytes + compressed model bytes; ok when total <= 16,000,000 (decimal)."""
    total = code_bytes + model_bytes
    return {"code_bytes": code_bytes, "model_bytes": model_bytes, "total_bytes": total, "artifact_ok": total <= ARTIFACT_LIMIT_BYTES}


def tune_inductor() -> None:
    """Inductor settings the trainer compiles with (read when a graph compiles).

    Mix-order reduction fuses each RMS-norm backward (a reduction over channels) with
    the per-channel gradient sums of the block's scales and mixes (a reduction over
    tokens). On the H100 one such kernel took 1.2 ms per micro-step, and with the fusion
    off the step was 4.8% faster (190.0 -> 180.8 ms, bench/results/vs_reference.md).
    """
    import torch._inductor.config as inductor_config

    for section in (inductor_config, getattr(inductor_config, "triton", None)):
        if section is not None and hasattr(section, "mix_order_reduction"):
            section.mix_order_reduction = False


def autocast_for(device: torch.device):
    """bf16 autocast on GPU; CPU runs stay fp32 (exact, and bf16 matmuls are slow on CPU)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def trainer_revision(code: str) -> str:
    """The git commit of the trainer's source tree, else a hash of the bundled code."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "sha256:" + hashlib.sha256(code.encode()).hexdigest()[:16]


def code_dirty() -> bool | None:
    """Whether the trainer's source differs from its commit; None off git."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True, text=True, timeout=10)
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def content_fingerprint(path: str, block: int = 1 << 20, samples: int = 8) -> str:
    """sha256 of a file's size and of evenly spaced 1 MiB blocks (first and last included):
    names prove nothing (a renamed validation shard has a training name), and hashing
    every byte of 16 GB of shards would cost a run tens of seconds."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        for i in range(samples):
            f.seek(max(0, size - block) * i // max(1, samples - 1))
            h.update(f.read(block))
    return h.hexdigest()


def peak_memory_mib(device: torch.device) -> tuple[int, int]:
    """(allocated, reserved) peaks in MiB; on CPU both are the process's max RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() // 2**20, torch.cuda.max_memory_reserved() // 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux
    return rss, rss


def write_result(out_dir: Path, result: dict, name: str = "result.json") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    full = {k: result.get(k) for k in RESULT_KEYS}
    tmp = out_dir / f"{name}.tmp"
    tmp.write_text(json.dumps(full, indent=2) + "\n")
    tmp.replace(out_dir / name)


def write_failure(out_dir: Path, error: str, config: dict | None, seed: int | None = None, name: str = "result.json") -> None:
    """result.json (NAME) for a run that could not finish: status failed and the one-line error."""
    write_result(out_dir, {"status": "failed", "error": error, "config": config, "seed": seed,
                           "world_size": int(os.environ.get("WORLD_SIZE", "1"))}, name)


def check_codec_available(cfg: TrainerConfig) -> None:
    """Fail before training, not after it, when the artifact's compressor is missing here."""
    needs = {"zstd": "zstandard", "brotli": "brotli", "pergroup": "brotli"}.get(cfg.artifact_codec)
    if needs:
        try:
            __import__(needs)
        except ImportError:
            raise RunError(f"ARTIFACT_CODEC={cfg.artifact_codec} needs the Python package {needs} (pip install {needs})") from None
    if cfg.artifact_codec == "pergroup" and cfg.pergroup_backend == "lrzip" and shutil.which("lrzip") is None:
        raise RunError("PERGROUP_BACKEND=lrzip needs the lrzip binary on PATH (apt-get install lrzip)")


def gptq_hessians(model: GPT, cfg: TrainerConfig, train_pattern: str, micro_tokens: int, rank: int, world: int,
                  device: torch.device, autocast) -> dict[str, torch.Tensor]:
    """GPTQ Hessians from the first GPTQ_CALIBRATION_BATCHES training batches of this rank, averaged
    over the ranks so that every rank quantises to the same integers (CPU, float32)."""
    calib = TokenStream(train_pattern, rank, world)
    batches = (calib.next_batch(micro_tokens, cfg.train_seq_len, device)[0] for _ in range(cfg.gptq_calibration_batches))
    with autocast():
        hessians = collect_hessians(model, batches, BlockLinear)
    if world > 1:
        for name in sorted(hessians):
            dist.all_reduce(hessians[name])
            hessians[name] /= world
    return {k: v.cpu() for k, v in hessians.items()}


def val_byte_counts(cfg: TrainerConfig, val_tokens_available: int, device: torch.device) -> ByteLUTs:
    """What val_bpb divides by: the tokenizer's byte tables, or under CASEOPS_ENABLED the val byte sidecar
    beside the val shards (the tokenizer is still read, to check its vocabulary)."""
    try:
        luts = ByteLUTs.from_sentencepiece(cfg.tokenizer_path, cfg.vocab_size)
    except (OSError, RuntimeError, ValueError) as exc:  # unreadable model, or a vocab mismatch
        raise RunError(f"TOKENIZER_PATH={cfg.tokenizer_path}: {exc}") from None
    if cfg.caseops_enabled:
        try:
            luts = ByteLUTs.from_sidecar(load_val_bytes(cfg.data_path, val_tokens_available, cfg.val_tokens_limit))
        except ShardError as exc:
            raise RunError(f"DATA_PATH={cfg.data_path}: {exc}") from None
    return luts.to(device)


def score_artifact(blob: bytes, cfg: TrainerConfig, val_tokens: torch.Tensor, luts: ByteLUTs, device: torch.device,
                   rank: int, world: int, log: RunLog):
    """Load the artifact into a fresh model and score it as the run does (sliding or full, then
    TTT): (last EvalResult, bpb before TTT, eval seconds). Training and eval-only share it, so an
    eval-only run of the same artifact reproduces the run's numbers."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    roundtrip = GPT(cfg).to(device)
    roundtrip.load_state_dict(dequantize(unpack_artifact(blob)))
    roundtrip.eval()
    if cuda and cfg.compile:
        roundtrip.forward_logits = torch.compile(roundtrip.forward_logits, dynamic=False)
    sync()
    e0 = time.perf_counter()
    with torch.no_grad(), autocast_for(device):
        if cfg.eval_stride > 0:
            r = evaluate_sliding(roundtrip, val_tokens, luts, cfg.eval_seq_len, cfg.eval_stride, cfg.eval_batch_seqs, rank, world,
                                 log.ticker("sliding_eval"))
            log.line(f"final_int6_sliding_window_exact val_loss:{r.val_loss:.8f} val_bpb:{r.val_bpb:.8f}")
        else:
            r = evaluate_full(roundtrip, val_tokens, luts, cfg.eval_seq_len, cfg.eval_batch_seqs, rank, world, log.ticker("roundtrip_eval"))
            log.line(f"final_int6_roundtrip_exact val_loss:{r.val_loss:.8f} val_bpb:{r.val_bpb:.8f}")
    pre_ttt_bpb = r.val_bpb
    sync()
    log.line(f"roundtrip_eval_time:{1000 * (time.perf_counter() - e0):.0f}ms tokens:{r.tokens}")
    if cfg.ttt_enabled:
        ttt0 = time.perf_counter()
        with autocast_for(device):
            ttt = evaluate_ttt_lora_phased if cfg.ttt_mode == "lora_phased" else evaluate_ttt
            r = ttt(roundtrip, val_tokens, luts, cfg, rank, world, tick=log.ticker("ttt"))
        log.line(f"ttt_scored_tokens:{r.tokens}")
        log.line(f"final_ttt val_loss:{r.val_loss:.8f} val_bpb:{r.val_bpb:.8f}")
        sync()
        log.line(f"ttt_eval_time:{1000 * (time.perf_counter() - ttt0):.0f}ms")
    eval_seconds = time.perf_counter() - e0
    log.line(f"eval_time:{eval_seconds * 1000:.0f}ms")
    return r, pre_ttt_bpb, eval_seconds


def probe_gptq_reserve(model: GPT, cfg: TrainerConfig, train_pattern: str, micro_tokens: int, rank: int, world: int,
                       device: torch.device, autocast, sync, log: RunLog) -> float:
    """Time GPTQ_PROBE_BATCHES calibration batches before the clock starts (the calibration itself runs
    after the loop and counts as training: it reads training data) and return the reserve that keeps
    loop + calibration within MAX_WALLCLOCK_SECONDS; every rank gets the slowest rank's figure."""
    looping = model.looping
    model.looping = cfg.num_loops > 0  # the calibration runs the looped model
    # One batch untimed first: on an H100 the first one took ~3 s of one-time set-up (the real calibration
    # runs after it, warm), and a probe that timed it reserved 33 s for a 3.7 s calibration.
    gptq_hessians(model, replace(cfg, gptq_calibration_batches=1), train_pattern, micro_tokens, rank, world, device, autocast)
    sync()
    seconds = []
    for batches in GPTQ_PROBE_BATCHES:
        p0 = time.perf_counter()
        gptq_hessians(model, replace(cfg, gptq_calibration_batches=batches), train_pattern, micro_tokens, rank, world, device, autocast)
        sync()
        seconds.append(time.perf_counter() - p0)
    model.looping = looping
    if world > 1:  # every rank keeps the slowest rank's figures
        slowest = torch.tensor(seconds, device=device, dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        seconds = slowest.tolist()
    probes = list(zip(GPTQ_PROBE_BATCHES, seconds, strict=True))
    reserve = calibration_reserve(cfg, probes)
    timed = ", ".join(f"{n} in {1000 * t:.0f}ms" for n, t in probes)
    log.line(f"gptq_reserve:{reserve:.2f}s probe:{timed} for {cfg.gptq_calibration_batches} (GPTQ_RESERVE_SECONDS={cfg.gptq_reserve_seconds:g})")
    if reserve >= cfg.max_wallclock_seconds:
        raise RunError(f"GPTQ calibration needs about {reserve:.1f} s of MAX_WALLCLOCK_SECONDS={cfg.max_wallclock_seconds:g}, "
                       "leaving no time to train: raise the cap or lower GPTQ_CALIBRATION_BATCHES")
    return reserve


def train(cfg: TrainerConfig) -> dict:
    """Run the whole thing; return the result dict (also written to result.json)."""
    cfg.validate()
    rank, world, device = setup_distributed()
    master = rank == 0
    out_dir = Path(cfg.output_dir)
    log = RunLog(out_dir, master)
    cuda = device.type == "cuda"
    autocast = partial(autocast_for, device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    # --- code, data, model ----------------------------------------------------
    code = bundled_source()
    code_bytes = len(code.encode("utf-8"))
    if master:  # the very bytes counted as code: a records/ export ships this file
        (out_dir / CODE_NAME).write_text(code, encoding="utf-8")
    log.line(f"Code size: {code_bytes} bytes")
    log.line("config: " + json.dumps(cfg.overrides(), sort_keys=True))
    accum = grad_accum_for(cfg, world)
    check_codec_available(cfg)
    train_pattern = os.path.join(cfg.data_path, "fineweb_train_*.bin")
    val_pattern = os.path.join(cfg.data_path, "fineweb_val_*.bin")
    for pattern in (train_pattern, val_pattern):
        if not glob.glob(pattern):
            raise RunError(f"DATA_PATH={cfg.data_path}: no {os.path.basename(pattern)} shards there")
    if not os.path.isfile(cfg.tokenizer_path):
        raise RunError(f"TOKENIZER_PATH={cfg.tokenizer_path}: no such file")
    val_tokens = load_val_tokens(val_pattern, cfg.val_tokens_limit)
    val_tokens_available = sum(read_shard_header(f) for f in shard_files(val_pattern))  # the whole split, even under VAL_TOKENS_LIMIT
    luts = val_byte_counts(cfg, val_tokens_available, device)
    stream = TokenStream(train_pattern, rank, world)

    torch.manual_seed(cfg.seed)
    model = GPT(cfg).to(device)
    log.line(f"model_params:{count_parameters(model)} attention:{model.attention_impl} world_size:{world} grad_accum_steps:{accum} device:{device.type}")
    if cuda and cfg.compile:
        tune_inductor()
    step_model = torch.compile(model, dynamic=False) if cuda and cfg.compile else model
    if world > 1:
        step_model = DistributedDataParallel(step_model, device_ids=[device.index] if cuda else None, broadcast_buffers=False)
    optimizers = build_optimizers(model, cfg)
    params = list(model.parameters())
    micro_tokens = cfg.train_batch_tokens // accum

    def train_step(step: int, lr_scale: float) -> torch.Tensor:
        set_schedule(optimizers, lr_scale, step, cfg)
        total = torch.zeros((), device=device)
        for micro in range(accum):
            x, y = stream.next_batch(micro_tokens, cfg.train_seq_len, device)
            no_sync = step_model.no_sync() if world > 1 and micro < accum - 1 else nullcontext()
            with no_sync:
                with autocast():
                    loss = step_model(x, y)
                (loss / accum).backward()
            total += loss.detach()
        if cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
        for opt in optimizers:
            opt.step()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        return total / accum

    # --- compile warm-up, then undo it (weights, optimiser state, data order) ---
    if cfg.warmup_steps:
        initial_weights = copy.deepcopy(model.state_dict())
        initial_opt = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
        warmup_tick = log.ticker("warmup")  # the compiles happen here: minutes without a step line
        for i in range(cfg.warmup_steps):
            # The last warm-up step runs with late QAT on, so its graph is compiled
            # here rather than inside the timed loop when QAT switches on.
            model.set_qat(cfg.qat_enabled and i == cfg.warmup_steps - 1 and cfg.warmup_steps > 1)
            # Depth recurrence: the second half of the warm-up runs looped (and QAT comes on
            # while looping), so both graphs the timed loop uses are compiled here.
            model.looping = cfg.num_loops > 0 and (i >= cfg.warmup_steps // 2 or cfg.enable_looping_at == 0)
            train_step(0, 1.0)
            if warmup_tick is not None:
                warmup_tick(i + 1, cfg.warmup_steps)
        model.set_qat(False)
        model.load_state_dict(initial_weights)
        for opt, state in zip(optimizers, initial_opt):
            opt.load_state_dict(state)
        stream = TokenStream(train_pattern, rank, world)
        log.line(f"warmup_steps:{cfg.warmup_steps} done (weights, optimiser state and data reset)")
    # What the loop's clock reads: the run's config with the reserve its calibration needs. The run's own config (its
    # result.json, its bundle) stays what was asked for; the measured reserve is this machine's, not a knob.
    timed = cfg
    if cfg.gptq and cfg.max_wallclock_seconds > 0:
        timed = replace(cfg, gptq_reserve_seconds=probe_gptq_reserve(model, cfg, train_pattern, micro_tokens, rank, world,
                                                                     device, autocast, sync, log))

    ema = [p.detach().float().clone() for p in params] if cfg.ema_enabled else None
    swa: list[torch.Tensor] | None = None
    swa_count = 0
    qat_on = False

    def evaluate_pre_quant(step: int, train_ms: float) -> None:
        model.eval()
        with torch.no_grad(), autocast():
            r = evaluate_full(model, val_tokens, luts, cfg.eval_seq_len, cfg.eval_batch_seqs, rank, world)
        model.train()
        log.line(f"step:{step}/{cfg.iterations} val_loss:{r.val_loss:.4f} val_bpb:{r.val_bpb:.4f} "
                 f"train_time:{train_ms:.0f}ms step_avg:{train_ms / max(step, 1):.2f}ms")
        log.point(kind="val", step=step, val_loss=r.val_loss, val_bpb=r.val_bpb, elapsed_ms=round(train_ms, 1))

    # --- training loop ---------------------------------------------------------
    cap_ms = loop_seconds(timed) * 1000.0
    train_ms = 0.0
    step = 0
    sync()
    t0 = time.perf_counter()
    clock_cap = StepClock(cap_ms)
    model.looping = cfg.num_loops > 0 and cfg.enable_looping_at == 0
    while step < cfg.iterations:
        synced = clock_cap.near  # agreed on every rank: it follows from the agreed clock
        if synced:
            sync()
        elapsed_ms = train_ms + 1000.0 * (time.perf_counter() - t0)
        if world > 1 and cap_ms > 0:  # ranks must agree on the clock: it sets the LR, QAT, SWA and the stop
            clock = torch.tensor(elapsed_ms, device=device, dtype=torch.float64)
            dist.all_reduce(clock, op=dist.ReduceOp.MAX)
            elapsed_ms = clock.item()
        if clock_cap.would_cross(elapsed_ms, synced):
            log.line(f"stopping_early: wallclock_cap train_time:{elapsed_ms:.0f}ms step:{step}/{cfg.iterations}")
            break
        scale = lr_scale_at(step, elapsed_ms, timed)
        if cfg.num_loops and not model.looping and training_progress(step, elapsed_ms, timed) >= cfg.enable_looping_at:
            model.looping = True
            log.line(f"layer_loop:on step:{step} order:{block_order(cfg, True)}")
        if cfg.qat_enabled and not qat_on and scale < cfg.late_qat_threshold:
            model.set_qat(True)
            qat_on = True
            log.line(f"late_qat:on step:{step} lr_scale:{scale:.4f}")
        loss = train_step(step, scale)
        step += 1
        if ema is not None:
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - cfg.ema_decay)
        if cfg.swa_enabled and scale < cfg.swa_start_lr_scale and step % cfg.swa_every == 0:
            source = ema if ema is not None else [p.detach().float() for p in params]
            if swa is None:
                swa = [s.clone() for s in source]
            else:
                torch._foreach_add_(swa, source)
            swa_count += 1
        if step <= 10 or step % cfg.train_log_every == 0 or step == cfg.iterations:
            if world > 1:  # log the global batch's loss, not this rank's share (gloo has no AVG)
                dist.all_reduce(loss)
                loss /= world
            loss_value = loss.item()
            elapsed_ms = train_ms + 1000.0 * (time.perf_counter() - t0)
            log.line(f"step:{step}/{cfg.iterations} train_loss:{loss_value:.4f} train_time:{elapsed_ms:.0f}ms step_avg:{elapsed_ms / step:.2f}ms")
            log.point(kind="train", step=step, train_loss=loss_value, elapsed_ms=round(elapsed_ms, 1))
            if not math.isfinite(loss_value):
                raise RunError(f"train_loss is {loss_value} at step {step}: training diverged")
        if cfg.val_loss_every and step % cfg.val_loss_every == 0 and step < cfg.iterations:
            sync()
            train_ms += 1000.0 * (time.perf_counter() - t0)
            evaluate_pre_quant(step, train_ms)
            sync()
            t0 = time.perf_counter()
    sync()
    train_ms += 1000.0 * (time.perf_counter() - t0)
    peak_alloc, peak_reserved = peak_memory_mib(device)
    log.line(f"peak memory allocated: {peak_alloc} MiB reserved: {peak_reserved} MiB")

    # --- final weights: SWA of the (EMA) weights if any snapshot, else EMA -----
    final = [s / swa_count for s in swa] if swa_count else ema
    if final is not None:
        with torch.no_grad():
            for p, f in zip(params, final):
                p.copy_(f.to(p.dtype))
        log.line(f"weights: {'swa of ' + str(swa_count) + ' snapshots' if swa_count else 'ema'}")
    model.set_qat(False)
    model.looping = cfg.num_loops > 0  # evaluation always runs the looped model
    evaluate_pre_quant(step, train_ms)

    # --- artifact and its roundtrip ---------------------------------------------
    q0 = time.perf_counter()
    hessians = None
    if cfg.gptq:  # reads training data: its time is training time (train_seconds includes it)
        sync()
        c0 = time.perf_counter()
        hessians = gptq_hessians(model, cfg, train_pattern, micro_tokens, rank, world, device, autocast)
        sync()
        calib_ms = 1000.0 * (time.perf_counter() - c0)
        train_ms += calib_ms
        log.line(f"gptq_calibration_time:{calib_ms:.0f}ms reserve:{1000 * timed.gptq_reserve_seconds:.0f}ms train_time:{train_ms:.0f}ms")
    quantised = quantize_state_dict(model.state_dict(), cfg.quant_clip_floor, cfg.control_dtype, FrontierQuant.from_config(cfg, hessians))
    blob = pack_artifact(quantised, cfg.zstd_level, cfg.artifact_codec, artifact_settings(cfg) if cfg.artifact_settings else None,
                         cfg.pergroup_backend)
    log.line(f"quantize_time:{1000 * (time.perf_counter() - q0):.0f}ms")
    if master:
        (out_dir / ARTIFACT_NAME).write_bytes(blob)
    size = artifact_accounting(code_bytes, len(blob))
    log.line(f"Serialized model int6+{cfg.artifact_codec}: {size['model_bytes']} bytes")
    log.line(f"Total submission size int6+{cfg.artifact_codec}: {size['total_bytes']} bytes")
    del model, step_model, optimizers, params, ema, swa
    r, pre_ttt_bpb, eval_seconds = score_artifact(blob, cfg, val_tokens, luts, device, rank, world, log)

    # Facts the service's rule checks read: what was scored, how TTT adapted, which
    # files fed training and which were evaluated.
    result = {
        "status": "succeeded", "error": None,
        "val_loss": r.val_loss, "val_bpb": r.val_bpb, "pre_ttt_bpb": pre_ttt_bpb,
        **size,
        "steps": step, "train_seconds": round(train_ms / 1000.0, 3), "eval_seconds": round(eval_seconds, 3),
        "peak_memory_mib": peak_alloc, "world_size": world, "seed": cfg.seed,
        "config": cfg.to_dict(), "trainer_revision": trainer_revision(code),
        "val_tokens_scored": r.tokens, "val_tokens_total": val_tokens_available - 1,
        "ttt_protocol": "score_first" if cfg.ttt_enabled else "none",
        "train_shards": sorted(os.path.basename(f) for f in glob.glob(train_pattern)),
        "val_shards": sorted(os.path.basename(f) for f in shard_files(val_pattern)),
        "gpu_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "code_sha256": hashlib.sha256(code.encode()).hexdigest(), "code_dirty": code_dirty(),
    }
    if master:  # after the clocks stop: fingerprints are facts for the rules, not part of the run
        result["train_fingerprints"] = sorted({content_fingerprint(f) for f in glob.glob(train_pattern)})
        result["val_fingerprints"] = sorted({content_fingerprint(f) for f in shard_files(val_pattern)})
        write_result(out_dir, result)
    log.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


EVAL_RESULT_NAME = "eval_result.json"


def evaluate_only(values: dict) -> dict:
    """EVAL_ARTIFACT: load the artifact alone and score it as its run did; no training.

    ``values`` are the knobs set for this run (env-var or field names). The model and
    quantisation knobs come from the artifact (config_for_artifact refuses a conflicting one),
    its eval knobs unless ``values`` change them. Writes eval.log, eval_metrics.jsonl and
    eval_result.json into OUTPUT_DIR, so the run's own files there stay as they were.
    """
    path = str(values.get("EVAL_ARTIFACT") or values.get("eval_artifact"))
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise RunError(f"EVAL_ARTIFACT={path}: {exc.strerror or exc}") from None
    try:
        _, settings = unpack_artifact_with_settings(blob)
    except Exception as exc:  # not an artifact, or a codec this machine lacks
        raise RunError(f"EVAL_ARTIFACT={path}: not a readable caddie artifact ({type(exc).__name__}: {exc})") from None
    cfg = config_for_artifact(values, settings)
    rank, world, device = setup_distributed()
    out_dir = Path(cfg.output_dir)
    log = RunLog(out_dir, rank == 0, stem="eval")
    log.line(f"eval_only artifact:{path} bytes:{len(blob)} config: " + json.dumps(cfg.overrides(), sort_keys=True))
    val_pattern = os.path.join(cfg.data_path, "fineweb_val_*.bin")
    if not glob.glob(val_pattern):
        raise RunError(f"DATA_PATH={cfg.data_path}: no fineweb_val_*.bin shards there")
    val_tokens = load_val_tokens(val_pattern, cfg.val_tokens_limit)
    val_tokens_available = sum(read_shard_header(f) for f in shard_files(val_pattern))
    luts = val_byte_counts(cfg, val_tokens_available, device)
    r, pre_ttt_bpb, eval_seconds = score_artifact(blob, cfg, val_tokens, luts, device, rank, world, log)
    result = {"status": "succeeded", "error": None, "val_loss": r.val_loss, "val_bpb": r.val_bpb, "pre_ttt_bpb": pre_ttt_bpb,
              "model_bytes": len(blob), "eval_seconds": round(eval_seconds, 3), "world_size": world, "seed": cfg.seed,
              "config": cfg.to_dict(), "val_tokens_scored": r.tokens, "val_tokens_total": val_tokens_available - 1,
              "ttt_protocol": "score_first" if cfg.ttt_enabled else "none",
              "val_shards": sorted(os.path.basename(f) for f in shard_files(val_pattern)),
              "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    if rank == 0:
        write_result(out_dir, result, EVAL_RESULT_NAME)
    log.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result
