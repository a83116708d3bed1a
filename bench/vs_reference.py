"""caddie's trainer against the public record it mirrors, on one GPU (issue 9, item 2). Not a test.

The reference is the record ``2026-03-23_LeakyReLU_LegalTTT_ParallelMuon`` in
``../shared/reference/`` (read and run from there, never copied into the repository).
Both trainers run as child processes of this one, one after the other on the same
GPU, on the same corpus, for the same step counts and seeds, with the same batch:

* reference: ``python3 train_gpt.py`` with its env knobs and ``PYTHONPATH`` on the
  reference folder (its FlashAttention 3 stand-in: cuDNN SDPA);
* caddie: ``python -m trainer`` with the same knobs (through bench/_caddie_run.py,
  which also saves the float weights next to the artifact for bench/artifact_anatomy.py).

Common settings, so the two runs compute the same thing: 20 compile warm-up steps
(weights reset), constant LR (``WARMDOWN_ITERS=0``, so late QAT and SWA never start),
no wallclock cap, no TTT, VE and SWA off in the reference (caddie's defaults), the
reference's BigramHash 2048 (caddie's default), the same ``TRAIN_BATCH_TOKENS`` (8
micro-steps on one GPU for both). Each run ends with its own artifact and its
quantised sliding-window val_bpb (stride 64); the artifact of a run of N steps is
the artifact "at step N", so each step count is its own run.

Timing: ms/step is the slope of train_time between step 10 and the last step of the
longest run (the first steps hold the compile's tail); tokens/s = batch / ms·1000.
Runs of the longest step count run first, each alone on the GPU; shorter ones (whose timings are
not reported) run --parallel at a time to save device time. Keep --parallel at 2 and set
TORCHINDUCTOR_COMPILE_THREADS=4: eight runs at once, each with a 16-thread compile pool, were
still compiling after 520 s on the 16-core H100 machine.

Corpus (``corpus`` subcommand; no network needed): real English text that ships with
Python and its packages — the pydoc topics, the licence, and the docstrings of every
module of the standard library and of the installed packages (deduplicated, shuffled
with a fixed seed) — tokenised by a SentencePiece BPE 1024 trained on its train part,
train tokens written as several shards, val cut to --val-tokens.

The newest record (issue 22, item 4): ``--profile 2026-04-27`` runs
``2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611`` from ``--ref`` (the
challenge's records folder) with the knobs of its README's command, CaseOps off (the bench
corpus is plain SP8192) and TTT off, beside caddie's ``STACK=2026-04-27``; both warm down
over the last 85% of the steps to MIN_LR 0.1 and start looping at 35%, as the record does
without a wallclock cap. Its FlashAttention 3 comes from ``--fa3 bench/fa3_standin`` (cuDNN SDPA,
FlexAttention for the per-document varlen call, with the record's padded cu_seqlens; the stand-in in
``../shared/reference`` fails on those pads); its per-group compressor needs ``lrzip`` on PATH. Its log prints train_time in tenths of a
minute, so its ms/step comes from the cumulative tok/s it prints with each step.

Usage:
    python bench/vs_reference.py corpus --out .bench_data              # on any machine
    python bench/vs_reference.py corpus --out .bench8192 --vocab-size 8192 --join-chars 4000   # for --profile 2026-04-27
    python bench/vs_reference.py run --data .bench_data --ref ../shared/reference \\
        --steps 30,200,600 --seeds 1337,42 --batch 196608 --out /tmp/vsref   # on the GPU
    python bench/vs_reference.py report --results DIR...     # a markdown table of every run found

A device call is limited to 10 minutes and one 600-step run of either trainer takes 5-7
minutes with its compile and evaluation, so the runs were split over several calls with
--impls/--steps/--seeds; bench/results/vs_reference.md gathers them.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

REFERENCE_RECORD = "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon"
CHALLENGE_RECORDS = REPO.parent / "shared" / "challenge" / "records" / "track_10min_16mb"
# Each profile: the record's folder, the knobs given to the record only, to caddie only, and the
# common knobs it drops. "2026-04-27": its README's command less the data, CaseOps and TTT knobs.
PROFILES: dict[str, dict] = {
    "2026-03-23": {"record": REFERENCE_RECORD, "ref": {"VE_ENABLED": "0", "SWA_ENABLED": "0"}, "caddie": {"STACK": "2026-03-23"}, "drop": ()},
    "2026-04-27": {
        "record": "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611",
        "ref": {
            "VOCAB_SIZE": "8192", "CASEOPS_ENABLED": "0", "EMBED_BITS": "7", "MATRIX_LR": "0.026", "MIN_LR": "0.1",
            "MLP_CLIP_SIGMAS": "11.5", "ATTN_CLIP_SIGMAS": "13.0", "EMBED_CLIP_SIGMAS": "14.0", "GRAD_CLIP_NORM": "0.3",
            "MUON_BACKEND_STEPS": "5", "WARMDOWN_FRAC": "0.85", "BETA2": "0.99", "SPARSE_ATTN_GATE_SCALE": "0.5",
            "GPTQ_RESERVE_SECONDS": "0.5", "GPTQ_CALIBRATION_BATCHES": "16", "GATED_ATTN_QUANT_GATE": "1",
            "SPARSE_ATTN_GATE_ENABLED": "1", "GATE_WINDOW": "12", "SMEAR_GATE_ENABLED": "1", "LQER_ENABLED": "1",
            "LQER_ASYM_ENABLED": "1", "LQER_RANK": "4", "LQER_FACTOR_BITS": "4", "LQER_ASYM_GROUP": "64", "LQER_TOP_K": "3",
            "FUSED_CE_ENABLED": "1", "COMPRESSOR": "pergroup",
        },
        "caddie": {"STACK": "2026-04-27", "MIN_LR": "0.1"},  # WARMDOWN_ITERS: the record's WARMDOWN_FRAC of the steps, per run
        "drop": ("WARMDOWN_ITERS", "BIGRAM_VOCAB_SIZE", "LATE_QAT_THRESHOLD"),
    },
}
MIN_DOC_CHARS = 80


# --- corpus ---------------------------------------------------------------------------


def _docstrings(path: str) -> list[str]:
    """Docstrings of a module's module, classes and functions that are long enough to be prose."""
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > MIN_DOC_CHARS:
                out.append(doc)
    return out


