"""Multi-GPU benchmark of the shared trainer (not a test).

Runs the real entry point (`python -m trainer`, or `torchrun -m trainer` for
several GPUs) on the default config and reports, per GPU count:

* the train_loss curve of the first STEPS steps for one seed, and its largest
  difference from the one-GPU curve (DDP with gradient accumulation must give
  the same global batch, so the same curve up to bf16 noise);
* ms/step and tokens/s, and tokens/s per GPU relative to one GPU (scaling
  efficiency).

Usage (on a GPU machine):
    python bench/trainer_multi_gpu.py --gpus 1,2 --steps 20 --out bench/results/trainer_ddp.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def ensure_corpus(data_dir: Path) -> tuple[Path, Path]:
    """Build the offline corpus once (no network on the GPU machines)."""
    tok = data_dir / "tokenizers" / "fineweb_1024_bpe.model"
    shards = data_dir / "datasets" / "fineweb10B_sp1024"
    if not tok.exists():
        subprocess.run([sys.executable, "-m", "trainer.data", "smoke", "--out", str(data_dir)], check=True, cwd=REPO)
    return shards, tok


def run_trainer(nproc: int, steps: int, out_dir: Path, shards: Path, tok: Path, extra: dict[str, str]) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "DATA_PATH": str(shards),
            "TOKENIZER_PATH": str(tok),
            "OUTPUT_DIR": str(out_dir),
            "SEED": "1337",
            "ITERATIONS": str(steps),
            "MAX_WALLCLOCK_SECONDS": "0",
            "WARMDOWN_ITERS": "0",  # full LR for every step, so the curves move
            "TRAIN_LOG_EVERY": "1",
            "VAL_LOSS_EVERY": "0",
            "TTT_ENABLED": "0",
            "EVAL_STRIDE": "0",
            "VAL_TOKENS_LIMIT": "1048576",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    if nproc == 1:
        cmd = [sys.executable, "-m", "trainer"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "trainer"]
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(out_dir / "stdout.log", "w") as log:
        proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    if proc.returncode != 0:
        tail = (out_dir / "stdout.log").read_text()[-3000:]
        raise SystemExit(f"trainer on {nproc} GPU(s) failed:\n{tail}")
    points = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [p for p in points if p.get("kind") == "train"]
    result = json.loads((out_dir / "result.json").read_text())
    return {"cmd": cmd, "wall": wall, "train": train, "result": result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", default="1,2")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--data", default="/tmp/caddie_data")
    ap.add_argument("--work", default="/tmp/caddie_multi")
    ap.add_argument("--out", default="bench/results/trainer_ddp.md")
    ap.add_argument("--set", action="append", default=[], help="extra KNOB=VALUE for every run")
    args = ap.parse_args()

    shards, tok = ensure_corpus(Path(args.data))
    extra = dict(kv.split("=", 1) for kv in args.set)
    counts = [int(x) for x in args.gpus.split(",")]
    runs = {n: run_trainer(n, args.steps, Path(args.work) / f"gpus{n}", shards, tok, extra) for n in counts}

    base = runs[counts[0]]
    base_loss = {p["step"]: p["train_loss"] for p in base["train"]}
    cfg = base["result"].get("config", {})
    batch = int(cfg.get("train_batch_tokens", 786432))

    lines = ["# Shared trainer on several GPUs of one node", ""]
    lines.append(f"Command: `python bench/trainer_multi_gpu.py --gpus {args.gpus} --steps {args.steps}"
                 + "".join(f" --set {s}" for s in args.set) + "`")
    lines.append(f"Global batch {batch:,} tokens, seq {cfg.get('train_seq_len')}, seed 1337, default config"
                 + (f" with {extra}" if extra else "") + ".")
    lines.append("")
    lines.append("| GPUs | ms/step (steady) | tokens/s | tokens/s per GPU | scaling vs 1st | max abs Δ train_loss vs 1st | final train_loss |")
    lines.append("|---|---|---|---|---|---|---|")
    per_gpu0 = None
    for n in counts:
        r = runs[n]
        steady = [p for p in r["train"] if p["step"] > max(2, args.steps // 4)]
        # elapsed_ms is the cumulative train timer; use the slope over the steady steps.
        if len(steady) >= 2:
            ms = (steady[-1]["elapsed_ms"] - steady[0]["elapsed_ms"]) / (steady[-1]["step"] - steady[0]["step"])
        else:
            ms = float("nan")
        tps = batch / (ms / 1000.0)
        per_gpu = tps / n
        per_gpu0 = per_gpu0 or per_gpu
        loss = {p["step"]: p["train_loss"] for p in r["train"]}
        common = sorted(set(loss) & set(base_loss))
        delta = max(abs(loss[s] - base_loss[s]) for s in common) if common else float("nan")
        final = r["train"][-1]["train_loss"] if r["train"] else float("nan")
        lines.append(f"| {n} | {ms:.1f} | {tps:,.0f} | {per_gpu:,.0f} | {per_gpu / per_gpu0:.2f} | {delta:.4f} | {final:.4f} |")
    lines.append("")
    lines.append("Loss per step:")
    lines.append("")
    lines.append("| step | " + " | ".join(f"{n} GPU" for n in counts) + " |")
    lines.append("|---|" + "---|" * len(counts))
    for s in sorted(base_loss):
        row = [f"{({p['step']: p['train_loss'] for p in runs[n]['train']}).get(s, float('nan')):.4f}" for n in counts]
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Peak memory per GPU (MiB): " + ", ".join(f"{n} GPU: {runs[n]['result'].get('peak_memory_mib')}" for n in counts))
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    print("commands:", {n: shlex.join(runs[n]["cmd"]) for n in counts})


if __name__ == "__main__":
    main()
