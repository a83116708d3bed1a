"""/groups, /groups/{key}, compare, publish/unpublish and /leaderboard through the real
app on both backends. Runs are submitted through the API; their results are then
written on the Run rows the way the executor writes them (columns + result.json,
``judge_run``, one commit).

team-a: alice (member), aaron (admin); team-b: bob; root: global admin.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from scipy.stats import t as t_dist
from sqlalchemy.orm import Session

from service.core.models import Run, RunGroup, utcnow
from service.results.queries import judge_run

RUNS = "/api/v1/runs"
GROUPS = "/api/v1/groups"
BOARD = "/api/v1/leaderboard"

# result.json of a run that passes every rule on 8x H100 (keys as the trainer writes them).
RESULT: dict[str, Any] = {
    "status": "succeeded", "error": None, "total_bytes": 15_900_000, "code_bytes": 60_000, "model_bytes": 15_840_000,
    "steps": 7000, "train_seconds": 599.0, "eval_seconds": 530.0, "peak_memory_mib": 30_000.0, "world_size": 8,
    "trainer_revision": "0123abcd", "val_tokens_scored": 62_021_631, "val_tokens_total": 62_021_631,
    "ttt_protocol": "score_first", "train_shards": ["fineweb_train_000000.bin", "fineweb_train_000001.bin"],
    "val_shards": ["fineweb_val_000000.bin"], "gpu_name": "NVIDIA H100 80GB HBM3",
    # what the rules judge by (issue 19): the hash of the code that ran, the files' content fingerprints
    "code_sha256": "c" * 64, "code_dirty": False, "train_fingerprints": ["a" * 64, "b" * 64], "val_fingerprints": ["d" * 64],
}
# result.json key -> Run column, as worker/run/executor.py's RESULT_COLUMNS.
COLUMNS = {"val_bpb": "val_bpb", "val_loss": "val_loss", "pre_ttt_bpb": "pre_ttt_bpb", "total_bytes": "artifact_bytes",
           "model_bytes": "model_bytes", "code_bytes": "code_bytes", "train_seconds": "train_seconds",
           "eval_seconds": "eval_seconds", "steps": "steps", "peak_memory_mib": "peak_memory_mib"}


def submit(client: TestClient, world, who: str, *, name: str = "baseline", config: dict | None = None, seeds: list[int],
           track: str = "10min_16mb", hardware: str = "H100:8", **more: Any) -> dict:
    """The configs here are written against the 2026-03-23 stack: its STACK goes into a config that names none."""
    config = {"STACK": "2026-03-23", **(config or {})}
    body = {"name": name, "track": track, "hardware": hardware, "config": config, "seeds": seeds, **more}
    r = client.post(RUNS, json=body, headers=world.h(who))
    assert r.status_code == 201, r.text
    return r.json()


def finish(session: Session, run_id: int, status: str = "SUCCEEDED", reason: str = "", **result: Any) -> None:
    """What the executor writes when a run ends: the result's figures into the columns,
    result.json itself, the rule checks, the final state; one commit."""
    session.expire_all()
    run = session.get_one(Run, run_id)
    now = utcnow()
    run.status, run.status_reason = status, reason
    run.started_at, run.finished_at = now - timedelta(minutes=20), now
    if status == "SUCCEEDED":
        full = {**RESULT, "seed": run.seed, **result}
        for key, column in COLUMNS.items():
            if full.get(key) is not None:
                setattr(run, column, full[key])
        run.result = full
        judge_run(run)
    session.commit()


def finish_all(session: Session, body: dict, losses: list[float | None], **result: Any) -> None:
    """One val_loss per run of a submission (None: the run failed); val_bpb = loss / 1.6888."""
    for run, loss in zip(body["runs"], losses, strict=True):
        if loss is None:
            finish(session, run["id"], "FAILED", "node lost")
        else:
            finish(session, run["id"], val_loss=loss, val_bpb=loss / 1.6888, **result)


def get(client: TestClient, world, who: str, url: str, **params: Any) -> Any:
    r = client.get(url, params=params, headers=world.h(who))
    assert r.status_code == 200, r.text
    return r.json()


def keys(groups: list[dict]) -> set[str]:
    return {g["key"] for g in groups}


def board(client: TestClient, world, who: str, **params: Any) -> list[tuple[int, str]]:
    return [(e["rank"], e["group"]["key"]) for e in get(client, world, who, BOARD, **params)["entries"]]


# --- figures ------------------------------------------------------------------------------
def test_group_figures_count_only_succeeded_runs_and_say_why_the_others_do_not(client: TestClient, world, session: Session) -> None:
    body = submit(client, world, "alice", name="xsa", config={"XSA_LAST_N": 9, "BIGRAM_VOCAB_SIZE": 3072}, seeds=[1, 2, 3, 4, 5, 6])
    ids = [r["id"] for r in body["runs"]]
    sizes = [15_000_000, 15_300_000, 15_600_000]
    for run_id, (bpb, loss), size, train in zip(ids[:3], [(1.12, 1.89), (1.10, 1.86), (1.14, 1.92)], sizes, [590.0, 595.0, 600.0]):
        finish(session, run_id, val_bpb=bpb, val_loss=loss, total_bytes=size, train_seconds=train)
    finish(session, ids[3], "FAILED", "node lost")
    finish(session, ids[4], "CANCELLED", "cancelled by alice")
    # ids[5] stays QUEUED

    [g] = get(client, world, "alice", GROUPS)
    assert g["key"] == body["group_key"] and g["name"] == "xsa" and g["team"] == "team-a"
    assert g["diff"] == "BIGRAM_VOCAB_SIZE=3072 STACK=2026-03-23 XSA_LAST_N=9"
    assert g["config"] == {"BIGRAM_VOCAB_SIZE": 3072, "STACK": "2026-03-23", "XSA_LAST_N": 9}
    assert (g["n"], g["runs_total"], g["not_counted"]) == (3, 6, 3)
    # by hand: bpb 1.10, 1.12, 1.14 -> mean 1.12, s = sqrt((0.02² + 0 + 0.02²) / 2) = 0.02; loss likewise 1.89 and 0.03
    assert g["val_bpb"]["n"] == 3 and g["val_bpb"]["mean"] == pytest.approx(1.12) and g["val_bpb"]["std"] == pytest.approx(0.02)
    assert g["val_loss"]["mean"] == pytest.approx(1.89) and g["val_loss"]["std"] == pytest.approx(0.03)
    assert (g["val_bpb"]["min"], g["val_bpb"]["max"]) == (1.10, 1.14)
    assert (g["best_seed"], g["worst_seed"]) == (2, 3)
    assert g["mean_artifact_bytes"] == pytest.approx(15_300_000) and g["max_artifact_bytes"] == 15_600_000
    assert g["mean_train_seconds"] == pytest.approx(595.0) and g["mean_eval_seconds"] == pytest.approx(530.0)
    assert g["checks_verdict"] == "pass" and g["published"] is False and g["allow_noncompliant"] is False
    assert [c["rule"] for c in g["checks"]] == ["artifact_bytes", "train_time", "eval_time", "full_val", "ttt_protocol",
                                                "no_val_in_train", "code_revision"]
    assert all(c["verdict"] == "pass" and c["counts"]["pass"] == 3 for c in g["checks"])

    d = get(client, world, "alice", f"{GROUPS}/{body['group_key']}")
    assert d["n"] == 3 and d["val_bpb"] == g["val_bpb"]
    seeds = {s["seed"]: s for s in d["seeds"]}
    assert [s["run_id"] for s in d["seeds"]] == ids
    assert [seeds[s]["counted"] for s in (1, 2, 3, 4, 5, 6)] == [True, True, True, False, False, False]
    assert seeds[2]["val_bpb"] == 1.10 and seeds[2]["artifact_bytes"] == 15_300_000 and seeds[2]["note"] == ""
    assert seeds[2]["checks_verdict"] == "pass" and len(seeds[2]["checks"]) == 7
    assert seeds[4]["status"] == "FAILED" and "failed" in seeds[4]["note"] and "node lost" in seeds[4]["note"] and "not counted" in seeds[4]["note"]
    assert seeds[5]["status"] == "CANCELLED" and "cancelled" in seeds[5]["note"] and "not counted" in seeds[5]["note"]
    assert seeds[6]["status"] == "QUEUED" and "queued" in seeds[6]["note"]
    assert seeds[4]["checks"] == [] and seeds[4]["checks_verdict"] == "not_comparable"
    # The only group of its team: nothing to compare against, so never eligible.
    assert d["baseline"] is None and d["comparison"] is None
    assert d["eligibility"] == {"eligible": False, "reasons": ["no baseline group to compare against"]}


def test_a_broken_rule_shows_in_the_group_and_on_the_run(client: TestClient, world, session: Session) -> None:
    body = submit(client, world, "alice", seeds=[1, 2])
    a, b = (r["id"] for r in body["runs"])
    before = get(client, world, "alice", f"{RUNS}/{a}")
    assert (before["checks"], before["checks_verdict"]) == (None, None)
    finish(session, a, val_bpb=1.1, val_loss=1.9)
    finish(session, b, val_bpb=1.1, val_loss=1.9, total_bytes=16_000_001, ttt_protocol="multi_epoch")

    ok = get(client, world, "alice", f"{RUNS}/{a}")
    assert ok["checks_verdict"] == "pass" and [c["verdict"] for c in ok["checks"]] == ["pass"] * 7
    bad = get(client, world, "alice", f"{RUNS}/{b}")
    assert bad["checks_verdict"] == "fail"
    checks = {c["rule"]: c for c in bad["checks"]}
    assert checks["artifact_bytes"] == {"rule": "artifact_bytes", "verdict": "fail", "figure": 16_000_001, "limit": 16_000_000,
                                        "reason": "artifact 16,000,001 bytes > 16,000,000 (over by 1)"}
    assert checks["ttt_protocol"]["verdict"] == "fail" and "'multi_epoch'" in checks["ttt_protocol"]["reason"]

    g = get(client, world, "alice", f"{GROUPS}/{body['group_key']}")
    assert g["checks_verdict"] == "fail"
    rules = {c["rule"]: c for c in g["checks"]}
    assert rules["artifact_bytes"]["counts"] == {"pass": 1, "fail": 1, "not_comparable": 0}
    assert rules["artifact_bytes"]["reasons"] == ["artifact 16,000,001 bytes > 16,000,000 (over by 1)"]
    assert any("checks failed: artifact_bytes, ttt_protocol" in r for r in g["eligibility"]["reasons"])


# --- groups per team; keys and prefixes --------------------------------------------------------
def test_the_same_config_from_two_teams_makes_two_groups(client: TestClient, world, session: Session) -> None:
    a = submit(client, world, "alice", config={"NUM_LAYERS": 9}, seeds=[1])
    a2 = submit(client, world, "aaron", name="again", config={"num_layers": 9}, seeds=[2])
    b = submit(client, world, "bob", config={"NUM_LAYERS": 9}, seeds=[1])
    assert a["group_key"] == a2["group_key"] != b["group_key"]
    assert keys(get(client, world, "alice", GROUPS)) == {a["group_key"]}
    assert keys(get(client, world, "bob", GROUPS)) == {b["group_key"]}
    assert keys(get(client, world, "root", GROUPS)) == {a["group_key"], b["group_key"]}
    session.expire_all()
    rows = {g.key: (g.team.name, g.name) for g in session.query(RunGroup)}
    assert rows == {a["group_key"]: ("team-a", "baseline"), b["group_key"]: ("team-b", "baseline")}  # named by the first submission
    assert get(client, world, "alice", f"{GROUPS}/{a['group_key']}")["runs_total"] == 2


def test_a_group_is_found_by_a_prefix_of_six_or_more_hex_characters(client: TestClient, world) -> None:
    key = submit(client, world, "alice", seeds=[1])["group_key"]
    for prefix in (key[:6], key[:10], key[:6].upper(), key):
        assert get(client, world, "alice", f"{GROUPS}/{prefix}")["key"] == key
    for short in (key[:5], key[:1], "zzzzzz", "abc-12"):
        r = client.get(f"{GROUPS}/{short}", headers=world.h("alice"))
        assert r.status_code == 422, (short, r.text)
        assert "at least 6" in r.json()["detail"][0]["msg"]
    r = client.get(f"{GROUPS}/{'0' * 64}", headers=world.h("alice"))
    assert r.status_code == 404


def test_an_ambiguous_prefix_is_422_among_visible_groups_only(client: TestClient, world, session: Session) -> None:
    now = utcnow()
    made = {"abcdef0" + "0" * 57: "team-a", "abcdef1" + "1" * 57: "team-a", "abcdef2" + "2" * 57: "team-b"}
    for key, team in made.items():
        session.add(RunGroup(key=key, team_id=world.team_ids[team], name=key[:7], track="10min_16mb", hardware="H100:8",
                             config={}, allow_noncompliant=False, created_at=now))
    session.commit()
    r = client.get(f"{GROUPS}/abcdef", headers=world.h("alice"))
    assert r.status_code == 422 and "several groups" in r.json()["detail"][0]["msg"]
    assert get(client, world, "alice", f"{GROUPS}/abcdef1")["key"] == "abcdef1" + "1" * 57
    # bob sees one of the three: the prefix is his group's, team-a's do not exist for him.
    assert get(client, world, "bob", f"{GROUPS}/abcdef")["key"] == "abcdef2" + "2" * 57
    assert client.get(f"{GROUPS}/abcdef0", headers=world.h("bob")).status_code == 404


# --- visibility and publication ------------------------------------------------------------------
def test_unpublished_groups_are_private_and_publishing_shows_them_to_every_team(client: TestClient, world, session: Session) -> None:
    mine = submit(client, world, "alice", name="xsa", config={"XSA_LAST_N": 9}, seeds=[1, 2, 3])
    secret = submit(client, world, "alice", name="secret", config={"NUM_LAYERS": 12}, seeds=[1, 2, 3])
    bobs = submit(client, world, "bob", name="bobs", seeds=[1])
    finish_all(session, mine, [1.880, 1.882, 1.881])
    finish_all(session, secret, [1.890, 1.892, 1.891])
    finish_all(session, bobs, [1.95])
    key = mine["group_key"]

    # Not published: bob cannot see it anywhere, nor touch it.
    for url in (f"{GROUPS}/{key}", f"{GROUPS}/{key[:8]}", f"{GROUPS}/{bobs['group_key']}/compare/{key}"):
        assert client.get(url, headers=world.h("bob")).status_code == 404, url
    assert keys(get(client, world, "bob", GROUPS)) == {bobs["group_key"]}
    assert board(client, world, "bob", track="10min_16mb") == [(1, bobs["group_key"])]
    for action in ("publish", "unpublish"):
        assert client.post(f"{GROUPS}/{key}/{action}", headers=world.h("bob")).status_code == 404
    # alice sees her team's two groups, not bob's; the admin sees all three.
    assert board(client, world, "alice", track="10min_16mb") == [(1, key), (2, secret["group_key"])]
    assert len(board(client, world, "root", track="10min_16mb")) == 3

    r = client.post(f"{GROUPS}/{key[:8]}/publish", headers=world.h("alice"))  # a member may publish
    assert r.status_code == 200, r.text
    assert r.json()["published"] is True and r.json()["published_at"]
    assert client.post(f"{GROUPS}/{key}/publish", headers=world.h("alice")).status_code == 200  # twice is fine

    assert keys(get(client, world, "bob", GROUPS)) == {bobs["group_key"], key}
    assert keys(get(client, world, "bob", GROUPS, published=True)) == {key}
    assert board(client, world, "bob", track="10min_16mb") == [(1, key), (2, bobs["group_key"])]
    seen = get(client, world, "bob", f"{GROUPS}/{key}")
    assert seen["n"] == 3 and seen["team"] == "team-a" and seen["published"] is True
    # The unpublished group of team-a stays hidden, even as the published one's baseline.
    assert seen["baseline"] is None or seen["baseline"]["key"] != secret["group_key"]
    assert secret["group_key"] not in str(seen)
    assert client.get(f"{GROUPS}/{secret['group_key']}", headers=world.h("bob")).status_code == 404
    # bob may compare his group against the published one, not publish or unpublish it.
    assert get(client, world, "bob", f"{GROUPS}/{bobs['group_key']}/compare/{key}")["baseline"] == key
    for action in ("publish", "unpublish"):
        r = client.post(f"{GROUPS}/{key}/{action}", headers=world.h("bob"))
        assert r.status_code == 403, r.text
    # team-a still sees its own leader as the default baseline.
    assert get(client, world, "alice", f"{GROUPS}/{key}")["baseline"]["key"] == secret["group_key"]

    r = client.post(f"{GROUPS}/{key}/unpublish", headers=world.h("aaron"))
    assert r.status_code == 200 and r.json()["published"] is False and r.json()["published_at"] is None
    assert client.get(f"{GROUPS}/{key}", headers=world.h("bob")).status_code == 404
    assert keys(get(client, world, "bob", GROUPS)) == {bobs["group_key"]}
    assert board(client, world, "bob", track="10min_16mb") == [(1, bobs["group_key"])]


def test_groups_need_a_valid_token(client: TestClient, world) -> None:
    for who in (None, "garbage", "carol"):
        assert client.get(GROUPS, headers=world.h(who)).status_code == 401
        assert client.get(BOARD, headers=world.h(who)).status_code == 401


# --- leaderboard ---------------------------------------------------------------------------------
def test_leaderboard_ranks_by_mean_val_bpb_per_track_and_hardware(client: TestClient, world, session: Session) -> None:
    def group(name: str, config: dict, losses: list[float | None], **spec: Any) -> str:
        body = submit(client, world, "alice", name=name, config=config, seeds=list(range(1, len(losses) + 1)), **spec)
        finish_all(session, body, losses, **({"gpu_name": "NVIDIA H100 80GB HBM3", "world_size": 1} if spec.get("hardware") == "H100:1" else {}))
        return body["group_key"]

    # Configs that fit 16 MB at the compression these fake results imply (service.runs.size_check measures it on
    # the team's finished runs and refuses bigger ones), the largest submitted first.
    one_gpu = group("one-gpu", {"NUM_LAYERS": 10}, [1.850, 1.851], hardware="H100:1")
    worse = group("worse", {"NUM_LAYERS": 9}, [1.900, 1.902, 1.901])
    better = group("better", {"NUM_LAYERS": 8}, [1.880, 1.882, 1.881, None])
    unlimited = group("unlimited", {"NUM_LAYERS": 13}, [1.700], track="unlimited")
    nothing_yet = group("failed", {"NUM_LAYERS": 7}, [None])  # no counted run: not on the board

    assert board(client, world, "alice", track="10min_16mb") == [(1, one_gpu), (2, better), (3, worse)]
    assert board(client, world, "alice", track="10min_16mb", hardware="H100:8") == [(1, better), (2, worse)]
    assert board(client, world, "alice", track="10min_16mb", hardware="H100:1") == [(1, one_gpu)]
    assert board(client, world, "alice", track="unlimited") == [(1, unlimited)]
    assert board(client, world, "alice", track="10min_16mb", hardware="H200:8") == []
    assert nothing_yet not in str(get(client, world, "alice", BOARD))

    lb = get(client, world, "alice", BOARD, track="10min_16mb", hardware="H100:8")
    assert (lb["track"], lb["hardware"]) == ("10min_16mb", "H100:8")
    top, second = lb["entries"]
    assert top["group"]["n"] == 3 and top["group"]["not_counted"] == 1
    assert top["group"]["val_bpb"]["mean"] == pytest.approx(1.881 / 1.6888)
    assert top["group"]["val_bpb"]["std"] == pytest.approx(0.001 / 1.6888)
    assert top["group"]["mean_artifact_bytes"] == 15_900_000 and top["group"]["checks_verdict"] == "pass"
    # better beats worse (its team's runner-up) by 0.02 nats with s = 0.001 each side: eligible.
    assert top["p_value"] is not None and top["p_value"] < 0.01 and top["eligible"] is True and top["eligibility"] == []
    assert "significant" in top["comparison"]
    assert second["eligible"] is False and second["p_value"] > 0.999  # worse by 0.02 nats than its baseline
    # On one H100 the timing rules are not comparable: never eligible.
    [gpu1] = get(client, world, "alice", BOARD, track="10min_16mb", hardware="H100:1")["entries"]
    assert gpu1["group"]["checks_verdict"] == "not_comparable" and gpu1["eligible"] is False
    assert "checks not comparable: train_time, eval_time" in gpu1["eligibility"]


def test_leaderboard_track_must_not_be_empty(client: TestClient, world) -> None:
    assert client.get(BOARD, params={"track": " "}, headers=world.h("alice")).status_code == 422
    assert get(client, world, "alice", BOARD)["track"] == "10min_16mb"  # the default


# --- compare ---------------------------------------------------------------------------------------
def _welch_p(candidate: list[float], baseline: list[float], margin: float = 0.005) -> tuple[float, float, float]:
    """One-sided Welch test of mean(baseline) - mean(candidate) > margin, by hand."""
    def mean_var(xs: list[float]) -> tuple[float, float]:
        m = sum(xs) / len(xs)
        return m, sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    mc, vc = mean_var(candidate)
    mb, vb = mean_var(baseline)
    qc, qb = vc / len(candidate), vb / len(baseline)
    t = (mb - mc - margin) / math.sqrt(qc + qb)
    df = (qc + qb) ** 2 / (qc**2 / (len(candidate) - 1) + qb**2 / (len(baseline) - 1))
    return t, df, float(t_dist.sf(t, df))


def test_compare_gives_the_welch_test_against_a_chosen_baseline(client: TestClient, world, session: Session) -> None:
    cand_losses, base_losses = [1.880, 1.884, 1.881], [1.890, 1.891, 1.887, 1.893]
    cand = submit(client, world, "alice", name="cand", config={"XSA_LAST_N": 9}, seeds=[1, 2, 3])
    base = submit(client, world, "alice", name="base", seeds=[1, 2, 3, 4])
    finish_all(session, cand, cand_losses)
    finish_all(session, base, base_losses)
    t, df, p = _welch_p(cand_losses, base_losses)

    c = get(client, world, "alice", f"{GROUPS}/{cand['group_key'][:8]}/compare/{base['group_key'][:8]}")
    assert (c["candidate"], c["baseline"], c["baseline_name"]) == (cand["group_key"], base["group_key"], "base")
    # tested in nats per byte (val_bpb x ln 2 = val_loss x k here); the README's 0.005 nats per token scale alike,
    # so t, df and p are the per-token test's
    k = math.log(2) / 1.6888
    assert (c["n_candidate"], c["n_baseline"], c["alpha"], c["unit"], c["policy"]) == (3, 4, 0.01, "nats per byte", "readme")
    assert c["margin"] == pytest.approx(0.005 * k)
    assert c["improvement"] == pytest.approx(k * (sum(base_losses) / 4 - sum(cand_losses) / 3))
    assert c["t"] == pytest.approx(t, rel=1e-9) and c["df"] == pytest.approx(df, rel=1e-9) and c["p_value"] == pytest.approx(p, rel=1e-9)
    assert c["ci_low"] < c["improvement"] < c["ci_high"] and c["enough_seeds"] is True
    assert c["significant"] is (p < 0.01)

    # The group page compares against the same group by default (the team's other leader) and when named.
    d = get(client, world, "alice", f"{GROUPS}/{cand['group_key']}")
    assert d["baseline"]["key"] == base["group_key"] and d["comparison"]["p_value"] == pytest.approx(p, rel=1e-9)
    named = get(client, world, "alice", f"{GROUPS}/{cand['group_key']}", baseline=base["group_key"][:6])
    assert named["comparison"] == d["comparison"]
    r = client.get(f"{GROUPS}/{cand['group_key']}/compare/{cand['group_key']}", headers=world.h("alice"))
    assert r.status_code == 422 and "own baseline" in r.text


def test_compare_with_one_seed_says_not_enough_seeds(client: TestClient, world, session: Session) -> None:
    cand = submit(client, world, "alice", name="cand", config={"XSA_LAST_N": 9}, seeds=[1])
    base = submit(client, world, "alice", name="base", seeds=[1, 2, 3])
    finish_all(session, cand, [1.860])
    finish_all(session, base, [1.890, 1.892, 1.891])
    c = get(client, world, "alice", f"{GROUPS}/{cand['group_key']}/compare/{base['group_key']}")
    assert c["p_value"] is None and c["t"] is None and c["enough_seeds"] is False and c["significant"] is False
    assert "policy readme" in c["message"] and "not enough seeds: candidate has 1, baseline 3" in c["message"]
    assert c["more_seeds_needed"] is not None and c["more_seeds_needed"] >= 1
    assert f"about {c['more_seeds_needed']} more seed" in c["message"]
    d = get(client, world, "alice", f"{GROUPS}/{cand['group_key']}")
    assert d["eligibility"]["eligible"] is False and d["eligibility"]["reasons"] == [c["message"]]


# --- allow_noncompliant ----------------------------------------------------------------------------
@pytest.mark.parametrize(("config", "knob"), [
    ({"MAX_WALLCLOCK_SECONDS": 0}, "MAX_WALLCLOCK_SECONDS"),
    ({"MAX_WALLCLOCK_SECONDS": 600.5}, "MAX_WALLCLOCK_SECONDS"),
    ({"VAL_TOKENS_LIMIT": 1_000_000}, "VAL_TOKENS_LIMIT"),
])
def test_a_noncompliant_record_spec_needs_allow_noncompliant(client: TestClient, world, session: Session, config: dict, knob: str) -> None:
    body = {"name": "nocap", "track": "10min_16mb", "hardware": "H100:8", "config": config, "seeds": [1]}
    r = client.post(RUNS, json=body, headers=world.h("alice"))
    assert r.status_code == 422, r.text
    [issue] = r.json()["detail"]
    assert issue["loc"] == ["body", "config", knob] and "allow_noncompliant" in issue["msg"]
    assert session.query(Run).count() == 0 and session.query(RunGroup).count() == 0


def test_allow_noncompliant_runs_are_flagged_and_their_group_is_never_eligible(client: TestClient, world, session: Session) -> None:
    base = submit(client, world, "alice", name="base", seeds=[1, 2, 3])
    finish_all(session, base, [1.900, 1.902, 1.901])
    body = submit(client, world, "alice", name="nocap", config={"MAX_WALLCLOCK_SECONDS": 0}, seeds=[1, 2, 3], allow_noncompliant=True)
    assert all(run["allow_noncompliant"] is True for run in body["runs"])
    finish_all(session, body, [1.850, 1.852, 1.851])  # far better, and every figure within the limits

    run = get(client, world, "alice", f"{RUNS}/{body['runs'][0]['id']}")
    assert run["allow_noncompliant"] is True and run["checks_verdict"] == "not_comparable"
    assert all(c["verdict"] == "not_comparable" and "allow_noncompliant" in c["reason"] for c in run["checks"])

    d = get(client, world, "alice", f"{GROUPS}/{body['group_key']}")
    assert d["allow_noncompliant"] is True and d["checks_verdict"] == "not_comparable"
    assert all(c["verdict"] == "not_comparable" for c in d["checks"])
    assert d["comparison"]["significant"] is True  # the test itself says yes ...
    assert d["eligibility"]["eligible"] is False and "the spec set allow_noncompliant" in d["eligibility"]["reasons"]  # ... the rules say no
    [entry] = [e for e in get(client, world, "alice", BOARD)["entries"] if e["group"]["key"] == body["group_key"]]
    assert entry["rank"] == 1 and entry["eligible"] is False

    # The same config submitted with the flag set is a group of its own.
    assert body["group_key"] != base["group_key"]
    session.expire_all()
    assert session.get_one(RunGroup, body["group_key"]).allow_noncompliant is True


def test_the_unlimited_track_needs_no_flag(client: TestClient, world) -> None:
    body = submit(client, world, "alice", track="unlimited", config={"MAX_WALLCLOCK_SECONDS": 0, "VAL_TOKENS_LIMIT": 1000}, seeds=[1])
    assert body["runs"][0]["allow_noncompliant"] is False
