"""The janitor's decisions on plain values."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from worker.control.janitor import ClusterFacts, StaleRun, decide_clusters, decide_stale_runs

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)


def stale(run_id: int, *, has_job: bool = True, dispatched: bool = False, silent_s: float = 30.0) -> StaleRun:
    return StaleRun(run_id, silent_s, has_job, dispatched)


def test_silent_runs_are_dispatched_again_whatever_their_job_does() -> None:
    actions = decide_stale_runs([stale(1), stale(2, has_job=False)], resend_after_s=300)
    assert [(a.run_id, a.action) for a in actions] == [(1, "redispatch"), (2, "redispatch")]
    assert "30 s" in actions[0].reason and "re-attach" in actions[0].reason and "no job yet" in actions[1].reason


def test_a_run_whose_message_is_still_in_flight_is_not_sent_again_until_the_resend_window() -> None:
    assert decide_stale_runs([stale(1, dispatched=True, silent_s=299)], resend_after_s=300) == []
    [again] = decide_stale_runs([stale(1, dispatched=True, silent_s=301)], resend_after_s=300)
    assert again.action == "redispatch" and "not taken up" in again.reason


def test_clusters_idle_past_keep_warm_or_unowned_are_torn_down() -> None:
    facts = [
        ClusterFacts("busy", in_use=True, idle_since=NOW - timedelta(hours=5), recorded=True),
        ClusterFacts("warm", in_use=False, idle_since=NOW - timedelta(minutes=3), recorded=True),
        ClusterFacts("cold", in_use=False, idle_since=NOW - timedelta(minutes=11), recorded=True),
        ClusterFacts("orphan", in_use=False, idle_since=None, recorded=True),
    ]
    assert [name for name, _ in decide_clusters(facts, NOW, timedelta(minutes=10))] == ["cold", "orphan"]


def test_an_empty_runs_queue_means_the_message_was_lost_and_it_is_sent_again_at_once() -> None:
    lost = stale(1, dispatched=True, silent_s=30)
    assert [a.run_id for a in decide_stale_runs([lost], resend_after_s=300, queued_messages=0)] == [1]
    assert "lost" in decide_stale_runs([lost], resend_after_s=300, queued_messages=0)[0].reason
    assert decide_stale_runs([lost], resend_after_s=300, queued_messages=2) == []  # still waiting for a worker
    assert decide_stale_runs([lost], resend_after_s=300, queued_messages=None) == []  # cannot tell: wait
