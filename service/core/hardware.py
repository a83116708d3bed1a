"""Hardware: what a run asks for, what a deployment can provide, and what a node reported.

A spec names a hardware string (``H100:8``, ``cpu``). The deployment declares what it can
really provide (``Settings.provided_hardware``; empty: derived from the launcher, below);
a spec for anything else is refused at submit, or, with ``CADDIE_UNAVAILABLE_HARDWARE=accept``,
queued with a plain sentence saying where it will run. At launch the worker records the
node's GPUs (``NodeHardware``, ``runs.node_hardware``); the rules judge and billing bills that,
not the spec.

Everything here is pure except ``probe_local_node`` (runs ``nvidia-smi -L``) and the cached
``deployment_hardware``, which probes this machine once per process for the local launcher.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

CPU = "cpu"
ANY_HARDWARE = "*"  # a capacity entry for every hardware without its own
# "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)" -> "NVIDIA H100 80GB HBM3"
_SMI_LINE = re.compile(r"^GPU \d+: (?P<name>.+?)(?: \(UUID: [^)]*\))?\s*$")
# The accelerator name SkyPilot and caddie's hardware strings use: H100, H200, A100, L4, ...
_ACCELERATOR = re.compile(r"\b([A-Z]{1,2}\d{1,4}[A-Z]?)\b")


@dataclass(frozen=True)
class NodeHardware:
    """What a node reported about its GPUs: their model ("cpu" without any), how many, and who said so."""

    gpu_name: str
    gpus: int
    source: str  # e.g. "nvidia-smi -L", "CADDIE_GPU_COUNT", "SkyPilot cluster"

    @property
    def hardware(self) -> str:
        """As a hardware string: ``H100:8``, ``cpu``."""
        if self.gpus <= 0:
            return CPU
        return f"{accelerator_of(self.gpu_name)}:{self.gpus}"

    def describe(self) -> str:
        """``8x NVIDIA H100 80GB HBM3``, ``the CPU (no GPU)``."""
        return "the CPU (no GPU)" if self.gpus <= 0 else f"{self.gpus}x {self.gpu_name}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "hardware": self.hardware}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> NodeHardware | None:
        if not d or d.get("gpus") is None:
            return None
        return cls(gpu_name=str(d.get("gpu_name") or CPU), gpus=int(d["gpus"]), source=str(d.get("source") or ""))


@lru_cache(maxsize=1024)  # a forecast asks this of every queued run, of a handful of distinct strings
def gpus_of(hardware: str) -> int:
    """GPUs a hardware string asks for: ``H100:8`` -> 8, ``H100`` -> 1, ``cpu`` -> 0."""
    name, _, count = hardware.partition(":")
    if name.strip().lower() in ("", "cpu", "local"):
        return 0
    try:
        return max(0, int(count)) if count else 1
    except ValueError:
        return 1


def accelerator_of(gpu_name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``H100``; a name with no such token is kept whole, spaces dashed."""
    m = _ACCELERATOR.search(gpu_name.upper())
    return m.group(1) if m else gpu_name.strip().replace(" ", "-") or "gpu"


def parse_gpu_list(text: str, source: str = "nvidia-smi -L") -> NodeHardware:
    """The node from ``nvidia-smi -L``'s output: the first GPU's model (a mixed node is rare and
    judged on its first), the count of GPU lines; no line: the CPU."""
    names = [m.group("name").strip() for line in text.splitlines() if (m := _SMI_LINE.match(line.strip()))]
    if not names:
        return NodeHardware(CPU, 0, source)
    return NodeHardware(names[0], len(names), source)


