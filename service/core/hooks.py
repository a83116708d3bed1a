"""Call the configured on-submit hook (CADDIE_ON_SUBMIT_HOOK="module:function").

The hook is named in configuration, so the service does not depend on the
worker in code. A failing hook never fails a submit: the runs are already
stored, and the periodic scheduler picks them up anyway.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from functools import lru_cache

log = logging.getLogger(__name__)


@lru_cache(maxsize=8)
def _load(spec: str) -> Callable[[Sequence[int]], None]:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"CADDIE_ON_SUBMIT_HOOK {spec!r}: expected module:function")
    return getattr(importlib.import_module(module), name)


def call_on_submit_hook(spec: str, run_ids: Sequence[int]) -> None:
    try:
        _load(spec)(list(run_ids))
    except Exception:  # noqa: BLE001
        log.warning("on-submit hook %s failed for runs %s", spec, list(run_ids), exc_info=True)
