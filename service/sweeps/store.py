"""Sweeps on the database: submit, list, show, stop, resume, and ``advance_sweeps``, the tick that
moves every live sweep on (trials ended, trials pruned, next trials started). The decisions are
service.sweeps.plan's and .strategies'; this module reads facts and writes what they decide.

Each trial is a run group submitted through service.runs.submit.submit_runs as the sweep's
owner, so it passes the same rule checks and waits in the same queue, fair share and budgets
as any run. A trial row is committed before its runs are submitted, and the submission
carries the idempotency key ``sweep:<id>:<number>``: a tick that dies in between is finished
by the next one, which submits the same runs again and gets the first ones back.
"""

from __future__ import annotations

import base64
import binascii
import logging
import statistics
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.bodies import ID_MAX
from service.core.errors import Conflict, DomainError, Forbidden, InvalidInput, Issue, NotFound
from service.core.models import SCRIPT_KIND, Metric, Run, Sweep, SweepTrial, Team, User, utcnow
from service.core.settings import Settings
from service.queue.estimates import expected_seconds, gpu_hours
from service.results import queries as results
from service.results.groups import rule_blockers
from service.runs import cancel as cancelling, submit as submission
from service.runs.schemas import RunCreate, ScriptEnvironment, ScriptFileUpload
from service.runs.scripts.files import MissingScriptFile, run_folder_files, store_blobs
from service.runs.scripts.spec import SCRIPT_NAME, ScriptSpec, env_value
from service.runs.spec import normalise_spec
from service.sweeps import curves as finished_curves
from service.sweeps.plan import (
    COMPLETE,
    FAILED,
    OPEN_TRIALS,
    PENDING,
    PRUNED,
    RUN_TERMINAL,
    RUNNING,
    STOPPED,
    SWEEP_DONE,
    SWEEP_RUNNING,
    SWEEP_STOPPED,
    PruneRule,
    SlotFacts,
    judge_prune,
    slots,
    trial_end,
)  # fmt: skip
from service.sweeps.predictor import Predictor
from service.sweeps.promotion import BETTER, NO_VERDICT, TESTING, PromotionFacts, PromotionPolicy, decide, headline, record_status
from service.sweeps.pruners import judge_median
from service.sweeps.schemas import PromoteSpec, PromotionOut, SweepCreate, SweepOut, TrialOut
from service.sweeps.space import SearchSpace, parse_env_space, parse_space, space_of
from service.sweeps.strategies import Observed, knob_importance, propose
from service.teams.tokens import Principal, load_principal
from service.webhooks.outbox import notify_sweep_ended
from trainer.config import TrainerConfig

log = logging.getLogger(__name__)
ACTOR = "sweeps"


# --- submit, read, stop, resume ----------------------------------------------------------
def create_sweep(session: Session, principal: Principal, body: SweepCreate, settings: Settings) -> Sweep:
    """Check the sweep as its trials' runs will be checked, store it (running) and commit; the next tick starts its trials."""
    script = _is_script(body)
    probe = RunCreate(name=body.name, team=body.team, track=body.track, hardware=body.hardware, priority=body.priority,
                      config=body.base, seeds=body.seeds, script=body.script, files=body.files, env=body.env, data=body.data,
                      environment=body.environment)  # fmt: skip
    issues: list[Issue] = []
    base: dict[str, Any] = {}
    blobs: dict[str, bytes] = {}
    try:
        normal, _ = normalise_spec(probe, settings)
        base, blobs = normal.config, normal.blobs
    except InvalidInput as exc:  # the run spec's fields, named as the sweep names them
        issues += [Issue(("base", *i.loc[1:]) if i.loc[:1] == ("config",) else i.loc, i.msg, i.input) for i in exc.issues]
    space: SearchSpace | None = None
    try:
        space = parse_env_space(body.space, body.env) if script else parse_space(body.space, base)
    except InvalidInput as exc:
        issues += exc.issues
    if script and space is not None and len(body.env) + len(space.knobs) > settings.max_script_env_vars:
        issues.append(Issue(("space",), f"env and space set {len(body.env) + len(space.knobs)} variables; a script run takes at most "
                            f"{settings.max_script_env_vars} (CADDIE_MAX_SCRIPT_ENV_VARS)", len(space.knobs)))  # fmt: skip
    for knob in space.knobs if script and space is not None else ():
        for i, value in enumerate(knob.values or ()):
            if len(env_value(value)) > settings.max_script_env_value_chars:  # else every trial with it would be refused at submission
                issues.append(Issue(("space", knob.name, "values", i), f"at most {settings.max_script_env_value_chars} characters "
                                    "(CADDIE_MAX_SCRIPT_ENV_VALUE_CHARS)", len(env_value(value))))  # fmt: skip
    if space is not None and body.strategy == "grid" and space.grid_size() is None:
        ranged = [k.name for k in space.knobs if k.values is None and not k.steps]
        issues += [Issue(("space", name, "steps"), "a grid needs steps: N for a range (or list values)", None) for name in ranged]
    if body.promote is not None:
        again = sorted(set(body.promote.seeds) & set(body.seeds) | {x for x in body.promote.seeds if body.promote.seeds.count(x) > 1})
        if again:
            issues.append(Issue(("promote", "seeds"), f"must be unique and differ from the trials' seeds; repeated: {', '.join(map(str, again))}", again))
        issues += _promote_issues(session, principal, body, settings)
    pruning = body.pruner != "none" and body.prune is not None and body.prune.enabled
    if body.pruner == "median" and not pruning:
        issues.append(Issue(("pruner",), "median needs pruning on: prune is null or disabled (never prune); give prune settings or pruner: none", body.pruner))
    if issues:
        raise InvalidInput(issues)
    assert space is not None
    team = submission._team_for(session, principal, body.team)
    now = utcnow()
    spec = {
        "base": base, "space": space.to_json(), "seeds": list(body.seeds), "max_trials": body.max_trials, "max_parallel": body.max_parallel,
        "budget_gpu_hours": body.budget_gpu_hours, "prune": {**body.prune.model_dump(), "pruner": body.pruner} if pruning and body.prune else None,
        "sampler_seed": body.sampler_seed, "priority": body.priority, "promote": body.promote.model_dump() if body.promote else None,
    }  # fmt: skip
    if script:  # base: the script run's normal form (train_gpt.py and its files by sha256, env, data); the bytes stored once, here
        spec["kind"] = SCRIPT_KIND
        store_blobs(session, blobs)
    sweep = Sweep(team_id=team.id, user_id=principal.user_id, name=body.name, notes=body.notes, track=body.track, hardware=body.hardware,
                  strategy=body.strategy, spec=spec, status=SWEEP_RUNNING, status_reason="submitted", created_at=now, updated_at=now)  # fmt: skip
    session.add(sweep)
    session.commit()
    return sweep


