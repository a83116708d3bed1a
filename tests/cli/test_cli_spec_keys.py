"""A spec file may carry every field POST /runs accepts: score_label, public_env and
abort_if_behind included, each submitted through `caddie submit` to the real API and
read back from the stored run; a bad value is the server's message naming the field."""

from __future__ import annotations

from pathlib import Path

from cli.spec import SPEC_KEYS
from service.core.db import get_sessionmaker
from service.core.models import Run
from service.runs.schemas import RunCreate
from tests.cli.conftest import Caddie
from tests.cli.test_cli_scripts import ids_of


def test_the_spec_keys_are_the_bodys_fields() -> None:
    assert set(SPEC_KEYS) == set(RunCreate.model_fields)


def stored(caddie: Caddie, run_id: int) -> Run:
    with get_sessionmaker(caddie.db_url)() as s:
        run = s.get(Run, run_id)
        assert run is not None
        return run


def test_abort_if_behind_from_a_spec_file_is_stored(caddie: Caddie, tmp_path: Path) -> None:
    spec = tmp_path / "abort.yaml"
    spec.write_text("name: abort-rule\ntrack: unlimited\nhardware: cpu\nconfig: {STACK: '2026-03-23'}\nseeds: [3]\n"
                    "abort_if_behind: {step: 1000, margin: 0.02}\n")
    [run_id] = ids_of(caddie.ok("submit", str(spec)).stdout)
    assert stored(caddie, run_id).abort_if_behind == {"step": 1000, "margin": 0.02}
    spec.write_text(spec.read_text().replace("step: 1000", "step: 1001"))  # not a step the trainer logs
    assert "abort_if_behind" in caddie.fails("submit", str(spec))


def test_score_label_and_public_env_from_a_spec_file_are_stored(caddie: Caddie, tmp_path: Path) -> None:
    folder = tmp_path / "own"
    folder.mkdir()
    (folder / "train_gpt.py").write_text("print('x')\n")
    spec = tmp_path / "script.yaml"
    spec.write_text("name: own-format\ntrack: unlimited\nhardware: cpu\nscript: own/train_gpt.py\nseeds: [1]\n"
                    "env: {NUM_LAYERS: 11, SECRET_TRICK: 1}\npublic_env: [NUM_LAYERS]\nscore_label: my_eval_exact\n")
    [run_id] = ids_of(caddie.ok("submit", str(spec)).stdout)
    run = stored(caddie, run_id)
    assert run.spec["score_label"] == "my_eval_exact" and run.spec["public_env"] == ["NUM_LAYERS"]
    spec.write_text(spec.read_text().replace("public_env: [NUM_LAYERS]", "public_env: [NOT_SET]"))
    assert "public_env" in caddie.fails("submit", str(spec))
    spec.write_text(spec.read_text().replace("public_env: [NOT_SET]", "public_env: []").replace("my_eval_exact", "'('"))
    assert "score_label" in caddie.fails("submit", str(spec))
