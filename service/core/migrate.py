"""Run the Alembic migrations from Python (``caddie db upgrade``, tests, `caddie up`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from service.core.settings import get_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config for this checkout's migrations/ aimed at ``url``
    (default: CADDIE_DATABASE_URL)."""
    ini = REPO_ROOT / "alembic.ini"
    cfg = Config(str(ini)) if ini.exists() else Config()
    cfg.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    # '%' is ConfigParser interpolation syntax; URLs may carry %-escapes.
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