def gather_documents(max_bytes: int, workers: int) -> list[str]:
    """Pydoc topics and the licence (the smoke corpus), then the docstrings of every
    .py file under the stdlib and site-packages, deduplicated, in a fixed order."""
    from trainer.data import smoke_documents

    docs = smoke_documents()
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")}
    files = sorted({str(p) for r in roots if Path(r).is_dir() for p in Path(r).rglob("*.py")})
    with ProcessPoolExecutor(workers) as pool:
        for chunk in pool.map(_docstrings, files, chunksize=64):
            docs.extend(chunk)
    seen: set[str] = set()
    unique, total = [], 0
    for d in docs:
        if d not in seen and total < max_bytes:
            seen.add(d)
            unique.append(d)
            total += len(d.encode("utf-8"))
    return unique


def join_documents(docs: list[str], min_chars: int) -> list[str]:
    """Consecutive documents joined until each holds at least ``min_chars``: docstrings (~200 tokens) are
    far shorter than FineWeb's documents, and per-document attention's cost depends on their lengths."""
    out: list[str] = []
    cur: list[str] = []
    for d in docs:
        cur.append(d)
        if sum(len(c) for c in cur) >= min_chars:
            out.append("\n\n".join(cur))
            cur = []
    if cur:
        out.append("\n\n".join(cur))
    return out