def probe_local_node(gpu_count: int | None = None) -> NodeHardware:
    """This machine's GPUs (``nvidia-smi -L``; no driver: the CPU). ``gpu_count`` (CADDIE_GPU_COUNT)
    caps the count the local launcher uses; 0 means the CPU whatever is installed."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
        text = out.stdout if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    node = parse_gpu_list(text)
    if gpu_count is None:
        return node
    if gpu_count <= 0:
        return NodeHardware(CPU, 0, "CADDIE_GPU_COUNT=0")
    # The launcher runs torchrun over gpu_count processes; the model is what the driver lists.
    return NodeHardware(node.gpu_name if node.gpus else "GPU", gpu_count, f"{node.source}, count from CADDIE_GPU_COUNT")


def split_list(text: str) -> list[str]:
    return [h.strip() for h in text.split(",") if h.strip()]


def derive_provided(launcher: str, declared: str, allowed: Sequence[str], local: NodeHardware | None) -> list[str]:
    """What the deployment can provide: the declared list, else by launcher: the local launcher
    runs every job on all of this machine's GPUs (torchrun over them) or its CPU, so exactly that;
    SkyPilot provisions any NAME:COUNT of the allowed list (its infra decides whether it comes)."""
    if split_list(declared):
        return split_list(declared)
    if launcher == "local":
        return [local.hardware] if local is not None else [CPU]
    return [h for h in allowed if ":" in h]


@lru_cache(maxsize=8)
def _local_node(gpu_count: int | None) -> NodeHardware:
    return probe_local_node(gpu_count)


def deployment_hardware(settings: Any) -> list[str]:
    """The hardware this deployment provides (see derive_provided); probes this machine once per process."""
    local = _local_node(settings.gpu_count) if settings.launcher == "local" and not split_list(settings.provided_hardware) else None
    return derive_provided(settings.launcher, settings.provided_hardware, settings.hardware_choices, local)


def hardware_options(settings: Any) -> list[str]:
    """What a spec may name: CADDIE_ALLOWED_HARDWARE, plus, on the local launcher, this machine as it is.
    A team's own box is rarely one of the allowed defaults (1x H200, 2x H100, 4x A100 ...): without its own
    hardware in the list, `caddie up` there would refuse every spec (allowed names are not provided, and
    what is provided is not allowed)."""
    allowed = list(settings.hardware_choices)
    if settings.launcher != "local":
        return allowed
    return allowed + [h for h in deployment_hardware(settings) if h not in allowed]


def where_it_runs(asked: str, node: NodeHardware | None, provided: Sequence[str]) -> str:
    """The sentence a run's body and page show: where it ran (its node's report wins), or where it will."""
    if node is not None:
        what = f"{node.describe()} ({node.hardware}), as its node reported ({node.source})"
        if node.hardware == asked:
            return f"ran on {what}"
        return f"asked for {asked}; ran on {what}: judged and billed on what ran"
    if asked in provided:
        return f"runs on {asked}"
    here = ", ".join(provided) or "nothing"
    return (f"asked for {asked}, which this deployment cannot provide (it provides {here}): it will run on "
            f"{provided[0] if len(provided) == 1 else 'one of those'}, judged and billed on what runs (CADDIE_UNAVAILABLE_HARDWARE=accept)")


# --- capacity: how many runs of each hardware may hold a node at once (CADDIE_CAPACITY) ---

def parse_capacity(spec: str, default: int) -> dict[str, int]:
    """``"H100:8=2,cpu=4"`` -> {"H100:8": 2, "cpu": 4, "*": default}. Raises ValueError naming the bad item."""
    out = {ANY_HARDWARE: default}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        hardware, sep, number = item.rpartition("=")
        if not sep or not hardware or not number.strip().isdigit():
            raise ValueError(f"CADDIE_CAPACITY item {item!r}: expected HARDWARE=N, e.g. H100:8=2")
        out[hardware.strip()] = int(number)
    return out


def slots_of(hardware: str, capacity: Mapping[str, int]) -> int:
    """The most concurrent runs of ``hardware``: its own entry, else ``"*"``, else 0."""
    return capacity.get(hardware, capacity.get(ANY_HARDWARE, 0))
