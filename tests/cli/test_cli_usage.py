"""`caddie usage` (a table per period and per user, the budget, a bar per day) and
`caddie admin set-budget`, against the real API and database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from service.core.db import get_sessionmaker
from service.core.models import RunEvent, Team, User
from tests.cli.conftest import Caddie
from tests.factories import make_run


def add_run(caddie: Caddie, name: str, hardware: str, minutes: list[tuple[float, str]], t0: datetime, **columns: object) -> None:
    with get_sessionmaker(caddie.db_url)() as s:
        team_id = s.scalar(select(Team.id).where(Team.name == "golfers"))
        user_id = s.scalar(select(User.id).where(User.name == "ann"))
        at = [(t0 + timedelta(minutes=m), to) for m, to in minutes]
        status = at[-1][1]
        run = make_run(team_id, user_id, name=name, group_key="u" * 64, track="10min_16mb", hardware=hardware, status=status, submitted_at=at[0][0],
                       finished_at=at[-1][0] if status in ("SUCCEEDED", "CANCELLED") else None, **columns)  # fmt: skip
        s.add(run)
        s.flush()
        for when, to in at:
            s.add(RunEvent(run_id=run.id, at=when, to_status=to, actor="test"))
        s.commit()


def test_usage_table_and_day_bars(caddie: Caddie) -> None:
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday, two_days_ago = today - timedelta(days=1), today - timedelta(days=2)
    # Yesterday: 4 min provisioning + 20 min running (10 training, 2 eval) on 8 GPUs = 3.2 GPU-h, $9.568.
    add_run(caddie, "good", "H100:8", [(0, "QUEUED"), (600, "PROVISIONING"), (604, "RUNNING"), (624, "SUCCEEDED")], yesterday,
            train_seconds=600, eval_seconds=120)
    # Two days ago: half of that (cancelled after 8 minutes of running): 1.6 GPU-h.
    add_run(caddie, "stopped", "H100:8", [(0, "QUEUED"), (600, "PROVISIONING"), (604, "RUNNING"), (612, "CANCELLED")], two_days_ago)
    add_run(caddie, "waiting", "H100:8", [(0, "QUEUED")], yesterday)

    text = caddie.ok("usage", "--period", "day").stdout
    assert "golfers: 4.80 GPU-h, $14.35" in text
    assert "budget: none (4.80 GPU-h billed in the last 30 days); weight 1" in text
    lines = text.splitlines()
    day_line = next(line for line in lines if line.startswith(yesterday.date().isoformat()) and "█" in line)
    older_line = next(line for line in lines if line.startswith(two_days_ago.date().isoformat()) and "█" in line)
    assert day_line.count("█") == 40 and "3.20 GPU-h" in day_line and "$9.57" in day_line  # the largest day fills the bar
    assert older_line.count("█") == 20 and "1.60 GPU-h" in older_line
    assert any(line.startswith(today.date().isoformat()) and "0.00 GPU-h" in line for line in lines)
    total_row = next(line for line in lines if line.strip().startswith("total"))
    # provisioning 2 x 4 min x 8 = 1.07; setup 8 min (good) + 8 min (stopped) x 8 = 2.13; training 10 min x 8 = 1.33; eval 2 min x 8 = 0.27
    assert total_row.split()[1:] == ["4.80", "$14.35", "1.07", "2.13", "1.33", "0.27", "0.00"]
    assert "ann" in text and "training 28% of the billed time" in text

    week = caddie.ok("usage", "--team", "golfers").stdout
    assert "GPU-hours per week (UTC)" in week and "4.80" in week


def test_usage_shows_what_warm_starts_saved(caddie: Caddie) -> None:
    yesterday = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    add_run(caddie, "cold", "H100:8", [(0, "QUEUED"), (600, "PROVISIONING"), (604, "RUNNING"), (614, "SUCCEEDED")], yesterday, warm_start=False)
    assert "warm starts" not in caddie.ok("usage", "--period", "day").stdout  # nothing to say yet
    add_run(caddie, "warm", "H100:8", [(0, "QUEUED"), (700, "PROVISIONING"), (700.5, "RUNNING"), (710, "SUCCEEDED")], yesterday, warm_start=True)
    # (240 s of the cold start - 30 s) x 8 GPUs = 1680 GPU-s = 0.47 GPU-h, $1.40 at $2.99.
    text = caddie.ok("usage", "--period", "day").stdout
    assert "warm starts: 1 run(s) on a reused warm cluster saved ~0.47 GPU-h ($1.40) of provisioning" in text


def test_set_budget_then_usage_shows_it(caddie: Caddie) -> None:
    assert caddie.ok("admin", "set-budget", "golfers", "--gpu-hours", "12", "--weight", "2").stdout.strip() == "team golfers: budget 12 GPU-hours, weight 2"
    text = caddie.ok("usage", "--period", "month").stdout
    assert "budget: 12.00 GPU-h," in text and "left; weight 2" in text
    assert caddie.ok("admin", "set-budget", "golfers", "--no-budget").stdout.strip() == "team golfers: budget none, weight 2"
    assert caddie.fails("admin", "set-budget", "golfers", "--weight", "0") == "weight: must be > 0 and <= 1000"
    assert caddie.fails("admin", "set-budget", "golfers", "--gpu-hours", "-3") == "budget_gpu_hours: must be a finite number >= 0"
    assert caddie.fails("admin", "set-budget", "golfers", "--gpu-hours", "nan") == "budget_gpu_hours: must be a finite number >= 0"
    assert caddie.fails("admin", "set-budget", "golfers") == "nothing to change: give --gpu-hours N, --no-budget or --weight W"
    assert caddie.fails("admin", "set-budget", "nobody", "--weight", "1") == "team 'nobody' not found"


def test_usage_errors(caddie: Caddie) -> None:
    assert caddie.fails("usage", "--period", "year") == "--period must be day, week or month, got 'year'"
    assert caddie.fails("usage", "--team", "strangers") == "team strangers not found"
    assert caddie.fails("usage", "--since", "yesterday").startswith("invalid request: since:")
