"""The storage quota where a run's outputs are written (issue 17 item 5): the worker stores the
collected files that fit the team's CADDIE_TEAM_STORAGE_QUOTA_BYTES, in the run's order, and
notes on the run what it left out and which quota; the figures are kept and the run ends as it
would have. Real executor, local launcher and PostgreSQL (the executor tests' stand-in trainer)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from sqlalchemy import select

from service.billing.quotas import fit_outputs, outputs_left_out_note, team_storage
from service.billing.storage import stored_bytes
from service.core.models import Artifact, Run, RunEvent
from service.core.storage import LocalArtifactStore
from service.teams.accounts import create_team, create_user
from tests.worker.run.test_executor import STAND_IN, go, maker, new_run, settings  # noqa: F401 (fixtures)
from worker.launchers.local import LocalLauncher
from worker.run.executor import execute_run


def test_outputs_fit_in_order_and_a_file_too_big_leaves_room_for_a_smaller_one() -> None:
    files = [("model.int6.ptz", 600), ("train_gpt.py", 300), ("result.json", 50)]
    assert fit_outputs(100, 0, files) == (["model.int6.ptz", "train_gpt.py", "result.json"], [])  # 0: no quota
    assert fit_outputs(100, 1000, files) == (["model.int6.ptz", "train_gpt.py"], [("result.json", 50)])
    assert fit_outputs(500, 1000, files) == (["train_gpt.py", "result.json"], [("model.int6.ptz", 600)])
    note = outputs_left_out_note("golfers", 1000, 500, [("model.int6.ptz", 600)])
    assert "model.int6.ptz (600 bytes)" in note and "CADDIE_TEAM_STORAGE_QUOTA_BYTES" in note and "1,000 bytes" in note and "uses 500" in note


def test_a_team_at_its_quota_keeps_the_runs_figures_and_its_log_and_the_run_says_what_was_not_stored(maker, settings) -> None:  # noqa: F811
    with maker() as s:
        create_team(s, "tight")
        create_user(s, "tight")
        s.commit()
    run_id = new_run(maker, owner="tight")
    tight = settings.model_copy(update={"team_storage_quota_bytes": 1})  # the log's first chunk already fills it
    assert go(maker, tight, run_id) == f"run {run_id} SUCCEEDED"
    with maker() as s:
        run = s.get_one(Run, run_id)
        assert (run.val_bpb, run.artifact_bytes, run.checks_verdict is not None) == (2.5, 1234, True)  # figures and checks kept
        kinds = sorted(s.scalars(select(Artifact.kind).where(Artifact.run_id == run_id)))
        assert kinds == ["log"]  # the log stays the run's record (capped by CADDIE_LOG_MAX_BYTES, not the quota)
        notes = [e.reason for e in s.scalars(select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.from_status == RunEvent.to_status))]
    [note] = notes
    assert note.startswith("not stored: model.int6.ptz (7 bytes), result.json (") and "team 'tight' storage quota (CADDIE_TEAM_STORAGE_QUOTA_BYTES) is 1 bytes" in note
    # With room, the same team's next run stores everything and says nothing.
    again = new_run(maker, owner="tight")
    assert go(maker, settings, again) == f"run {again} SUCCEEDED"
    with maker() as s:
        assert sorted(s.scalars(select(Artifact.kind).where(Artifact.run_id == again))) == ["log", "model", "result"]
        assert not s.scalars(select(RunEvent).where(RunEvent.run_id == again, RunEvent.from_status == RunEvent.to_status)).all()


class MeetingStore(LocalArtifactStore):
    """The real local store; each run's model upload waits for the other's, so both runs have
    looked at the team's room (and stored their files) before either registers them."""

    def __init__(self, root: Path, meeting: threading.Barrier) -> None:
        super().__init__(root)
        self.meeting = meeting

    def put(self, run_id: int, kind: str, path: Path) -> tuple[str, int, str]:
        stored = super().put(run_id, kind, path)
        if kind == "model":
            self.meeting.wait()
        return stored


def test_two_runs_collected_at_once_cannot_both_take_the_last_room(maker, settings) -> None:  # noqa: F811
    """Room for one model: two runs of a team collected at the same moment store one model
    between them, the team stays under its quota, and the other run says what it left out."""
    with maker() as s:
        team = create_team(s, "racers")
        create_user(s, "racers")
        s.commit()
        team_id = team.id
    script = settings.home / "big_model.py"
    script.write_text(STAND_IN.replace('fh.write(b"weights")', 'fh.write(b"w" * 100_000)'))
    quota = 150_000  # one 100,000-byte model and both runs' small files fit; two models do not
    racing = settings.model_copy(update={"trainer_command": [sys.executable, str(script)], "team_storage_quota_bytes": quota})
    store = MeetingStore(settings.home / "artifacts", threading.Barrier(2, timeout=120))
    runs = [new_run(maker, owner="racers") for _ in range(2)]
    outcomes: dict[int, str] = {}

    def drive(run_id: int) -> None:
        outcomes[run_id] = execute_run(run_id, launcher=LocalLauncher(racing), session_factory=maker, store=store, settings=racing)

    threads = [threading.Thread(target=drive, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert outcomes == {run_id: f"run {run_id} SUCCEEDED" for run_id in runs}
    with maker() as s:
        models = {run_id: s.scalars(select(Artifact.uri).where(Artifact.run_id == run_id, Artifact.kind == "model")).all() for run_id in runs}
        notes = {run_id: [e.reason for e in s.scalars(select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.from_status == RunEvent.to_status))]
                 for run_id in runs}  # fmt: skip
        kept = stored_bytes(s, team_id)
        use = team_storage(s, team_id)
    assert sorted(len(uris) for uris in models.values()) == [0, 1]  # one model stored between them
    [loser] = [run_id for run_id, uris in models.items() if not uris]
    [note] = notes[loser]
    assert note.startswith("not stored: model.int6.ptz (100,000 bytes)") and "team 'racers' storage quota (CADDIE_TEAM_STORAGE_QUOTA_BYTES)" in note
    assert not any(notes[run_id] for run_id in runs if run_id != loser)
    assert kept == use.total <= quota  # the running total is the recount, and under the quota
    assert not list((settings.home / "artifacts").glob(f"**/{loser}/model/*"))  # the file left out was removed from the store
