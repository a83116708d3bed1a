"""Single-GPU throughput benchmark of the shared trainer (issue 3, item 10). Not a test.

What it measures, all in one process on one GPU:

* bf16 matmul peak: the best of a few 8192³ matmuls, FLOP/s = 2·n³ / t.
* The real trainer (``trainer.train.train``) on the default 26.8M-parameter config at
  the full 786,432-token batch (48 x 2048 sequences x 8 gradient-accumulation
  micro-steps on one GPU), torch.compile on, for --steps steps after the 20 compile
  warm-up steps: ms/step (slope of the train timer over the steady steps), tokens/s,
  MFU, peak memory.
* The end-of-run pipeline on a fixed-size val split (--val-tokens): quantise +
  compression (ARTIFACT_CODEC: lzma-6 by default, zstd-22 before issue 9), sliding-window evaluation (stride 64) of the roundtrip model, legal TTT.

MFU = tokens/s · F / peak, with model FLOPs per training token (forward + backward)
    F = 6·N_mm + 6·L·d_attn·T
where N_mm counts the weights used in matmuls (block matrices, the BigramHash and
value-embedding projections, and the tied embedding once, as the output head;
embedding look-ups are free), L = layers, d_attn = heads·head_dim, T = sequence
length. The attention term is the PaLM 12·L·d·T halved, because causal attention
kernels skip the masked half. Norms, RoPE, XSA and activations are not counted.

Corpus: the offline smoke corpus (``python -m trainer.data smoke``; real text, its
own SentencePiece sp1024 tokenizer) for training; the val split is the smoke val
tokens tiled to exactly --val-tokens tokens, so eval timings are comparable across
machines. Tokens are real text, so losses are meaningful, if not FineWeb's.

Usage:
    python bench/trainer_gpu.py                    # on a GPU machine; markdown table on stdout
    python bench/trainer_gpu.py --cpu-smoke        # tiny config on CPU: checks the plumbing only
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.bpb import ByteLUTs  # noqa: E402
from trainer.config import TrainerConfig  # noqa: E402
from trainer.data import load_val_tokens, write_shard  # noqa: E402
from trainer.evaluate import evaluate_sliding, evaluate_ttt  # noqa: E402
from trainer.model import GPT, block_order  # noqa: E402
from trainer.optim import split_parameters  # noqa: E402
from trainer.quant import dequantize, unpack_artifact  # noqa: E402
from trainer.train import ARTIFACT_NAME, autocast_for, train  # noqa: E402

TINY = dict(NUM_LAYERS=2, MODEL_DIM=64, NUM_HEADS=4, NUM_KV_HEADS=2, TRAIN_SEQ_LEN=64, EVAL_SEQ_LEN=64,
            TRAIN_BATCH_TOKENS=1024, BIGRAM_VOCAB_SIZE=128, ROPE_DIMS=8, XSA_LAST_N=1, WARMUP_STEPS=1,
            EVAL_STRIDE=32, TTT_CHUNK_TOKENS=1024, TTT_EPOCHS=1)


def matmul_peak_flops(device: torch.device, n: int, repeats: int = 10) -> float:
    """Best bf16 matmul FLOP/s over a few timed runs (2·n³ FLOPs each)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def flops_per_token(cfg: TrainerConfig) -> float:
    """F = 6·N_mm + 6·L·d_attn·T (see the module docstring), with depth recurrence counted: a block
    that the looped order runs k times counts k times in N_mm and in L (the steady state once
    looping is on; the bench turns it on from the start)."""
    model = GPT(cfg)
    matrices = split_parameters(model)["matrix"]
    ids = {id(p) for p in matrices}
    per_block = [sum(p.numel() for p in b.parameters() if id(p) in ids) for b in model.blocks]
    encoder, decoder = block_order(cfg, looping=cfg.num_loops > 0)
    order = encoder + decoder
    n_mm = sum(p.numel() for p in matrices) - sum(per_block) + sum(per_block[i] for i in order)
    n_mm += model.tok_emb.weight.numel()  # the tied output head is a matmul
    return 6 * n_mm + 6 * len(order) * cfg.num_heads * cfg.head_dim * cfg.train_seq_len


