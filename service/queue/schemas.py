"""Bodies of GET /queue and the queue fields of a run (service/queue/positions.py computes them)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from service.queue.forecast import QueueEstimate
from service.queue.positions import QueueItem

POSITION_HELP = "QUEUED runs: 1 = the next run to start on its hardware, counting every team's runs (the scheduler's forecast); null otherwise"
START_HELP = ("QUEUED runs: when the scheduler's policy, played forward with every run taking its time cap, would start it; "
              "null if it is not expected to start (budget, no capacity)")  # fmt: skip
REASON_HELP = "QUEUED runs: why it is not running now (budget, retry backoff, waiting for a slot)"


class QueueFields(BaseModel):
    queue_position: int | None = Field(None, description=POSITION_HELP)
    estimated_start_at: datetime | None = Field(None, description=START_HELP)
    waiting_reason: str | None = Field(None, description=REASON_HELP)

    @classmethod
    def of(cls, estimate: QueueEstimate | None) -> dict:
        if estimate is None:
            return {}
        return {"queue_position": estimate.position, "estimated_start_at": estimate.estimated_start_at, "waiting_reason": estimate.reason}


class QueueItemOut(QueueFields):
    id: int
    name: str
    team: str
    user: str
    hardware: str
    priority: int
    submitted_at: datetime

    @classmethod
    def of_item(cls, item: QueueItem) -> "QueueItemOut":
        return cls(id=item.id, name=item.name, team=item.team, user=item.user, hardware=item.hardware, priority=item.priority,
                   submitted_at=item.submitted_at, **QueueFields.of(item.estimate))  # fmt: skip
