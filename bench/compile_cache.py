"""A team's compile cache, timed (worker/launchers/compile_cache.py). Not a test.

Three sealed jobs through the real local launcher, each a script run whose train_gpt.py builds a small GPT-like
model (11 blocks of attention and a squared-ReLU MLP, width 512, bf16 autocast on a GPU), compiles it with
torch.compile and times its first training step (the compile) and the next ten: team 1's first job (a cold
cache), team 1's second (its cache warm), and team 2's first (cold again: no team reads another's cache).

    python bench/compile_cache.py [--out bench/results/compile_cache.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.core.settings import Settings  # noqa: E402
from worker.launchers.base import JobSpec, JobState  # noqa: E402
from worker.launchers.local import LocalLauncher  # noqa: E402

SCRIPT = rb"""
import json, os, time, torch
import torch.nn as nn, torch.nn.functional as F
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
D, H, L, T, B, V = 512, 8, 11, 1024, 8, 8192
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D, bias=False), nn.Linear(D, D, bias=False)
        self.fc, self.out = nn.Linear(D, 4 * D, bias=False), nn.Linear(4 * D, D, bias=False)
    def forward(self, x):
        q, k, v = self.qkv(F.rms_norm(x, (D,))).view(x.size(0), T, 3, H, D // H).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(x.shape))
        return x + self.out(F.relu(self.fc(F.rms_norm(x, (D,)))).square())
class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.blocks = nn.Embedding(V, D), nn.ModuleList(Block() for _ in range(L))
    def forward(self, idx, target):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x)
        return F.cross_entropy(F.linear(F.rms_norm(x, (D,)), self.emb.weight).float().view(-1, V), target.view(-1))
model = GPT().to(dev)
step = torch.compile(model, fullgraph=True)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
idx = torch.randint(0, V, (B if dev == "cuda" else 1, T), device=dev)
def one():
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
        loss = step(idx, idx)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    if dev == "cuda": torch.cuda.synchronize()
t0 = time.perf_counter(); one(); first = time.perf_counter() - t0
t0 = time.perf_counter()
for _ in range(10): one()
steady = (time.perf_counter() - t0) / 10
entries = sum(len(f) for _, _, f in os.walk(os.environ.get("TORCHINDUCTOR_CACHE_DIR", "/nonexistent")))
print("timing:" + json.dumps({"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
      "first_step_s": round(first, 2), "step_ms": round(1000 * steady, 1), "cache_entries": entries}), flush=True)
"""


def run(launcher: LocalLauncher, run_id: int, team_id: int) -> dict:
    job = JobSpec(run_id=run_id, env={"SEED": "1", "RUN_ID": f"caddie-run-{run_id}"}, hardware="", timeout_s=600,
                  script_files={"train_gpt.py": SCRIPT}, team_id=team_id)
    t0 = time.monotonic()
    handle = launcher.submit(launcher.acquire(run_id, ""), job)
    while (status := launcher.status(handle)).state in (JobState.PENDING, JobState.RUNNING):
        time.sleep(0.2)
    log = launcher.read_log(handle, 0).decode()
    line = next((x for x in log.splitlines() if x.startswith("timing:")), None)
    if status.state is not JobState.SUCCEEDED or line is None:
        raise SystemExit(f"job {run_id} ended {status.state}:\n{log[-4000:]}")
    return {**json.loads(line.removeprefix("timing:")), "job_s": round(time.monotonic() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "compile_cache.md")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs per job (default: nvidia-smi's count)")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="compile-cache-"))
    (home / "data" / "datasets" / "fineweb10B_sp1024").mkdir(parents=True)  # the job reads no data; the variant must exist
    launcher = LocalLauncher(Settings(home=home, data_root=home / "data", gpu_count=args.gpus))
    rows = [("team 1, first job (cold)", run(launcher, 1, 1)), ("team 1, second job (its cache)", run(launcher, 2, 1)),
            ("team 2, first job (cold: not team 1's cache)", run(launcher, 3, 2))]
    shutil.rmtree(home, ignore_errors=True)
    lines = [f"- Command: `python bench/compile_cache.py{' --gpus ' + str(args.gpus) if args.gpus is not None else ''}`",
             f"- Machine: {platform.node() or '?'}, {rows[0][1]['device']}, torch {rows[0][1]['torch']}", "",
             "| job | first step (compile) s | step ms after | job s (submit to end) | cache files seen at the end |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {r['first_step_s']} | {r['step_ms']} | {r['job_s']} | {r['cache_entries']} |" for name, r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
