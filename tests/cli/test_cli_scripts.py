"""`caddie submit --script`: a team's own train_gpt.py from a folder like the challenge's
records/, its files named by where they sit beside it, env and data; a YAML spec whose
script: is relative to the file; `caddie show` says it is a script run and by which sha256."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from service.core.db import get_sessionmaker
from service.core.models import Run, ScriptFile
from tests.cli.conftest import Caddie

SCRIPT = b"print('hello from the team')\n"


@pytest.fixture
def record(tmp_path: Path) -> Path:
    """records/track_10min_16mb/2026-03-23_Own/ with train_gpt.py, a helper and a tokenizer in a subfolder."""
    folder = tmp_path / "parameter-golf" / "records" / "track_10min_16mb" / "2026-03-23_Own"
    (folder / "tok").mkdir(parents=True)
    (folder / "train_gpt.py").write_bytes(SCRIPT)
    (folder / "helper.py").write_bytes(b"X = 1\n")
    (folder / "tok" / "own.model").write_bytes(b"\x00\x01\x02")
    return folder


def ids_of(stdout: str) -> list[int]:
    match = re.search(r"ids ([\d, ]+) \(seeds", stdout)
    assert match, stdout
    return [int(x) for x in match.group(1).split(",")]


def test_submit_a_records_script_with_its_files_env_and_data(caddie: Caddie, record: Path) -> None:
    out = caddie.ok("submit", "--script", str(record / "train_gpt.py"), "--file", str(record / "helper.py"),
                    "--file", str(record / "tok" / "own.model"), "--env", "NUM_LAYERS=11", "--data", "sp1024",
                    "--seeds", "1337,42,2025").stdout
    ids = ids_of(out)
    with get_sessionmaker(caddie.db_url)() as s:
        runs = list(s.scalars(select(Run).where(Run.id.in_(ids)).order_by(Run.id)))
        stored = set(s.scalars(select(ScriptFile.sha256)))
    sha = hashlib.sha256(SCRIPT).hexdigest()
    assert [r.seed for r in runs] == [1337, 42, 2025] and {r.kind for r in runs} == {"script"}
    assert runs[0].name == "2026-03-23_Own" and runs[0].track == "10min_16mb" and runs[0].hardware == "H100:8"
    assert runs[0].spec["script"] == sha and set(runs[0].spec["files"]) == {"helper.py", "tok/own.model"}
    assert runs[0].spec["env"] == {"NUM_LAYERS": "11"} and runs[0].spec["data"] == "sp1024"
    assert sha in stored
    shown = caddie.ok("show", str(ids[0])).stdout
    assert "script" in shown and sha in shown and "sp1024" in shown


def test_a_yaml_spec_names_its_script_relative_to_itself(caddie: Caddie, record: Path) -> None:
    spec = record.parent / "own.yaml"
    spec.write_text("name: own-yaml\ntrack: unlimited\nhardware: cpu\nscript: 2026-03-23_Own/train_gpt.py\n"
                    "files: [2026-03-23_Own/helper.py]\nenv: {TTT_ENABLED: true}\ndata: sp1024\nseeds: [1]\n")
    [run_id] = ids_of(caddie.ok("submit", str(spec)).stdout)
    with get_sessionmaker(caddie.db_url)() as s:
        run = s.get(Run, run_id)
    assert run.kind == "script" and set(run.spec["files"]) == {"helper.py"} and run.spec["env"] == {"TTT_ENABLED": "1"}


def test_mistakes_are_one_line_messages(caddie: Caddie, record: Path, tmp_path: Path) -> None:
    assert "not found" in caddie.fails("submit", "--script", str(record / "nope.py"))
    outside = tmp_path / "elsewhere.py"
    outside.write_text("x = 1\n")
    assert "is not inside the script's folder" in caddie.fails("submit", "--script", str(record / "train_gpt.py"), "--file", str(outside))
    assert "RANK" in caddie.fails("submit", "--script", str(record / "train_gpt.py"), "--env", "RANK=0")
    assert "sp1024, sp4096, sp8192" in caddie.fails("submit", "--script", str(record / "train_gpt.py"), "--data", "sp999")
    assert "give a spec file" in caddie.fails("submit", "--env", "X=1")
    spec = tmp_path / "trainer.yaml"
    spec.write_text("name: n\ntrack: unlimited\nhardware: cpu\nconfig: {}\n")
    assert "name the script" in caddie.fails("submit", str(spec), "--env", "X=1")


def test_a_yaml_spec_declares_its_environment_and_its_requirements_file_goes_up_with_it(caddie: Caddie, record: Path) -> None:
    """Issue 20 item 3: environment: in YAML reaches the spec; the requirements file it names is uploaded even where files: omits it."""
    (record / "requirements.txt").write_bytes(b"brotli\nsentencepiece\n")
    spec = record.parent / "own-env.yaml"
    spec.write_text("name: own-env\ntrack: unlimited\nhardware: cpu\nscript: 2026-03-23_Own/train_gpt.py\ndata: sp1024\nseeds: [1]\n"
                    "environment:\n  requirements: requirements.txt\n  python: '3.12'\n  system_packages: [lrzip]\n")
    [run_id] = ids_of(caddie.ok("submit", str(spec)).stdout)
    with get_sessionmaker(caddie.db_url)() as s:
        run = s.get_one(Run, run_id)
        assert run.spec["environment"] == {"requirements": "requirements.txt", "python": "3.12", "system_packages": ["lrzip"]}
        assert run.spec["files"] == {"requirements.txt": hashlib.sha256(b"brotli\nsentencepiece\n").hexdigest()}
