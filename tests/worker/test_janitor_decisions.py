"""The janitor's decisions on plain values."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from worker.janitor import ClusterFacts, StaleRun, decide_clusters, decide_stale_runs
from worker.launchers.base import JobState

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)


def stale(run_id: int, *, has_job: bool = True, state: JobState | None = JobState.RUNNING, attempts: int = 0) -> StaleRun:
    return StaleRun(run_id, "RUNNING", attempts, has_job, state, 30.0)


def test_stale_runs_are_redispatched_while_their_job_is_there() -> None:
    actions = decide_stale_runs([stale(1), stale(2, state=JobState.SUCCEEDED), stale(3, has_job=False, state=None)], max_attempts=3)
    assert [(a.run_id, a.action) for a in actions] == [(1, "redispatch"), (2, "redispatch"), (3, "redispatch")]
    assert "30 s" in actions[0].reason


def test_a_vanished_job_is_requeued_then_failed_when_out_of_attempts() -> None:
    actions = decide_stale_runs([stale(1, state=JobState.LOST), stale(2, state=JobState.LOST, attempts=2)], max_attempts=3)
    assert [(a.run_id, a.action) for a in actions] == [(1, "requeue"), (2, "fail")]
    assert "3 attempts" in actions[1].reason


def test_unknown_job_state_waits() -> None:
    assert decide_stale_runs([stale(1, state=None)], max_attempts=3) == []


def test_clusters_idle_past_keep_warm_or_unowned_are_torn_down() -> None:
    facts = [
        ClusterFacts("busy", in_use=True, idle_since=NOW - timedelta(hours=5), recorded=True),
        ClusterFacts("warm", in_use=False, idle_since=NOW - timedelta(minutes=3), recorded=True),
        ClusterFacts("cold", in_use=False, idle_since=NOW - timedelta(minutes=11), recorded=True),
        ClusterFacts("orphan", in_use=False, idle_since=None, recorded=True),
    ]
    assert [name for name, _ in decide_clusters(facts, NOW, timedelta(minutes=10))] == ["cold", "orphan"]
