"""What a Python environment holds, printed as one JSON object: run by the Python it describes
(``ENV/bin/python -I env_probe.py``), so it imports nothing of caddie's and works from Python 3.8 on.

    {"python": "3.12.3", "executable": ".../bin/python", "torch": "2.9.1+cu128", "cuda": "12.8",
     "flash_attn": "flash_attn_3 3.0.0", "packages": {"torch": "2.9.1+cu128", ...}}

torch is not imported (seconds, and a CUDA context for nothing): its CUDA version is read from
the ``torch/version.py`` its wheel ships. FlashAttention is whichever of its distributions is
installed (flash_attn: version 2; flash_attn_3 / flash-attn-3: the Hopper build the records use).
"""

import importlib.metadata as md
import json
import platform
import re
import sys

FLASH_ATTN = ("flash_attn", "flash_attn_3")


def _norm(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def report():
    packages = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name and name not in packages:
            packages[name] = dist.version
    by_norm = {_norm(k): v for k, v in packages.items()}
    cuda = None
    if "torch" in by_norm:
        try:
            text = md.distribution("torch").locate_file("torch/version.py").read_text(encoding="utf-8")
            m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
            cuda = m.group(1) if m else None
        except (OSError, md.PackageNotFoundError):
            pass
    flash = [f"{n} {by_norm[n]}" for n in FLASH_ATTN if n in by_norm]
    return {"python": platform.python_version(), "executable": sys.executable, "torch": by_norm.get("torch"), "cuda": cuda,
            "flash_attn": ", ".join(flash) or None, "packages": dict(sorted(packages.items(), key=lambda kv: kv[0].lower()))}


if __name__ == "__main__":
    print(json.dumps(report()))
