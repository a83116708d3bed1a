"""Things about the service itself: the trainer config schema, health."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, ProgrammingError

from service.http.deps import SessionDep
from trainer.config import TrainerConfig

router = APIRouter(tags=["meta"])
health_router = APIRouter(tags=["meta"])


try:
    VERSION = version("caddie")
except PackageNotFoundError:  # a checkout run without installing it
    VERSION = "unknown"


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    database: str
    version: str = Field(VERSION, description="caddie's version, as installed where the API runs")
    database_revision: str | None = Field(None, description="the database's migration (Alembic revision; `caddie doctor` compares it "
                                          "with its head); null: the database was never migrated")


@router.get("/config/schema")
def config_schema() -> dict[str, Any]:
    """JSON Schema of the `config` a run spec may carry (keyed by env-var name)."""
    return TrainerConfig.json_schema()


@health_router.get("/healthz", response_model=Health)
def healthz(session: SessionDep) -> Health:
    # One round trip that also proves the database answers; SELECT 1 only where no migration ran.
    try:
        revision = ",".join(session.scalars(text("SELECT version_num FROM alembic_version")).all()) or None
    except (OperationalError, ProgrammingError):
        session.rollback()
        session.execute(text("SELECT 1"))  # a database that is down still fails the check
        revision = None
    return Health(database=session.get_bind().dialect.name, database_revision=revision)
