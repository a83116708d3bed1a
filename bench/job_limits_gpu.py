"""A running job's memory and disk limits on a real GPU (issue 17): CUDA works sealed under them, pinned host
memory counts as the job's memory, and RLIMIT_AS (not used) would stop CUDA. Run by hand on a GPU machine.

    python bench/job_limits_gpu.py [--out DIR]

Each job goes through worker.launchers.local_wrapper.supervise and worker.launchers.sandbox.sealed_argv
as the local launcher starts it (its memory and disk limits, its sized /tmp and /dev/shm); prints and
writes (DIR/job_limits_gpu.json) what each saw and how each ended.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from worker.launchers.local_wrapper import supervise  # noqa: E402
from worker.launchers.sandbox import TMPFS, sealed_argv  # noqa: E402

GiB = 1 << 30
PROBE = r'''
import json, os, sys, time
import torch
mode = sys.argv[1]
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
def pss():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
out = {"mode": mode}
t0 = time.perf_counter()
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = a @ a
torch.cuda.synchronize()
out["gpu"] = torch.cuda.get_device_name(0)
out["cuda_init_and_matmul_s"] = round(time.perf_counter() - t0, 2)
big = torch.empty(16 << 30, dtype=torch.uint8, device="cuda")  # 16 GiB of GPU memory: not the host's
out["after_cuda"] = {"rss": status("VmRSS"), "pss": pss(), "vmsize": status("VmSize")}
if mode == "ok":
    pinned = torch.empty(1 << 30, dtype=torch.uint8).pin_memory()  # 1 GiB of pinned host memory
    with open("checkpoint.bin", "wb") as fh:
        fh.write(os.urandom(64 << 20))
    with open("/dev/shm/nccl-like", "wb") as fh:
        fh.write(b"\1" * (32 << 20))
    st = os.statvfs("/dev/shm")
    out["shm_size"] = st.f_blocks * st.f_frsize
    out["after_pinning_1gib"] = {"rss": status("VmRSS"), "pss": pss(), "vmsize": status("VmSize")}
elif mode == "pin":
    held = []
    for i in range(12):  # 1 GiB of pinned host memory a step, 12 at most
        held.append(torch.empty(1 << 30, dtype=torch.uint8).pin_memory())
        print(f"pinned {i + 1} GiB rss {status('VmRSS') >> 20} MiB", flush=True)
        time.sleep(0.5)
print("PROBE " + json.dumps(out), flush=True)
'''
AS_PROBE = r'''
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    import torch
    torch.zeros(1, device="cuda")
    print("PROBE " + json.dumps({"rlimit_as": limit, "cuda": "ok"}))
except Exception as exc:
    print("PROBE " + json.dumps({"rlimit_as": limit, "cuda": f"{type(exc).__name__}: {str(exc)[:200]}"}))
'''


def sealed_job(mode: str, memory: int, disk: int, sealed: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="caddie-gpu-limits-") as d:
        work = Path(d)
        (work / "probe.py").write_text(PROBE)
        argv = [sys.executable, "probe.py", mode]
        if sealed:
            argv = sealed_argv(argv, workdir=work, ro_paths=[], tmpfs_bytes=memory)
        t0 = time.monotonic()
        ended = supervise(work, argv, 300, 2, memory, disk, list(TMPFS) if sealed else [])
        log = (work / "stdout.log").read_text(errors="replace")
        probe = next((json.loads(ln[6:]) for ln in log.splitlines() if ln.startswith("PROBE ")), None)
        return {"mode": mode, "sealed": sealed, "memory_limit": memory, "disk_limit": disk, "seconds": round(time.monotonic() - t0, 1),
                "exit_code": ended["exit_code"], "limit_exceeded": ended.get("limit_exceeded", ""), "probe": probe, "log_tail": log[-1500:]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    results: dict = {"ok": sealed_job("ok", 24 * GiB, 4 * GiB), "pin": sealed_job("pin", 6 * GiB, 4 * GiB), "rlimit_as": []}
    if results["ok"]["probe"] is None:  # no sandbox here (e.g. no user namespaces): the limits, unsealed
        results["ok_unsealed"] = sealed_job("ok", 24 * GiB, 4 * GiB, sealed=False)
        results["pin_unsealed"] = sealed_job("pin", 6 * GiB, 4 * GiB, sealed=False)
    for limit in (64 * GiB, 256 * GiB, 1024 * GiB):
        done = subprocess.run([sys.executable, "-c", AS_PROBE, str(limit)], capture_output=True, text=True, timeout=300)
        line = next((ln[6:] for ln in done.stdout.splitlines() if ln.startswith("PROBE ")), None)
        results["rlimit_as"].append(json.loads(line) if line else {"rlimit_as": limit, "exit": done.returncode, "stderr": done.stderr[-500:]})
    text = json.dumps(results, indent=1)
    print(text)
    if ns.out:
        ns.out.mkdir(parents=True, exist_ok=True)
        (ns.out / "job_limits_gpu.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
