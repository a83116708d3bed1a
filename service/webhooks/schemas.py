"""Response bodies of GET /teams/{name}/deliveries (pydantic v2)."""

from __future__ import annotations

from pydantic import BaseModel

from service.webhooks.history import DeliveryView


class DeliveryPage(BaseModel):
    items: list[DeliveryView]  # the domain's view is the body: its fields and their descriptions are declared once, there
    next_cursor: str | None = None  # the cursor of the next page; None on the last
