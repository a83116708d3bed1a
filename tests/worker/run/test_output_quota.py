"""The storage quota where a run's outputs are written (issue 17 item 5): the worker stores the
collected files that fit the team's CADDIE_TEAM_STORAGE_QUOTA_BYTES, in the run's order, and
notes on the run what it left out and which quota; the figures are kept and the run ends as it
would have. Real executor, local launcher and PostgreSQL (the executor tests' stand-in trainer)."""

from __future__ import annotations

from sqlalchemy import select

from service.billing.quotas import fit_outputs, outputs_left_out_note
from service.core.models import Artifact, Run, RunEvent
from service.teams.accounts import create_team, create_user
from tests.worker.run.test_executor import go, maker, new_run, settings  # noqa: F401 (fixtures)


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
