"""Bundle the trainer package into one self-contained script, as a challenge submission needs.

    python -m trainer.bundle --out train_gpt.py
    python train_gpt.py            # same behaviour as `python -m trainer`

The modules are concatenated in dependency order with their `from trainer.x import`
lines and (except for __main__) their `if __name__ == "__main__":` blocks removed;
top-level functions, classes and constants that nothing reachable from the entry
point uses are dropped (command-line tools such as the data downloader), since
every byte of code counts towards the 16,000,000-byte artifact. For the same reason
docstrings are dropped (12 kB of the bundle).

What a run counts and ships as its code is that bundle packed (``pack``): re-printed from
its syntax tree (comments and layout gone), lzma-compressed and base85-encoded inside a
two-line script that unpacks and runs it, about 43 kB for 157 kB. The records count
their code this way (the 2026-04-27 record: a brotli wrapper of its minified script,
31,999 bytes for 157,868); at the frontier the model alone is 15.87 MB, and the
readable bundle would take the artifact past 16,000,000 bytes. ``--readable`` writes
the bundle unpacked, for reading; it runs the same and counts its own bytes.
"""

from __future__ import annotations

import argparse
import ast
import base64
import lzma
import os
import re
from pathlib import Path

BUNDLE_MODULES = ("config", "recipes", "data", "bpb", "gptq", "quant", "model", "optim", "evaluate", "bundle", "train", "__main__")
BUNDLE_HEADER = '"""caddie shared trainer, bundled into one file by `python -m trainer.bundle`."""\nfrom __future__ import annotations\n'
# Inside the bundle, this module shrinks to the one function the trainer calls:
# the script reads its own text instead of carrying the bundler along.
BUNDLED_SELF = '''
def bundled_source() -> str:
    """This script's own text (its bytes are the submission's code bytes)."""
    return Path(os.path.abspath(__file__)).read_text(encoding="utf-8")
'''


def _sibling_module(node: ast.stmt) -> str | None:
    """'x' for a top-level `from trainer.x import ...`, else None."""
    if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("trainer."):
        return node.module.split(".", 1)[1]
    return None


def _is_main_block(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":` at top level."""
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"
            and len(t.comparators) == 1 and isinstance(t.comparators[0], ast.Constant) and t.comparators[0].value == "__main__")


def bundle_module_order(sources: dict[str, str]) -> list[str]:
    """Modules sorted so each comes after the siblings it imports (ties: BUNDLE_MODULES order)."""
    deps = {m: {d for node in ast.parse(src).body if (d := _sibling_module(node))} for m, src in sources.items()}
    order: list[str] = []
    while len(order) < len(sources):
        ready = [m for m in sources if m not in order and deps[m] <= set(order)]
        if not ready:
            raise ValueError(f"import cycle among trainer modules: {sorted(set(sources) - set(order))}")
        order.append(ready[0])
    return order


def strip_module(src: str, keep_main_block: bool) -> str:
    """Drop sibling imports, `from __future__` and (unless kept) the __main__ block."""
    drop: set[int] = set()
    for node in ast.parse(src).body:
        future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if future or _sibling_module(node) or (_is_main_block(node) and not keep_main_block):
            drop.update(range(node.lineno - 1, node.end_lineno))
    lines = src.splitlines()
    return "\n".join(line for n, line in enumerate(lines) if n not in drop).strip("\n") + "\n"


def _defined_names(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()


def _names_used(node: ast.stmt) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def prune_unused(src: str) -> str:
    """Remove top-level defs/assignments that no entry-point code reaches.

    Roots are all other top-level statements (imports, try blocks, the __main__
    block); a definition is kept when a kept statement names it, transitively.
    """
    tree = ast.parse(src)
    defs = [(node, _defined_names(node)) for node in tree.body]
    keep = [not names for node, names in defs]
    needed: set[str] = set().union(*(_names_used(node) for (node, _), k in zip(defs, keep) if k))
    changed = True
    while changed:
        changed = False
        for i, (node, names) in enumerate(defs):
            if not keep[i] and names & needed:
                keep[i] = changed = True
                needed |= _names_used(node)
    lines = src.splitlines()
    drop: set[int] = set()
    for (node, _), k in zip(defs, keep):
        if not k:
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            drop.update(range(start - 1, node.end_lineno))
    kept = "\n".join(line for i, line in enumerate(lines) if i not in drop)
    return re.sub(r"\n{4,}", "\n\n\n", kept) + "\n"


def strip_docstrings(src: str) -> str:
    """Remove the docstring of the module and of every class and function.

    Only docstrings that fill their own lines go (the usual layout); a body left with
    nothing else gets ``pass``.
    """
    tree = ast.parse(src)
    lines = src.splitlines()
    drop: set[int] = set()
    stub: dict[int, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
            continue
        doc = node.body[0]
        if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
            continue
        first, last = lines[doc.lineno - 1].encode(), lines[doc.end_lineno - 1].encode()  # offsets are in UTF-8 bytes
        if first[:doc.col_offset].strip() or last[doc.end_col_offset:].strip():
            continue  # shares a line with code
        drop.update(range(doc.lineno - 1, doc.end_lineno))
        if len(node.body) == 1:
            stub[doc.lineno - 1] = " " * doc.col_offset + "pass"
    out = [stub.get(i, line) for i, line in enumerate(lines) if i not in drop or i in stub]
    return "\n".join(out) + "\n"


def build_bundle(package_dir: Path | None = None) -> str:
    """The single-file trainer as text."""
    package_dir = package_dir or Path(os.path.abspath(__file__)).parent
    sources = {m: (package_dir / f"{m}.py").read_text(encoding="utf-8") for m in BUNDLE_MODULES}
    parts = [BUNDLE_HEADER]
    for m in bundle_module_order(sources):
        parts.append(f"\n# ---- trainer/{m}.py ----\n")
        # Per module: once concatenated, a module's docstring is no longer the first statement.
        parts.append(strip_docstrings(BUNDLED_SELF if m == "bundle" else strip_module(sources[m], keep_main_block=m == "__main__")))
    return prune_unused("".join(parts))


PACKED_PRELUDE = "import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("


def pack(text: str) -> str:
    """``text`` (a script) as a self-unpacking script: re-printed from its syntax tree, so comments and
    layout go (the tree, and so what runs, is the same), then lzma (xz, preset 9e) and base85."""
    tree = ast.parse(text)
    packed = lzma.compress(ast.unparse(tree).encode("utf-8"), preset=9 | lzma.PRESET_EXTREME)
    return PACKED_PRELUDE + '"' + base64.b85encode(packed).decode("ascii") + '")))\n'


def unpack(packed: str) -> str:
    """The script a ``pack``-ed one runs (for reading it, and for tests)."""
    if not packed.startswith(PACKED_PRELUDE):
        raise ValueError("not a packed bundle")
    payload = packed[len(PACKED_PRELUDE):].strip().removeprefix('"').removesuffix('")))')
    return lzma.decompress(base64.b85decode(payload)).decode("utf-8")


def bundled_source() -> str:
    """The single-file trainer this package bundles into, packed: the bytes a run counts as its code."""
    return pack(build_bundle())


def bundle_main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m trainer.bundle", description="Write the trainer as one self-contained script.")
    ap.add_argument("--out", default="train_gpt.py", help="output path (default train_gpt.py)")
    ap.add_argument("--readable", action="store_true", help="the bundle unpacked, comments kept (larger: it counts its own bytes)")
    args = ap.parse_args(argv)
    text = build_bundle() if args.readable else bundled_source()
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}: {len(text.encode('utf-8'))} bytes")


if __name__ == "__main__":
    bundle_main()
