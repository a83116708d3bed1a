"""Things about the service itself: the trainer config schema, health."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text

from service.api.deps import SessionDep
from trainer.config import TrainerConfig

router = APIRouter(tags=["meta"])
health_router = APIRouter(tags=["meta"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    database: str


@router.get("/config/schema")
def config_schema() -> dict[str, Any]:
    """JSON Schema of the `config` a run spec may carry (keyed by env-var name)."""
    return TrainerConfig.json_schema()


@health_router.get("/healthz", response_model=Health)
def healthz(session: SessionDep) -> Health:
    session.execute(text("SELECT 1"))
    return Health(database=session.get_bind().dialect.name)
