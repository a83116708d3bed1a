"""A sealed job on a real GPU (issue 17 item 1): CUDA works inside the sandbox, with only the
NVIDIA device nodes of the host's /dev (run by hand on a GPU machine, not a test).

    python bench/sandbox_gpu.py [--out bench/results/sandbox_gpu.md]

Wraps a probe in worker.launchers.sandbox.sealed_argv exactly as the local launcher does (its
run folder writable, Python read-only): the probe lists /dev, runs a matmul on the GPU and tries
to reach a host device the sandbox leaves out. Writes what it saw.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from worker.launchers.sandbox import bwrap_path, gpu_devices, sealed_argv  # noqa: E402

# What bwrap's --dev makes, plus the sandbox's /dev/shm.
BWRAP_DEV = {"core", "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"}
PROBE = r'''
import json, os, time
out = {"dev": sorted(os.listdir("/dev")), "uid": os.getuid()}
try:
    import torch
    out["cuda"] = torch.cuda.is_available()
    if out["cuda"]:
        out["gpu"] = torch.cuda.get_device_name(0)
        a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for _ in range(20):
            b = a @ a
        torch.cuda.synchronize()
        out["matmul_tflops"] = round(20 * 2 * 4096**3 / (time.perf_counter() - t0) / 1e12, 1)
        out["matmul_ok"] = bool(torch.isfinite(b.float()).all())
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"[:300]
out["host_devices_reachable"] = [d for d in ("/dev/kvm", "/dev/mem", "/dev/fuse", "/dev/sda", "/dev/nvme0n1") if os.path.exists(d)]
print(json.dumps(out))
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sandbox_gpu.md")
    args = ap.parse_args()
    gpus = gpu_devices()
    host_dev = sorted(os.listdir("/dev"))
    with tempfile.TemporaryDirectory(prefix="sandbox-gpu-") as tmp:
        argv = sealed_argv([sys.executable, "-c", PROBE], workdir=Path(tmp), ro_paths=[])
        t0 = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        seconds = time.monotonic() - t0
    seen = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else {}
    gpu_names = sorted(p.name for p in gpus)
    inside = set(seen.get("dev", []))
    only_gpus = bool(seen) and {n for n in inside if n.startswith("nvidia")} == set(gpu_names) and {n for n in inside if not n.startswith("nvidia")} <= BWRAP_DEV
    bwrap_version = subprocess.run([bwrap_path() or "bwrap", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    lines = [
        "# A sealed job on a real GPU", "",
        f"`python bench/sandbox_gpu.py` on {seen.get('gpu') or 'this machine'} ({bwrap_version}, Python {sys.version.split()[0]}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: the probe wrapped by `worker.launchers.sandbox.sealed_argv` as the local launcher wraps a job.", "",
        f"- host /dev: {len(host_dev)} entries; GPU nodes bound: {', '.join(gpu_names) or 'none'}",
        f"- sandbox exit code {done.returncode} in {seconds:.1f} s" + (f"; stderr: {done.stderr.strip()[-300:]}" if done.returncode else ""),
        f"- inside, uid {seen.get('uid')}; /dev: {', '.join(seen.get('dev', []))}",
        f"- inside, /dev is bwrap's own plus exactly the GPU nodes: {'yes' if only_gpus else 'NO'}; host devices reachable inside: {seen.get('host_devices_reachable')}",
        f"- CUDA inside: {seen.get('cuda')}; bf16 4096x4096 matmul finite: {seen.get('matmul_ok')}, {seen.get('matmul_tflops')} TFLOP/s"
        + (f"; error: {seen['error']}" if seen.get("error") else ""),
    ]  # fmt: skip
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())
    return 0 if seen.get("matmul_ok") and only_gpus else 1


if __name__ == "__main__":
    sys.exit(main())