def prepare_corpus(data_dir: Path, work: Path, val_tokens: int, vocab: int = 1024) -> tuple[Path, Path]:
    """(shard folder with the smoke train shards and a val shard of exactly val_tokens, tokenizer)."""
    tok = data_dir / "tokenizers" / f"fineweb_{vocab}_bpe.model"
    shards = data_dir / "datasets" / f"fineweb10B_sp{vocab}"
    if not tok.exists():
        subprocess.run([sys.executable, "-m", "trainer.data", "smoke", "--out", str(data_dir), "--vocab-size", str(vocab)],
                       check=True, cwd=REPO)
    bench_shards = work / "shards"
    bench_shards.mkdir(parents=True, exist_ok=True)
    for f in sorted(shards.glob("fineweb_train_*.bin")):
        link = bench_shards / f.name
        if not link.exists():
            link.symlink_to(f.resolve())
    val = load_val_tokens(str(shards / "fineweb_val_*.bin")).numpy()
    reps = -(-(val_tokens + 1) // len(val))
    write_shard(str(bench_shards / "fineweb_val_000000.bin"), (list(val) * reps)[: val_tokens + 1])
    return bench_shards, tok


def parse_log(text: str) -> dict[str, float]:
    """Numbers from train.log: steady ms/step and the timing lines of the end-of-run pipeline."""
    steps = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(r"^step:(\d+)/\d+ train_loss:\S+ train_time:(\d+)ms", text, re.M)]
    steady = [s for s in steps if s[0] > max(2, len(steps) // 4)]
    out = {"ms_per_step": (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0]) if len(steady) >= 2 else float("nan")}
    for key in ("quantize_time", "roundtrip_eval_time", "ttt_eval_time", "eval_time"):
        m = re.search(rf"^{key}:(\d+)ms", text, re.M)
        out[key] = float(m.group(1)) / 1000 if m else float("nan")
    return out


def steady_eval_seconds(cfg: TrainerConfig, run_dir: Path, device: torch.device) -> dict[str, float]:
    """Sliding-window and TTT seconds on the val split with compilation excluded.

    train() times each phase once, and that first call includes torch.compile; on a
    small split the compile dominates and a linear extrapolation to the full split
    would be wrong. Here the roundtrip model is warmed on two TTT chunks first."""
    model = GPT(cfg).to(device)
    model.load_state_dict(dequantize(unpack_artifact((run_dir / ARTIFACT_NAME).read_bytes())))
    model.eval()
    if device.type == "cuda" and cfg.compile:
        model.forward_logits = torch.compile(model.forward_logits, dynamic=False)
    luts = ByteLUTs.from_sentencepiece(cfg.tokenizer_path, cfg.vocab_size).to(device)
    val = load_val_tokens(str(Path(cfg.data_path) / "fineweb_val_*.bin"), cfg.val_tokens_limit).to(device)
    warm = val[: 2 * cfg.ttt_chunk_tokens + 1]

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast_for(device):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def sliding(tokens):
        with torch.no_grad():
            evaluate_sliding(model, tokens, luts, cfg.eval_seq_len, cfg.eval_stride, cfg.eval_batch_seqs)

    timed(lambda: sliding(warm))
    sliding_s = timed(lambda: sliding(val))
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    timed(lambda: evaluate_ttt(model, warm, luts, cfg))
    model.load_state_dict(snapshot)
    ttt_s = timed(lambda: evaluate_ttt(model, val, luts, cfg))
    return {"sliding": sliding_s, "ttt": ttt_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="timed training steps after the compile warm-up")
    ap.add_argument("--val-tokens", type=int, default=1 << 20, help="size of the fixed val split for the eval timings")
    ap.add_argument("--data", default="/tmp/caddie_data", help="where the smoke corpus is (built there if missing)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--set", action="append", default=[], help="extra KNOB=VALUE")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny config on CPU, to check the plumbing without a GPU")
    ap.add_argument("--train-only", action="store_true", help="skip the evaluation timings (for micro-batch sweeps)")
    args = ap.parse_args()

    if not args.cpu_smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --cpu-smoke to check the plumbing on CPU)")
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    work = Path(args.work or tempfile.mkdtemp(prefix="caddie_bench_"))
    val_tokens = 8192 if args.cpu_smoke else args.val_tokens
    knobs = dict(TINY) if args.cpu_smoke else {}
    knobs.update(kv.split("=", 1) for kv in args.set)
    vocab = TrainerConfig.from_dict(knobs).vocab_size  # STACK=2026-04-27 brings VOCAB_SIZE=8192
    shards, tok = prepare_corpus(Path(args.data), work, val_tokens, vocab)
    knobs.update(DATA_PATH=str(shards), TOKENIZER_PATH=str(tok), OUTPUT_DIR=str(work / "run"), ITERATIONS=args.steps,
                 MAX_WALLCLOCK_SECONDS=0, WARMDOWN_ITERS=0, TRAIN_LOG_EVERY=1, VAL_TOKENS_LIMIT=val_tokens)
    if args.train_only:
        knobs.update(TTT_ENABLED=0, EVAL_STRIDE=0, VAL_TOKENS_LIMIT=65536)
    knobs.update(kv.split("=", 1) for kv in args.set)
    cfg = TrainerConfig.from_dict(knobs)

    peak = matmul_peak_flops(device, 512 if args.cpu_smoke else 8192)
    result = train(cfg)
    timings = parse_log((work / "run" / "train.log").read_text())
    tokens_per_s = cfg.train_batch_tokens / (timings["ms_per_step"] / 1000)
    f_tok = flops_per_token(cfg)
    mfu = tokens_per_s * f_tok / peak
    steady = None if args.train_only else steady_eval_seconds(cfg, work / "run", device)
    full_val_factor = 62_021_632 / val_tokens / 8  # scale to the full val split on 8 GPUs (ideal scaling)

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    cmd = "python bench/trainer_gpu.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    rows = [
        ("device", name),
        ("command", f"`{cmd.strip()}`"),
        ("config", f"{'tiny (--cpu-smoke)' if args.cpu_smoke else 'default'}{' + ' + ' '.join(args.set) if args.set else ''}; "
                   f"batch {cfg.train_batch_tokens:,} tokens, seq {cfg.train_seq_len}, {result['steps']} timed steps"),
        ("parameters", f"{sum(p.numel() for p in GPT(cfg).parameters()):,}"),
        ("bf16 matmul peak (measured)", f"{peak / 1e12:.1f} TFLOP/s"),
        ("ms/step (steady)", f"{timings['ms_per_step']:.1f}"),
        ("tokens/s", f"{tokens_per_s:,.0f}"),
        ("model FLOPs/token (6·N_mm + 6·L·d·T)", f"{f_tok / 1e6:.1f} M"),
        ("MFU", f"{100 * mfu:.1f}%"),
        ("peak memory allocated", f"{result['peak_memory_mib']:,} MiB"),
        ("quantise + compress", f"{timings['quantize_time']:.1f} s"),
    ]
    if steady:
        rows += [
            (f"sliding-window eval, {val_tokens:,} val tokens, first call (incl. compile)", f"{timings['roundtrip_eval_time']:.1f} s"),
            (f"sliding-window eval, {val_tokens:,} val tokens, compiled", f"{steady['sliding']:.1f} s (full val on 8 GPUs, ideal scaling ≈ {steady['sliding'] * full_val_factor:.0f} s)"),
            (f"legal TTT, {val_tokens:,} val tokens, first call (incl. compile)", f"{timings['ttt_eval_time']:.1f} s"),
            (f"legal TTT, {val_tokens:,} val tokens, compiled", f"{steady['ttt']:.1f} s (full val on 8 GPUs, ideal scaling ≈ {steady['ttt'] * full_val_factor:.0f} s)"),
        ]
    rows += [
        ("artifact", f"{result['total_bytes']:,} bytes (code {result['code_bytes']:,} + model {result['model_bytes']:,})"),
        ("val_bpb (smoke corpus; not FineWeb)", f"pre-TTT {result['pre_ttt_bpb']:.4f}, final {result['val_bpb']:.4f}"),
    ]
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
