"""Response bodies of GET /teams/{name}/deliveries (pydantic v2)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    event: str = Field(description="run.finished, group.record_eligible, sweep.finished, ...")
    what: str = Field(description="what it told of: 'run 12', 'group ab12cd34ef56', 'sweep 3'")
    host: str | None = Field(description="the host of the last try (never the URL's path, a chat webhook's secret)")
    status: str = Field(description="pending, sent or failed")
    status_code: int | None = Field(description="the last answer's HTTP status; null: no answer (yet)")
    attempts: int
    error: str = Field(description="the last try's error")
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None = Field(description="pending only: when it is tried again")


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None = None  # the cursor of the next page; None on the last