def _is_script(body: SweepCreate) -> bool:
    """A sweep whose base is a script: it names one, or any of a script's fields (which then must name one)."""
    return body.script is not None or bool(body.files) or bool(body.env) or body.data is not None or body.environment is not None


def _promote_issues(session: Session, principal: Principal, body: SweepCreate, settings: Settings) -> list[Issue]:
    promote = body.promote
    assert promote is not None
    issues = []
    if promote.max_seeds > settings.max_seeds:
        issues.append(Issue(("promote", "max_seeds"), f"at most {settings.max_seeds} (CADDIE_MAX_SEEDS)", promote.max_seeds))
    if promote.min_seeds > promote.max_seeds:
        issues.append(Issue(("promote", "min_seeds"), f"at most max_seeds ({promote.max_seeds})", promote.min_seeds))
    if len(body.seeds) >= promote.max_seeds:
        issues.append(Issue(("promote", "max_seeds"), f"must be above the trials' own {len(body.seeds)} seeds, or promotion runs none", promote.max_seeds))
    if body.budget_gpu_hours is not None and promote.reserve_gpu_hours >= body.budget_gpu_hours:
        issues.append(Issue(("promote", "reserve_gpu_hours"), f"must be below budget_gpu_hours ({body.budget_gpu_hours:g})", promote.reserve_gpu_hours))
    if promote.baseline is not None and promote.baseline != results.LEADER:
        try:
            results.group_view(session, principal, promote.baseline)
        except (NotFound, InvalidInput):
            issues.append(Issue(("promote", "baseline"), "not a group of yours (a key or a prefix of 6+ hex characters), record:<folder> or leader",
                                promote.baseline))  # fmt: skip
    return issues


def get_sweep(session: Session, principal: Principal, sweep_id: int) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None or not principal.can_see_team(sweep.team_id):
        raise NotFound("sweep", sweep_id)  # another team's sweep looks absent, as its runs do
    return sweep


