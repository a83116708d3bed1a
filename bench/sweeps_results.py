"""bench/results/sweeps.md holds one section per sweep bench (sweeps_real.py, sweeps_sim.py); each
bench rewrites only its own, between ``<!-- NAME -->`` and ``<!-- /NAME -->``, and appends it when absent."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, name: str, text: str) -> None:
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else "# Sweeps (issue 24)\n"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)
