"""Queue position, estimated start and waiting reason of queued runs in the API
(GET /runs/{id}, GET /runs, GET /queue), on PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import datetime

from fastapi.testclient import TestClient

from service.core.settings import Settings


def submit(client: TestClient, world, spec, who: str, seeds: list[int]) -> list[int]:  # noqa: ANN001
    r = client.post("/api/v1/runs", json=spec(seeds=seeds), headers=world.h(who))
    assert r.status_code == 201, r.text
    return [run["id"] for run in r.json()["runs"]]


def test_queued_runs_say_where_they_stand(client: TestClient, world, spec, settings: Settings) -> None:
    # One H100:8 slot (CADDIE_MAX_CONCURRENT_RUNS=1); each run expected 600 s + 1200 s overhead = 30 min.
    assert settings.capacity_table == {"*": 1} and settings.run_overhead_s == 1200
    a = submit(client, world, spec, "alice", [1, 2])
    b = submit(client, world, spec, "bob", [3])
    runs = {i: client.get(f"/api/v1/runs/{i}", headers=world.h("alice" if i in a else "bob")).json() for i in a + b}
    # Alternating teams: a[0] now, b[0] after 30 min, a[1] after 60 min.
    assert [runs[i]["queue_position"] for i in (a[0], b[0], a[1])] == [1, 2, 3]
    start = {i: datetime.fromisoformat(runs[i]["estimated_start_at"]) for i in runs}
    assert round((start[b[0]] - start[a[0]]).total_seconds()) == 1800
    assert round((start[a[1]] - start[a[0]]).total_seconds()) == 3600
    assert runs[a[0]]["waiting_reason"] == "starting now"
    assert "waiting for a H100:8 slot" in runs[a[1]]["waiting_reason"]

    listed = client.get("/api/v1/runs", headers=world.h("alice")).json()["items"]
    assert {r["id"]: r["queue_position"] for r in listed} == {a[0]: 1, a[1]: 3}

    queue = client.get("/api/v1/queue", headers=world.h("alice")).json()
    assert [item["id"] for item in queue] == [a[0], a[1]]  # only team-a's runs, soonest first
    assert [item["id"] for item in client.get("/api/v1/queue", headers=world.h("root")).json()] == [a[0], b[0], a[1]]


def test_a_team_over_budget_keeps_its_queue_and_each_run_says_why(client: TestClient, world, spec) -> None:
    a = submit(client, world, spec, "alice", [1, 2])
    r = client.patch("/api/v1/teams/team-a", json={"budget_gpu_hours": 0}, headers=world.h("root"))
    assert r.status_code == 200, r.text
    for run_id in a:
        run = client.get(f"/api/v1/runs/{run_id}", headers=world.h("alice")).json()
        assert run["status"] == "QUEUED" and run["estimated_start_at"] is None and run["queue_position"] is None
        assert "over its budget" in run["waiting_reason"]
    # A budget of 6 GPU-h fits one 4 GPU-h run (30 min x 8 GPUs), not two.
    client.patch("/api/v1/teams/team-a", json={"budget_gpu_hours": 6}, headers=world.h("root"))
    first, second = (client.get(f"/api/v1/runs/{i}", headers=world.h("alice")).json() for i in a)
    assert first["queue_position"] == 1 and second["estimated_start_at"] is None
    assert "within the team's budget" in second["waiting_reason"]


def test_finished_and_running_runs_have_no_queue_fields(client: TestClient, world, spec) -> None:
    run_id = submit(client, world, spec, "alice", [1])[0]
    client.post(f"/api/v1/runs/{run_id}/cancel", headers=world.h("alice"))
    run = client.get(f"/api/v1/runs/{run_id}", headers=world.h("alice")).json()
    assert (run["queue_position"], run["estimated_start_at"], run["waiting_reason"]) == (None, None, None)


def test_run_lists_reuse_a_recent_forecast_but_never_miss_a_new_run(world, spec, db_url, tmp_path) -> None:  # noqa: ANN001
    from service.api.app import create_app

    settings = Settings(home=tmp_path / "home", database_url=db_url, queue_forecast_ttl_s=3600)
    with TestClient(create_app(settings)) as client:
        a = submit(client, world, spec, "alice", [1])
        listed = {r["id"]: r for r in client.get("/api/v1/runs", headers=world.h("alice")).json()["items"]}
        assert listed[a[0]]["queue_position"] == 1
        # A run submitted since the cached forecast is in the next list, with its estimate.
        b = submit(client, world, spec, "alice", [2])
        listed = {r["id"]: r for r in client.get("/api/v1/runs", headers=world.h("alice")).json()["items"]}
        assert (listed[a[0]]["queue_position"], listed[b[0]]["queue_position"]) == (1, 2)
        # The list and the run's own page may lag a budget change by the TTL: opening a
        # queued run reads the shared forecast instead of rebuilding it.
        client.patch("/api/v1/teams/team-a", json={"budget_gpu_hours": 0}, headers=world.h("root"))
        listed = {r["id"]: r for r in client.get("/api/v1/runs", headers=world.h("alice")).json()["items"]}
        assert listed[a[0]]["queue_position"] == 1
        run = client.get(f"/api/v1/runs/{a[0]}", headers=world.h("alice")).json()
        assert run["queue_position"] == 1


def test_the_queue_is_paged(client: TestClient, world, spec) -> None:  # noqa: ANN001
    ids = submit(client, world, spec, "alice", [1, 2, 3])
    page = lambda q: [item["id"] for item in client.get(f"/api/v1/queue?{q}", headers=world.h("alice")).json()]  # noqa: E731
    assert page("limit=2") == ids[:2] and page("limit=2&offset=2") == ids[2:] and page("offset=3") == []
    r = client.get("/api/v1/queue?limit=1001", headers=world.h("alice"))
    assert r.status_code == 422 and "limit" in r.text


def test_a_stale_forecast_is_refreshed_in_the_background(world, spec, db_url, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import time

    from service.api.app import create_app
    from service.queue import positions as queue

    # The forecast's clock is moved past the TTL instead of sleeping: on a loaded CI core a
    # real sleep let the first read's own refresh land after the budget change.
    now = [time.monotonic()]
    monkeypatch.setattr(queue, "_clock", lambda: now[0])
    settings = Settings(home=tmp_path / "home", database_url=db_url, queue_forecast_ttl_s=60.0)
    with TestClient(create_app(settings)) as client:
        a = submit(client, world, spec, "alice", [1])
        assert client.get(f"/api/v1/runs/{a[0]}", headers=world.h("alice")).json()["queue_position"] == 1
        client.patch("/api/v1/teams/team-a", json={"budget_gpu_hours": 0}, headers=world.h("root"))
        # Fresh: within the TTL the page answers from the forecast it has.
        assert client.get(f"/api/v1/runs/{a[0]}", headers=world.h("alice")).json()["queue_position"] == 1
        now[0] += 61
        # Stale: this request answers from the old forecast and starts a refresh off its path.
        assert client.get(f"/api/v1/runs/{a[0]}", headers=world.h("alice")).json()["queue_position"] == 1
        deadline = time.monotonic() + 10
        while client.get(f"/api/v1/runs/{a[0]}", headers=world.h("alice")).json()["queue_position"] is not None:
            assert time.monotonic() < deadline, "the background refresh never landed"
            time.sleep(0.05)
