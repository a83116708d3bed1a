"""Bodies of GET /queue and the queue fields of a run (service/queue/positions.py computes them)."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime

from pydantic import BaseModel, Field, computed_field
from pydantic.dataclasses import dataclass as body_dataclass

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


# The domain's QueueItem declares the fields once; the body adds only the estimate, flattened
# into the queue fields every run body has.
@body_dataclass(frozen=True)
class QueueItemOut(QueueItem):
    """A queued run: where it stands on its hardware, when it should start and why it waits."""

    estimate: QueueEstimate = Field(exclude=True)

    @computed_field(description=POSITION_HELP)  # type: ignore[prop-decorator]
    @property
    def queue_position(self) -> int | None:
        return self.estimate.position

    @computed_field(description=START_HELP)  # type: ignore[prop-decorator]
    @property
    def estimated_start_at(self) -> datetime | None:
        return self.estimate.estimated_start_at

    @computed_field(description=REASON_HELP)  # type: ignore[prop-decorator]
    @property
    def waiting_reason(self) -> str | None:
        return self.estimate.reason

    @classmethod
    def of_item(cls, item: QueueItem) -> "QueueItemOut":
        return cls(**{f.name: getattr(item, f.name) for f in fields(item)})
