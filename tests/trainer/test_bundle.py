"""The single-file bundle is the package: same result, standalone, no dead weight."""

import ast
import json
import subprocess
import sys

import pytest
from test_train import REPO, TINY, corpus_knobs, run_trainer

from trainer.bundle import build_bundle, bundle_module_order, bundled_source, pack, prune_unused, strip_docstrings, strip_module, unpack


def test_module_order_follows_imports():
    sources = {"a": "from trainer.b import x\n", "b": "from trainer.c import y\n", "c": "import os\n"}
    assert bundle_module_order(sources) == ["c", "b", "a"]


def test_strip_and_prune():
    src = ('"""Docs.\n\nfrom trainer.x import f  (an example in prose stays)\n"""\n'
           'from __future__ import annotations\nimport os\nfrom trainer.x import (\n    f,\n)\n\n'
           'def used():\n    return os.sep\n\ndef helper_of_dead():\n    return 1\n\n'
           'def dead():\n    return helper_of_dead()\n\n'
           'if __name__ == "__main__":\n    dead()\n\nprint(used())\n')
    stripped = strip_module(src, keep_main_block=False)
    assert "__future__" not in stripped and "__name__" not in stripped and "    f,\n" not in stripped
    assert stripped.count("from trainer") == 1 and "(an example in prose stays)" in stripped
    pruned = prune_unused(stripped)
    assert "def used" in pruned and "def dead" not in pruned and "helper_of_dead" not in pruned
    assert "def dead" in prune_unused(strip_module(src, keep_main_block=True))


def test_strip_docstrings_keeps_code_comments_and_strings_that_are_not_docstrings():
    src = ('"""Module doc."""\nimport os\n\n\nclass A:\n    """Class doc\n    on two lines."""\n\n'
           '    def f(self):  # why\n        """Only a docstring."""\n\n'
           '    def g(self):\n        """σ doc."""\n        x = "not a docstring"\n        return x\n\n\n'
           'def h(): """same line"""; return 1\n')
    out = strip_docstrings(src)
    ns: dict = {}
    exec(compile(out, "t.py", "exec"), ns)
    assert not any(d in out for d in ("Module doc", "Class doc", "on two lines", "Only a docstring", "σ doc"))
    assert "# why" in out and '"not a docstring"' in out and '"""same line"""' in out
    assert ns["A"]().f() is None and ns["A"]().g() == "not a docstring" and ns["h"]() == 1
    assert ns["A"].__doc__ is None


def test_bundle_is_self_contained_and_lean():
    text = build_bundle()
    compile(text, "train_gpt.py", "exec")
    assert "from trainer." not in text and "import trainer" not in text
    assert text.splitlines().count("from __future__ import annotations") == 1
    assert "def build_bundle" not in text  # the bundler does not ship inside the bundle
    assert ast.dump(ast.parse(unpack(bundled_source()))) == ast.dump(ast.parse(text))  # what a run ships runs this very tree
    # Docstrings are code bytes too: none ship (they were 12 kB of ~97 kB).
    tree = ast.parse(text)
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(n)]
    strings = [n for n in tree.body[1:] if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)]
    assert not strings, "a module docstring shipped"  # the header's own line is the only top-level string


def test_bundled_script_reproduces_the_package(smoke_corpus, tmp_path):
    script = tmp_path / "standalone" / "train_gpt.py"
    script.parent.mkdir()
    proc = subprocess.run([sys.executable, "-m", "trainer.bundle", "--out", str(script)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    knobs = {**TINY, **corpus_knobs(smoke_corpus), "SEED": 11}
    package = run_trainer([sys.executable, "-m", "trainer"], {**knobs, "OUTPUT_DIR": str(tmp_path / "pkg")})
    assert package.returncode == 0, package.stderr[-3000:]
    # run outside the repo, with no way to import the package
    bundled = run_trainer([sys.executable, str(script)], {**knobs, "OUTPUT_DIR": str(tmp_path / "bundle")}, cwd=script.parent)
    assert bundled.returncode == 0, bundled.stderr[-3000:]
    a = json.loads((tmp_path / "pkg" / "result.json").read_text())
    b = json.loads((tmp_path / "bundle" / "result.json").read_text())
    assert abs(a["val_bpb"] - b["val_bpb"]) < 1e-6 and abs(a["pre_ttt_bpb"] - b["pre_ttt_bpb"]) < 1e-6
    assert a["code_bytes"] == b["code_bytes"] == script.stat().st_size
    assert a["model_bytes"] == b["model_bytes"]


def test_a_packed_script_runs_the_same_tree_in_a_fraction_of_the_bytes(tmp_path):
    """What a run counts as code is the packed bundle: the frontier's model leaves about 130 kB for code,
    and the readable bundle is 157 kB."""
    readable = build_bundle()
    packed = bundled_source()
    assert len(packed.encode()) < 0.35 * len(readable.encode()) and len(packed.encode()) < 60_000
    assert packed.isascii() and packed.count("\n") == 2
    script = tmp_path / "s.py"
    script.write_text(pack('"""doc"""\nimport sys  # a comment\nprint(f"{__name__}:{sys.argv[1]}:{__file__ == sys.argv[0]}")\n'))
    out = subprocess.run([sys.executable, str(script), "x"], capture_output=True, text=True, check=True).stdout
    assert out == "__main__:x:True\n"  # runs as the main script, its own __file__ kept (the bundle reads its own bytes)
    with pytest.raises(ValueError):
        unpack(readable)
