"""One settings object, described once: the README's table is the one its fields make."""

from __future__ import annotations

import re
from pathlib import Path

from service.core.settings import Settings, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_says_what_it_does() -> None:
    assert [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()] == []


def test_the_readme_table_is_the_generated_one() -> None:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", text, re.S)
    assert found, "README.md lost its settings table markers"
    assert found.group(1) == markdown_table(), "README's settings table is out of date: paste `python -m service.core.settings` into it"


def test_no_other_settings_class_reads_the_environment() -> None:
    # A second pydantic-settings class would be a second, undocumented set of CADDIE_ variables.
    repo = README.parent
    others = [str(p.relative_to(repo)) for top in ("service", "worker", "cli") for p in (repo / top).rglob("*.py")
              if "BaseSettings)" in p.read_text(encoding="utf-8") and p != repo / "service/core/settings.py"]
    assert others == []