def build_corpus_cmd(args: argparse.Namespace) -> None:
    import numpy as np

    from trainer.data import build_corpus, read_shard, write_shard

    t0 = time.perf_counter()
    docs = gather_documents(args.max_mb * 1_000_000, args.workers)
    random.Random(0).shuffle(docs)  # val (the first docs) and train from one distribution
    if args.join_chars:
        docs = join_documents(docs, args.join_chars)
    paths = build_corpus(docs, args.out, args.vocab_size, val_fraction=args.val_fraction, threads=args.workers, shard_tokens=args.shard_tokens)
    val = np.concatenate([read_shard(f) for f in paths.val_files])[:args.val_tokens]
    for f in paths.val_files:
        os.remove(f)
    write_shard(paths.data_path / "fineweb_val_000000.bin", val)
    train_tokens = sum(read_shard(f).size for f in paths.train_files)
    info = {"vocab_size": args.vocab_size, "documents": len(docs), "text_mb": round(sum(len(d.encode()) for d in docs) / 1e6, 1),
            "train_shards": len(paths.train_files), "train_tokens": int(train_tokens), "val_tokens": int(val.size),
            "data_path": str(paths.data_path), "tokenizer_path": str(paths.tokenizer_path),
            "build_seconds": round(time.perf_counter() - t0, 1)}
    (Path(args.out) / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


# --- runs -----------------------------------------------------------------------------


def common_env(data: dict, steps: int, seed: int, batch: int, log_every: int) -> dict[str, str]:
    """Knobs both trainers read under the same names."""
    return {
        "DATA_PATH": data["data_path"], "TOKENIZER_PATH": data["tokenizer_path"],
        "ITERATIONS": str(steps), "WARMUP_STEPS": "20", "WARMDOWN_ITERS": "0", "MAX_WALLCLOCK_SECONDS": "0",
        "TRAIN_BATCH_TOKENS": str(batch), "TRAIN_LOG_EVERY": str(log_every), "VAL_LOSS_EVERY": "0",
        "SEED": str(seed), "TTT_ENABLED": "0", "LATE_QAT_THRESHOLD": "0", "BIGRAM_VOCAB_SIZE": "2048",
        "PYTHONUNBUFFERED": "1",
    }


def run_one(impl: str, steps: int, seed: int, args: argparse.Namespace, data: dict) -> dict:
    """One training run in a child process; returns what its log says."""
    work = Path(args.out) / f"{impl}_s{steps}_seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    profile = PROFILES[args.profile]
    common = common_env(data, steps, seed, args.batch, args.log_every)
    env.update({k: v for k, v in common.items() if k not in profile["drop"]})
    env.update(kv.split("=", 1) for kv in args.set_both)
    if args.prequant_only:
        env.update(PREQUANT_ONLY="1", BENCH_PREQUANT_ONLY="1")
    if impl == "reference":
        ref = Path(args.ref).resolve()
        record = ref if (ref / "train_gpt.py").is_file() else ref / profile["record"]
        fa3 = Path(args.fa3).resolve()
        env.update(profile["ref"], PYTHONPATH=os.pathsep.join(filter(None, [str(fa3), env.get("PYTHONPATH")])))
        cmd = [sys.executable, str(record / "train_gpt.py")]
    else:
        env.update(profile["caddie"], OUTPUT_DIR=str(work), PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
        if "WARMDOWN_FRAC" in profile["ref"]:  # the record warms down over a fraction of the steps, caddie over a count
            env["WARMDOWN_ITERS"] = str(round(float(profile["ref"]["WARMDOWN_FRAC"]) * steps))
        for kv in args.caddie_set:
            k, v = kv.split("=", 1)
            env[k] = v
        cmd = [sys.executable, str(REPO / "bench" / "_caddie_run.py")]
    t0 = time.perf_counter()
    with open(work / "stdout.log", "w") as fh:
        rc = subprocess.run(cmd, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    text = (work / "stdout.log").read_text(errors="replace")
    res = parse_log(text, args.batch)
    res.update(impl=impl, steps=steps, seed=seed, batch=args.batch, rc=rc, wall_s=round(time.perf_counter() - t0, 1))
    if rc != 0:
        res["error_tail"] = text[-3000:]
    (work / "result.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"{impl} steps={steps} seed={seed} rc={rc} wall={res['wall_s']}s ms/step={res.get('ms_per_step')} "
          f"bytes={res.get('total_bytes')} bpb={res.get('val_bpb')}", flush=True)
    return res


TRAIN_RE = re.compile(r"^step:(\d+)/\d+ train_loss:([\d.naninf]+) train_time:([\d.]+)ms", re.M)
# the 2026-04-27 record: "N/ITER train_loss: X train_time: 0.3m tok/s: T", T = N x batch / elapsed
TRAIN_TOKS_RE = re.compile(r"^(\d+)/\d+ train_loss: ([\d.naninf]+) train_time: [\d.]+m tok/s: (\d+)", re.M)


def parse_log(text: str, batch: int = 0) -> dict:
    """Train losses, timings, artifact size and final val figures from either trainer's log."""
    train = [(int(s), float(l), float(t)) for s, l, t in TRAIN_RE.findall(text)]
    if not train and batch:
        train = [(int(s), float(l), int(s) * batch / float(tps) * 1000) for s, l, tps in TRAIN_TOKS_RE.findall(text) if float(tps) > 0]
    out: dict = {"train_loss": {str(s): l for s, l, _ in train}}
    if train:
        first = next((x for x in train if x[0] >= 10), train[0])
        last = train[-1]
        if last[0] > first[0]:
            out["ms_per_step"] = round((last[2] - first[2]) / (last[0] - first[0]), 2)
    m = re.search(r"Total submission size (?:int6|quantized)\+\w+: (\d+) bytes", text)
    if m:
        out["total_bytes"] = int(m.group(1))
    m = re.search(r"Serialized model (?:int6|quantized)\+\w+: (\d+) bytes", text)
    if m:
        out["model_bytes"] = int(m.group(1))
    m = re.search(r"Code size: (\d+) bytes", text)
    if m:
        out["code_bytes"] = int(m.group(1))
    m = re.search(r"final_int6_sliding_window_exact val_loss:([\d.]+) val_bpb:([\d.]+)", text)
    out["val_metric"] = "sliding"
    if not m:  # EVAL_STRIDE=0: both print the non-overlapping roundtrip score instead
        m = re.search(r"final_int6_roundtrip_exact val_loss:([\d.]+) val_bpb:([\d.]+)", text)
        out["val_metric"] = "roundtrip"
    if not m:  # the 2026-04-27 record without TTT: its non-overlapping score of the deserialised artifact
        m = re.search(r"^diagnostic quantized val_loss:([\d.]+) val_bpb:([\d.]+)", text, re.M)
    if m:
        out["val_loss"], out["val_bpb"] = float(m.group(1)), float(m.group(2))
    # pre-quantisation val_bpb of the EMA weights: the reference's "DIAGNOSTIC post_ema" line
    # (its step:N val line is of the raw weights); caddie's step:N val line (EMA applied)
    m = re.search(r"(?:DIAGNOSTIC post_ema|diagnostic pre-quantization post-ema) val_loss:([\d.]+) val_bpb:([\d.]+)", text) or re.search(r"^step:\d+/\d+ val_loss:([\d.]+) val_bpb:([\d.]+)", text, re.M)
    if m:
        out["pre_quant_val_bpb"] = float(m.group(2))
    m = re.search(r"peak memory allocated: (\d+) MiB", text)
    if m:
        out["peak_mib"] = int(m.group(1))
    return out


def run_cmd(args: argparse.Namespace) -> None:
    import torch

    data = json.loads((Path(args.data) / "corpus.json").read_text())
    vocab = data.get("vocab_size", 1024)
    data["data_path"] = str((Path(args.data) / "datasets" / f"fineweb10B_sp{vocab}").resolve())
    data["tokenizer_path"] = str((Path(args.data) / "tokenizers" / f"fineweb_{vocab}_bpe.model").resolve())
    steps = [int(s) for s in args.steps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    impls = args.impls.split(",")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
            "argv": sys.argv, "corpus": data}
    (Path(args.out) / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    timed = max(steps) if args.timed else -1
    jobs = [(i, s, seed) for seed in seeds for s in steps for i in impls]
    for j in jobs:  # timed runs first, each alone on the GPU
        if j[1] == timed:
            run_one(*j, args, data)
    short = [j for j in jobs if j[1] != timed]
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:  # untimed runs share the GPU
        list(pool.map(lambda j: run_one(*j, args, data), short))


# --- report ---------------------------------------------------------------------------


def report_cmd(args: argparse.Namespace) -> None:
    rows, metas = [], []
    for d in args.results:
        for f in sorted(Path(d).glob("*/result.json")):
            rows.append(json.loads(f.read_text()))
        if (Path(d) / "meta.json").is_file():
            metas.append(json.loads((Path(d) / "meta.json").read_text()))
    print(render(rows, metas, args.command_line))


def _fmt(v, spec: str = "") -> str:
    return "—" if v is None else format(v, spec)


def render(rows: list[dict], metas: list[dict], command_line: str) -> str:
    lines = []
    dev = metas[0]["device"] if metas else "?"
    corpus = metas[0]["corpus"] if metas else {}
    lines.append(f"device: {dev}; torch {metas[0]['torch'] if metas else '?'}; corpus: {corpus.get('documents')} documents, "
                 f"{corpus.get('text_mb')} MB of text, {corpus.get('train_tokens')} train tokens in {corpus.get('train_shards')} shards, "
                 f"{corpus.get('val_tokens')} val tokens")
    lines.append("")
    lines.append(f"command: `{command_line}`")
    lines.append("")
    lines.append("| trainer | steps | seed | ms/step | tokens/s | total bytes | train loss (last) | val_bpb pre-quant | val_bpb quantised (sliding) | rc |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["steps"], r["seed"], r["impl"])):
        tl = r.get("train_loss", {}).get(str(r["steps"]))
        tps = r["batch"] / r["ms_per_step"] * 1000 if r.get("ms_per_step") else None
        lines.append(f"| {r['impl']} | {r['steps']} | {r['seed']} | {_fmt(r.get('ms_per_step'))} | {_fmt(tps, ',.0f')} | "
                     f"{_fmt(r.get('total_bytes'), ',')} | {_fmt(tl)} | {_fmt(r.get('pre_quant_val_bpb'))} | {_fmt(r.get('val_bpb'))} | {r['rc']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("--out", default=".bench_data")
    c.add_argument("--max-mb", type=int, default=60, help="stop adding documents after this much text")
    c.add_argument("--shard-tokens", type=int, default=2_000_000)
    c.add_argument("--val-fraction", type=float, default=0.05)
    c.add_argument("--val-tokens", type=int, default=1_048_577)
    c.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    c.add_argument("--join-chars", type=int, default=0, help="join consecutive documents into ones of at least this many characters "
                   "(4000 for --profile 2026-04-27: FineWeb-like document lengths)")
    c.add_argument("--vocab-size", type=int, default=1024, help="the SentencePiece BPE's vocabulary (8192 for --profile 2026-04-27)")
    r = sub.add_parser("run")
    r.add_argument("--data", default=".bench_data")
    r.add_argument("--ref", default=str(REPO.parent / "shared" / "reference"),
                   help="the record's folder (holding train_gpt.py), or a folder holding the profile's record")
    r.add_argument("--fa3", default=str(REPO / "bench" / "fa3_standin"),
                   help="the folder of the FlashAttention 3 stand-in (flash_attn_interface.py); the 2026-03-23 record runs on ../shared/reference's too")
    r.add_argument("--profile", default="2026-03-23", choices=sorted(PROFILES), help="which record, with its knobs, runs as the reference")
    r.add_argument("--steps", default="30,200,600")
    r.add_argument("--seeds", default="1337")
    r.add_argument("--impls", default="reference,caddie")
    r.add_argument("--batch", type=int, default=196_608)
    r.add_argument("--log-every", type=int, default=50)
    r.add_argument("--parallel", type=int, default=2)
    r.add_argument("--no-timed", dest="timed", action="store_false",
                   help="run every job --parallel at a time (no timings reported from this call)")
    r.add_argument("--prequant-only", action="store_true",
                   help="stop both after training and the pre-quantisation eval (timing runs; the 2026-04-27 record's PREQUANT_ONLY)")
    r.add_argument("--caddie-set", nargs="*", default=[], help="extra caddie knobs, KEY=VALUE")
    r.add_argument("--set-both", nargs="*", default=[], help="knobs both trainers read under one name, KEY=VALUE (e.g. EVAL_STRIDE=0)")
    r.add_argument("--out", default="/tmp/vsref")
    p = sub.add_parser("report")
    p.add_argument("--results", nargs="+", required=True)
    p.add_argument("--command-line", default="")
    args = ap.parse_args()
    {"corpus": build_corpus_cmd, "run": run_cmd, "report": report_cmd}[args.cmd](args)


if __name__ == "__main__":
    main()