def encode_cursor(sweep_id: int) -> str:
    """The next page starts below this sweep (as /runs' cursor, its own prefix: one is not the other's)."""
    return base64.urlsafe_b64encode(f"s{sweep_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("s"):
            raise ValueError(raw)
        sweep_id = int(raw[1:])
        if not 1 <= sweep_id <= ID_MAX:
            raise ValueError(raw)
        return sweep_id
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput([Issue(("query", "cursor"), "not a cursor from a previous page of /sweeps", cursor)]) from None


def list_sweeps(session: Session, principal: Principal, *, team: str | None = None, limit: int = 50, cursor: str | None = None) -> tuple[list[Sweep], str | None]:
    """The caller's teams' sweeps, newest first, ``limit`` a page, and the cursor of the next page (None: the last).

    Keyset on the id, so a sweep submitted while paging never shifts a page."""
    query = select(Sweep).order_by(Sweep.id.desc()).limit(limit + 1)
    if not principal.is_admin:
        query = query.where(Sweep.team_id.in_(list(principal.roles) or [-1]))
    if team is not None:
        query = query.join(Team, Team.id == Sweep.team_id).where(Team.name == team)
    if cursor:
        query = query.where(Sweep.id < decode_cursor(cursor))
    rows = list(session.scalars(query))
    return rows[:limit], encode_cursor(rows[limit - 1].id) if len(rows) > limit else None


def _may_change(principal: Principal, sweep: Sweep) -> None:
    # As cancelling a run: the owner, or an admin of its team (it spends their budget).
    if sweep.user_id != principal.user_id and not principal.can_manage_team(sweep.team_id):
        raise Forbidden(f"sweep {sweep.id} was submitted by another member; only they or an admin of its team may change it")


def stop_sweep(session: Session, principal: Principal, sweep_id: int) -> Sweep:
    """No new trials; runs still QUEUED are cancelled (their trials become stopped); running runs finish and count."""
    sweep = get_sweep(session, principal, sweep_id)
    _may_change(principal, sweep)
    if sweep.status != SWEEP_RUNNING:
        raise Conflict(f"sweep {sweep_id} is {sweep.status}, not running")
    sweep.status, sweep.status_reason, sweep.updated_at = SWEEP_STOPPED, f"stopped by {principal.name}", utcnow()
    session.commit()
    owner = _owner(session, sweep)
    for trial in _trials(session, sweep.id):
        if trial.status not in OPEN_TRIALS:
            continue
        runs = _runs(session, trial.run_ids)
        if all(r.status == "QUEUED" for r in runs):
            for run in runs:
                _cancel_quietly(session, owner, run.id)
            trial.status, trial.reason, trial.finished_at = STOPPED, "the sweep was stopped before its runs started", utcnow()
            session.commit()
    return sweep


def resume_sweep(session: Session, principal: Principal, sweep_id: int) -> Sweep:
    sweep = get_sweep(session, principal, sweep_id)
    _may_change(principal, sweep)
    if sweep.status != SWEEP_STOPPED:
        raise Conflict(f"sweep {sweep_id} is {sweep.status}; only a stopped sweep resumes")
    sweep.status, sweep.status_reason, sweep.updated_at, sweep.finished_at = SWEEP_RUNNING, f"resumed by {principal.name}", utcnow(), None
    session.commit()
    return sweep


def sweep_out(session: Session, sweep: Sweep, *, with_trials: bool) -> SweepOut:
    trials = _trials(session, sweep.id)
    outs = [_trial_out(t) for t in trials]
    complete = [o for o in outs if o.status == COMPLETE and o.value is not None]
    counts: dict[str, int] = {}
    for o in outs:
        counts[o.status] = counts.get(o.status, 0) + 1
    return SweepOut(
        id=sweep.id, team=sweep.team.name, user=sweep.user.name, name=sweep.name, notes=sweep.notes, track=sweep.track,
        hardware=sweep.hardware, strategy=sweep.strategy, status=sweep.status, status_reason=sweep.status_reason, spec=sweep.spec,
        counts=counts, best=min(complete, key=lambda o: (o.value, o.number)) if complete else None,
        gpu_hours_used=sum(o.gpu_hours or 0.0 for o in outs), gpu_hours_saved=sum(o.saved_gpu_hours or 0.0 for o in outs),
        created_at=sweep.created_at, updated_at=sweep.updated_at, finished_at=sweep.finished_at, trials=outs if with_trials else None,
        importance=knob_importance(space_of(sweep.spec), _history(trials)) if with_trials else None,
        promotion=(promoted := promotion_out(sweep)), result=_result(promoted),
    )  # fmt: skip


def promotion_out(sweep: Sweep) -> list[PromotionOut]:
    """Each promoted trial's group as last judged, best trial first."""
    states = sweep.spec.get("promotion") or {}
    keep = set(PromotionOut.model_fields) - {"trial", "headline"}
    out = []
    for n in sweep.spec.get("promoted") or []:
        state = _current(states.get(str(n)) or {})
        out.append(PromotionOut(trial=n, headline=headline(state), **{"verdict": TESTING, "why": "", "rounds": 0, "group_key": None,
                                                                      **{k: v for k, v in state.items() if k in keep}}))  # fmt: skip
    return out


def _current(state: dict[str, Any]) -> dict[str, Any]:
    """A state stored before the test and record eligibility were told apart: "eligible" was both; "not_eligible" stays
    as it was (it may have been either)."""
    if state.get("verdict") == "eligible":
        return {**state, "verdict": BETTER, "record_eligible": True, "record_why": record_status(BETTER, ())[1]}
    return state


def _result(promoted: list[PromotionOut]) -> PromotionOut | None:
    """The sweep's result: the best record-eligible promoted group, else the best one found better, else the best promoted."""
    return next((p for p in promoted if p.record_eligible), next((p for p in promoted if p.verdict == BETTER), promoted[0] if promoted else None))


def _trial_out(t: SweepTrial) -> TrialOut:
    return TrialOut(number=t.number, status=t.status, params=t.params, value=t.value, reason=t.reason, prune=t.prune,
                    run_ids=list(t.run_ids or []), group_key=t.group_key, gpu_hours=t.gpu_hours, saved_gpu_hours=t.saved_gpu_hours,
                    created_at=t.created_at, finished_at=t.finished_at)  # fmt: skip


# --- the tick -----------------------------------------------------------------------------
def advance_sweeps(session: Session, settings: Settings, *, now: datetime | None = None, records: Sequence[Any] | None = None) -> int:
    """Move every live sweep on; returns the trials started. Safe to run twice or at once (see the module doc).

    ``records``: the public records' curves for the predictor (default: read from ../shared/challenge once per process).
    """
    started = 0
    ids = session.scalars(select(Sweep.id).where(Sweep.status.in_((SWEEP_RUNNING, SWEEP_STOPPED)))).all()
    for sweep_id in ids:
        sweep = session.get_one(Sweep, sweep_id)
        started += _advance(session, sweep, settings, now or utcnow(), records)
    return started


def advance_sweeps_safely(session_factory: Any) -> None:
    """The worker's call (worker/tasks.py, each scheduler tick): a sweep that fails to advance is logged, never breaks a tick."""
    try:
        with session_factory() as session:
            advance_sweeps(session, Settings())
    except Exception:  # noqa: BLE001 (the next tick tries again; runs are not touched by a failed advance)
        log.exception("sweeps: could not advance")


def _advance(session: Session, sweep: Sweep, settings: Settings, now: datetime, records: Sequence[Any] | None) -> int:
    owner = _owner(session, sweep)
    trials = _trials(session, sweep.id)
    for trial in trials:
        if trial.status == PENDING:
            _submit_trial(session, sweep, owner, trial, settings)
    runs = {r.id: r for r in _runs(session, [i for t in trials if t.status == RUNNING for i in t.run_ids])}
    for trial in trials:
        if trial.status == RUNNING:
            mine = [runs[i] for i in trial.run_ids if i in runs]
            end = trial_end([(r.status, r.val_bpb) for r in mine])
            if end is not None:
                trial.status, trial.value, trial.reason, trial.finished_at = end.status, end.value, end.reason, now
                trial.gpu_hours = sum(_used_gpu_hours(r, now) for r in mine)
    session.commit()
    if sweep.spec.get("prune"):
        _prune(session, sweep, owner, trials, runs, settings, now, records)
    if sweep.status != SWEEP_RUNNING:
        return 0
    started = _start_trials(session, sweep, owner, trials, runs, settings, now)
    if not any(t.status in OPEN_TRIALS for t in trials) and started == 0 and not _promote(session, sweep, owner, trials, settings, now):
        sweep.status, sweep.finished_at, sweep.updated_at = SWEEP_DONE, now, now
        sweep.status_reason = _done_reason(sweep, trials)
        notify_sweep_ended(session, sweep)  # the team's webhook, queued with the sweep's end; never raises
        session.commit()
    return started


def _start_trials(session: Session, sweep: Sweep, owner: Principal, trials: list[SweepTrial], runs: dict[int, Run],
                  settings: Settings, now: datetime) -> int:  # fmt: skip
    spec = sweep.spec
    per_run = gpu_hours(sweep.hardware, expected_seconds(spec["base"], settings.run_overhead_s))  # a script's: its env's MAX_WALLCLOCK_SECONDS
    committed = sum(t.gpu_hours or 0.0 for t in trials if t.status not in OPEN_TRIALS)
    committed += sum(max(_used_gpu_hours(runs[i], now), per_run) for t in trials if t.status in OPEN_TRIALS for i in t.run_ids if i in runs)
    committed += sum(per_run * len(spec["seeds"]) for t in trials if t.status == PENDING)
    budget = spec.get("budget_gpu_hours")
    if budget is not None and spec.get("promote"):
        budget -= spec["promote"].get("reserve_gpu_hours", 0.0)  # kept for promotion
    n, why = slots(SlotFacts(trials=len(trials), open_trials=sum(t.status in OPEN_TRIALS for t in trials), max_trials=spec["max_trials"],
                             max_parallel=spec["max_parallel"], budget_gpu_hours=budget,
                             committed_gpu_hours=committed, trial_gpu_hours=per_run * len(spec["seeds"])))  # fmt: skip
    space = space_of(spec)
    started = 0
    for _ in range(n):
        params = propose(sweep.strategy, space, _history(trials), seed=spec.get("sampler_seed", 0) * 1000 + sweep.id)
        if params is None:  # a grid that is done
            sweep.spec, why = {**spec, "exhausted": True}, "every point of the space was tried"
            break
        trial = SweepTrial(sweep_id=sweep.id, number=max((t.number for t in trials), default=0) + 1, params=_tidy(params, space),
                           run_ids=[], status=PENDING, reason="", created_at=now)  # fmt: skip
        session.add(trial)
        try:
            session.commit()
        except IntegrityError:  # another tick made this number first; it will submit it
            session.rollback()
            break
        trials.append(trial)
        _submit_trial(session, sweep, owner, trial, settings)
        started += 1
    if why and why != sweep.status_reason:
        sweep.status_reason, sweep.updated_at = why, now
    session.commit()
    return started


def _submit_trial(session: Session, sweep: Sweep, owner: Principal, trial: SweepTrial, settings: Settings) -> None:
    knobs = ", ".join(f"{k}={v}" for k, v in trial.params.items())
    try:
        body = _run_body(session, sweep, trial.params, notes=f"sweep {sweep.id} trial {trial.number}: {knobs}", name=f"{sweep.name} #{trial.number}",
                         seeds=sweep.spec["seeds"])  # fmt: skip
        group_key, runs, _ = submission.submit_runs(session, owner, body, settings, idempotency_key=f"sweep:{sweep.id}:{trial.number}")
    except (InvalidInput, MissingScriptFile) as exc:  # a combination the space allowed but a cross-knob rule refuses (e.g. NUM_HEADS must divide MODEL_DIM)
        session.rollback()
        trial.status, trial.reason, trial.finished_at, trial.gpu_hours = FAILED, f"refused at submission: {exc}", utcnow(), 0.0
        session.commit()
        return
    except DomainError as exc:  # e.g. a quota: the trial waits for the next tick
        session.rollback()
        trial.reason = f"not submitted yet: {exc}"
        session.commit()
        return
    trial.group_key, trial.run_ids, trial.status, trial.reason = group_key, [r.id for r in runs], RUNNING, ""
    session.commit()


# --- pruning ------------------------------------------------------------------------------
_predictors: dict[int, tuple[int, Predictor]] = {}  # team -> (its newest finished run, the lines fitted then); refitted when that moves


def predictor_for(session: Session, team_id: int, settings: Settings, records: Sequence[Any] | None = None) -> Predictor:
    """The lines fitted on the public records' curves (CADDIE_RECORDS_DIR) and the team's finished runs (``records`` given: on those, uncached)."""
    newest = session.scalar(select(Run.id).where(Run.team_id == team_id, Run.status == "SUCCEEDED").order_by(Run.id.desc()).limit(1)) or 0
    if records is not None:
        return Predictor.fit([*records, *finished_curves.team_curves(session, team_id)])
    cached = _predictors.get(team_id)
    if cached is None or cached[0] != newest:
        assert settings.records_dir is not None  # filled in when the settings load
        record_curves = finished_curves.record_curves(settings.records_dir)
        cached = _predictors[team_id] = (newest, Predictor.fit([*record_curves, *finished_curves.team_curves(session, team_id)]))
    return cached[1]


def _prune(session: Session, sweep: Sweep, owner: Principal, trials: list[SweepTrial], runs: dict[int, Run], settings: Settings,
           now: datetime, records: Sequence[Any] | None) -> None:  # fmt: skip
    complete = [t for t in trials if t.status == COMPLETE and t.value is not None]
    live = [t for t in trials if t.status == RUNNING and t.number not in (sweep.spec.get("promoted") or ())]  # a promoted trial already won
    if not complete or not live:
        return
    stored = sweep.spec["prune"]
    if stored.get("pruner", "curve") == "median":
        _prune_median(session, sweep, owner, complete, live, runs, settings, now, stored)
        return
    best = min(complete, key=lambda t: (t.value, t.number))
    ratio = _bpb_per_nat(session, best)
    if ratio is None:
        return
    rule = PruneRule(margin=stored["margin"], confidence=stored["confidence"], min_step=stored["min_step"])
    vocab = _vocab(sweep, best)
    predictor = predictor_for(session, sweep.team_id, settings, records)
    for trial in live:
        if _vocab(sweep, trial) != vocab:
            continue  # another tokenizer: the best trial's bpb-per-nat does not hold for it
        points = mean_curve(finished_curves.run_points(session, list(trial.run_ids)))
        looks = sum(k >= rule.min_step for k in predictor.fits)
        verdict = judge_prune(predictor.predict(points, ratio), (float(best.value), best.number), rule, looks)  # type: ignore[arg-type]
        if verdict is not None:
            _stop_pruned(session, sweep, owner, trial, runs, settings, now, verdict.predicted, verdict.reason, verdict.to_json())


def _prune_median(session: Session, sweep: Sweep, owner: Principal, complete: list[SweepTrial], live: list[SweepTrial], runs: dict[int, Run],
                  settings: Settings, now: datetime, stored: dict[str, Any]) -> None:  # fmt: skip
    """Optuna's MedianPruner over the train-loss curves of the complete trials of the same tokenizer."""
    curves = {t.number: mean_curve(finished_curves.run_points(session, list(t.run_ids))) for t in complete}
    for trial in live:
        vocab = _vocab(sweep, trial)
        others = [curves[t.number] for t in complete if _vocab(sweep, t) == vocab and curves[t.number]]
        points = mean_curve(finished_curves.run_points(session, list(trial.run_ids)))
        verdict = judge_median(points, others, min_step=int(stored["min_step"]), startup_trials=int(stored.get("startup_trials", 3)))
        if verdict is not None:
            _stop_pruned(session, sweep, owner, trial, runs, settings, now, None, verdict.reason, verdict.to_json())


def _stop_pruned(session: Session, sweep: Sweep, owner: Principal, trial: SweepTrial, runs: dict[int, Run], settings: Settings, now: datetime,
                 value: float | None, reason: str, figures: dict[str, Any]) -> None:  # fmt: skip
    """Cancel the trial's runs still going, record why with the figures, and count the GPU-hours its runs would still have used."""
    mine = [runs[i] for i in trial.run_ids if i in runs]
    config = _config(sweep, trial.params)
    per_run = expected_seconds(config, settings.run_overhead_s)
    clock, iterations = _train_clock(session, [r.id for r in mine]), _iterations(config)
    saved = sum(gpu_hours(r.hardware, _whole_run_s(r, per_run, clock.get(r.id), iterations, now)) - _used_gpu_hours(r, now)
                for r in mine if r.status not in RUN_TERMINAL)  # fmt: skip
    for run in mine:
        if run.status not in RUN_TERMINAL:
            _cancel_quietly(session, owner, run.id)
    trial.status, trial.value, trial.reason, trial.prune, trial.finished_at = PRUNED, value, reason, figures, now
    trial.gpu_hours = sum(_used_gpu_hours(r, now) for r in mine)
    trial.saved_gpu_hours = max(0.0, saved)
    session.commit()


def _whole_run_s(run: Run, expected_s: float, clock: tuple[int, float] | None, iterations: int | None, now: datetime) -> float:
    """Node seconds a pruned run would have held in all: its expected time (training cap + overhead), or, when less, its
    time so far plus the steps left to ITERATIONS at its own pace (``clock``: its last step and training ms). A run that
    ends on its step count long before its cap (bench/sweeps_real.py) was counted 7x the time its pruning saved."""
    if run.started_at is None or clock is None or not iterations or clock[0] <= 0:
        return expected_s
    step, ms = clock
    used = ((run.finished_at or now) - run.started_at).total_seconds()
    return min(expected_s, used + ms / 1000 * max(0, iterations - step) / step)


def _train_clock(session: Session, run_ids: list[int]) -> dict[int, tuple[int, float]]:
    """Each run's last train point with its training clock: (step, elapsed ms)."""
    rows = session.execute(select(Metric.run_id, Metric.step, Metric.elapsed_ms)
                           .where(Metric.run_id.in_(run_ids), Metric.kind == "train", Metric.elapsed_ms.is_not(None))
                           .order_by(Metric.attempt, Metric.step)).all()  # fmt: skip
    return {run_id: (step, float(ms)) for run_id, step, ms in rows if ms is not None}  # the latest attempt's last step wins


def _iterations(config: dict[str, Any]) -> int | None:
    if isinstance(config.get("env"), dict):  # a script's: its ITERATIONS variable, if it sets one (the challenge's scripts read it)
        try:
            return int(config["env"]["ITERATIONS"])
        except (KeyError, ValueError):
            return None
    try:
        return TrainerConfig.from_dict(config).iterations
    except ValueError:  # ConfigError: no step count to scale by
        return None


def mean_curve(by_run: dict[int, list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The trial's curve: at each step, the mean train loss of its runs that logged it."""
    steps: dict[int, list[float]] = {}
    for points in by_run.values():
        for step, loss in points:
            steps.setdefault(step, []).append(loss)
    return sorted((s, statistics.fmean(v)) for s, v in steps.items())


def _vocab(sweep: Sweep, trial: SweepTrial) -> Any:
    """The trial's vocabulary, its STACK preset's when the knobs leave it out (curves of different
    tokenizers are not compared); a script's, its data variant."""
    if sweep.spec.get("kind") == SCRIPT_KIND:
        return sweep.spec["base"].get("data")
    config = {**sweep.spec["base"], **trial.params}
    try:
        return TrainerConfig.from_dict(config).vocab_size
    except ValueError:  # ConfigError: a config the submission refused has no curve to compare either
        return config.get("VOCAB_SIZE")


def _bpb_per_nat(session: Session, trial: SweepTrial) -> float | None:
    """val_bpb / val_loss of the trial's succeeded runs: its tokenizer's bytes per token on the val split, as a scale."""
    ratios = [r.val_bpb / r.val_loss for r in _runs(session, trial.run_ids) if r.val_bpb and r.val_loss and r.status == "SUCCEEDED"]
    return statistics.fmean(ratios) if ratios else None


# --- helpers ------------------------------------------------------------------------------
def _config(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any]:
    """What a trial's runs are submitted with, in their stored form: the trainer's knobs, or a script run's spec
    (train_gpt.py by sha256, files, data) with env = {**the base's env, **params} as text."""
    if sweep.spec.get("kind") == SCRIPT_KIND:
        base = sweep.spec["base"]
        return {**base, "env": {**base.get("env", {}), **{k: env_value(v) for k, v in params.items()}}}
    return {**sweep.spec["base"], **params}


def _run_body(session: Session, sweep: Sweep, params: dict[str, Any], *, name: str, notes: str, seeds: list[int]) -> RunCreate:
    """The run spec of a trial (or a promotion round): a script sweep's train_gpt.py and files come back from the stored
    bytes (MissingScriptFile if one is gone), so the trial's runs are checked and grouped as any script run's."""
    fields: dict[str, Any] = dict(name=name[:200], notes=notes, team=sweep.team.name, track=sweep.track, hardware=sweep.hardware,
                                  priority=sweep.spec.get("priority"), seeds=seeds)  # fmt: skip
    if sweep.spec.get("kind") != SCRIPT_KIND:
        return RunCreate(**fields, config={**sweep.spec["base"], **params})
    script = ScriptSpec.from_json(_config(sweep, params))
    named = run_folder_files(session, script)
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return RunCreate(**fields, script=b64(named.pop(SCRIPT_NAME)), files=[ScriptFileUpload(name=n, content=b64(c)) for n, c in named.items()],
                     env=dict(script.env), data=script.data, score_label=script.score_label, public_env=list(script.public_env),
                     environment=ScriptEnvironment.model_validate(dict(script.environment)) if script.environment else None)  # fmt: skip


def _history(trials: Sequence[SweepTrial]) -> list[Observed]:
    state = {COMPLETE: "complete", PRUNED: "pruned", PENDING: "running", RUNNING: "running"}
    return [Observed(dict(t.params), state.get(t.status, "failed"), t.value, _last_loss(t)) for t in sorted(trials, key=lambda t: t.number)]


def _last_loss(trial: SweepTrial) -> tuple[int, float] | None:
    """Where the median pruner stopped the trial: (step, its best train loss so far), Optuna's intermediate value."""
    figures = trial.prune or {}
    if trial.status != PRUNED or figures.get("pruner") != "median":
        return None
    return int(figures["step"]), float(figures["trial_loss"])


def _tidy(params: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """Floats to 6 significant digits (readable names, stable group keys), kept inside their range."""
    out = dict(params)
    for k in space.knobs:
        v = out[k.name]
        if isinstance(v, float) and k.values is None:
            out[k.name] = min(max(float(f"{v:.6g}"), k.low), k.high)  # type: ignore[type-var]
    return out


def _used_gpu_hours(run: Run, now: datetime) -> float:
    """GPU-hours a run has held its node while RUNNING (the accounting bills a little more: provisioning, upload)."""
    if run.started_at is None:
        return 0.0
    return gpu_hours(run.hardware, ((run.finished_at or now) - run.started_at).total_seconds())


def _done_reason(sweep: Sweep, trials: Sequence[SweepTrial]) -> str:
    if sweep.spec.get("exhausted"):
        why = "every point of the space was tried"
    elif len(trials) >= sweep.spec["max_trials"]:
        why = f"max_trials ({sweep.spec['max_trials']}) reached"
    else:
        why = sweep.status_reason or "the GPU-hour budget is spent"
    if sweep.spec.get("promoted") is not None:
        why += "; " + _promotion_summary(sweep)
    return why


def _promote(session: Session, sweep: Sweep, owner: Principal, trials: list[SweepTrial], settings: Settings, now: datetime) -> bool:
    """Once the search is over: the ``promote.top`` best complete trials run more seeds, into their own run
    groups, round by round, until service.sweeps.promotion.decide stops each. True while one goes on (the sweep waits)."""
    if not sweep.spec.get("promote"):
        return False
    promote = PromoteSpec.model_validate(sweep.spec["promote"])
    if sweep.spec.get("promoted") is None:
        complete = sorted((t for t in trials if t.status == COMPLETE and t.value is not None), key=lambda t: (t.value, t.number))
        chosen = [t.number for t in complete[: promote.top]]
        sweep.spec = {**sweep.spec, "promoted": chosen, "promotion": {str(n): {"verdict": TESTING, "why": "chosen", "rounds": 0} for n in chosen}}
        sweep.updated_at = now
        session.commit()
    policy = PromotionPolicy(significance=promote.policy, min_seeds=promote.min_seeds, max_seeds=promote.max_seeds, step=promote.step)
    by_number = {t.number: t for t in trials}
    for number in sweep.spec["promoted"]:
        trial = by_number[number]
        state = dict(sweep.spec.get("promotion", {}).get(str(number)) or {"verdict": TESTING, "rounds": 0})
        if state["verdict"] != TESTING or trial.status in OPEN_TRIALS:
            continue  # decided, or its round's runs are still going
        if not state.get("pending"):
            try:
                facts, figures = _promotion_facts(session, sweep, owner, trial, trials, promote, settings, now)
            except (NotFound, InvalidInput) as exc:  # the named baseline is gone (or no longer visible): no test to run
                _save_promotion(session, sweep, number, {**state, "verdict": NO_VERDICT, "why": f"baseline {promote.baseline}: {exc}",
                                                         "record_eligible": False, "record_why": "not record-eligible: no test"}, now)  # fmt: skip
                continue
            step = decide(facts, policy)
            state = {**state, **step.to_json(), **figures}
            if step.verdict == TESTING:
                state["pending"] = {"round": state["rounds"] + 1, "seeds": _next_seeds(promote, figures["seeds"], step.seeds)}
            _save_promotion(session, sweep, number, state, now)
        if state.get("pending"):
            _run_round(session, sweep, owner, trial, state, settings, now)
    states = sweep.spec.get("promotion") or {}
    return any((states.get(str(n)) or {}).get("verdict", TESTING) == TESTING for n in sweep.spec["promoted"])


def _promotion_facts(session: Session, sweep: Sweep, owner: Principal, trial: SweepTrial, trials: list[SweepTrial], promote: PromoteSpec,
                     settings: Settings, now: datetime) -> tuple[PromotionFacts, dict[str, Any]]:  # fmt: skip
    """The promoted group against its baseline (promote.baseline, else the group's default: the track's public record or the team's leader),
    as the group page and ``caddie compare`` see them, and the budget left."""
    view = results.group_view(session, owner, str(trial.group_key))
    report = results.report_for(session, owner, view, promote.baseline, promote.policy)
    base = report.baseline
    pairs = lambda v: [(r.val_bpb, r.val_loss) for r in v.stats.counted if r.val_bpb is not None and r.val_loss is not None]  # noqa: E731
    per_seed = gpu_hours(sweep.hardware, expected_seconds(_config(sweep, trial.params), settings.run_overhead_s))
    budget = sweep.spec.get("budget_gpu_hours")
    left = None if budget is None else budget - _committed_gpu_hours(session, trials, now, per_seed)
    facts = PromotionFacts(candidate=pairs(view), baseline=None if base is None else pairs(base), seeds_run=len({r.seed for r in view.runs}),
                           budget_left_gpu_hours=left, seed_gpu_hours=per_seed,
                           flags=[] if base is None else results.comparable_flags(view.group, base.group),
                           blockers=rule_blockers(view.stats, view.group.allow_noncompliant))  # fmt: skip
    figures = {"group_key": trial.group_key, "seeds": sorted(r.seed for r in view.runs), "succeeded": view.stats.n,
               "val_bpb": view.stats.val_bpb.mean, "baseline": None if base is None else {"key": base.group.key, "name": base.group.name}}  # fmt: skip
    return facts, figures


def _committed_gpu_hours(session: Session, trials: list[SweepTrial], now: datetime, per_run: float) -> float:
    """What the sweep has used, and what its runs still going may use (each at least ``per_run``)."""
    spent = sum(t.gpu_hours or 0.0 for t in trials if t.status not in OPEN_TRIALS)
    going = _runs(session, [i for t in trials if t.status in OPEN_TRIALS for i in t.run_ids])
    return spent + sum(max(_used_gpu_hours(r, now), per_run) for r in going)


def _next_seeds(promote: PromoteSpec, used: list[int], k: int) -> list[int]:
    """The next ``k`` seeds: promote.seeds in order, then the smallest positive integers, never one the group has run."""
    taken, out = set(used), list[int]()
    for seed in [*promote.seeds, *range(1, 10_000)]:
        if len(out) == k:
            break
        if seed not in taken:
            out.append(seed)
            taken.add(seed)
    return out


def _run_round(session: Session, sweep: Sweep, owner: Principal, trial: SweepTrial, state: dict[str, Any], settings: Settings,
               now: datetime) -> None:  # fmt: skip
    """Submit the planned round's seeds into the trial's group. The round is stored before its runs are submitted
    and its idempotency key names it, so a tick that dies in between is finished by the next, with the same runs."""
    pending = state["pending"]
    try:
        body = _run_body(session, sweep, trial.params, name=f"{sweep.name} #{trial.number}", seeds=pending["seeds"],
                         notes=f"sweep {sweep.id} trial {trial.number}, promotion round {pending['round']}")  # fmt: skip
        # Keyed by the round's first seed, which no earlier round of the group ran: a round decided twice (two ticks at
        # once) picks the same seeds and gets the first one's runs back; a round decided again later picks new ones.
        key = f"sweep:{sweep.id}:promote:{trial.number}:seed:{pending['seeds'][0]}"
        _, runs, _ = submission.submit_runs(session, owner, body, settings, idempotency_key=key)
    except (InvalidInput, MissingScriptFile) as exc:  # the config passed as a trial; a refusal now (e.g. a rule that changed) will not pass next tick either
        session.rollback()
        _save_promotion(session, sweep, trial.number, {**state, "pending": None, "verdict": NO_VERDICT, "why": f"more seeds refused: {exc}",
                                                       "record_eligible": False, "record_why": "not record-eligible: the test did not end"}, now)  # fmt: skip
        return
    except DomainError as exc:  # e.g. a quota: the round waits for the next tick
        session.rollback()
        sweep.status_reason = f"promotion of trial #{trial.number} waits: {exc}"
        session.commit()
        return
    trial.run_ids = [*trial.run_ids, *(r.id for r in runs if r.id not in trial.run_ids)]
    trial.status, trial.finished_at = RUNNING, None
    trial.reason = f"promotion round {pending['round']}: seeds {', '.join(map(str, pending['seeds']))} ({len(trial.run_ids)} in all)"
    _save_promotion(session, sweep, trial.number, {**state, "pending": None, "rounds": pending["round"]}, now)


def _save_promotion(session: Session, sweep: Sweep, number: int, state: dict[str, Any], now: datetime) -> None:
    sweep.spec = {**sweep.spec, "promotion": {**sweep.spec.get("promotion", {}), str(number): state}}
    sweep.updated_at = now
    session.commit()


def _promotion_summary(sweep: Sweep) -> str:
    states = sweep.spec.get("promotion") or {}
    if not states:
        return "promotion: no trial completed"
    parts = [f"#{n} {s['verdict'].replace('_', ' ')} ({s.get('succeeded', 0)} seeds{_p_text(s)}{_record_text(s)})" for n, s in ((n, _current(s)) for n, s in states.items())]
    return "promotion: " + "; ".join(parts)


def _p_text(state: dict[str, Any]) -> str:
    return "" if state.get("p_value") is None else f", p = {state['p_value']:.3g}"


def _record_text(state: dict[str, Any]) -> str:
    eligible = state.get("record_eligible")
    return "" if eligible is None else "; record-eligible" if eligible else "; not record-eligible"


def _owner(session: Session, sweep: Sweep) -> Principal:
    return load_principal(session, session.get_one(User, sweep.user_id))


def _trials(session: Session, sweep_id: int) -> list[SweepTrial]:
    return list(session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep_id).order_by(SweepTrial.number)))


def _runs(session: Session, ids: Sequence[int]) -> list[Run]:
    return list(session.scalars(select(Run).where(Run.id.in_(list(ids))).order_by(Run.id))) if ids else []


def _cancel_quietly(session: Session, owner: Principal, run_id: int) -> None:
    try:
        cancelling.cancel_run(session, owner, run_id)
    except (Conflict, NotFound, Forbidden):  # already ended, or the owner left the team: nothing to stop
        session.rollback()
