"""The API's on-submit hook (CADDIE_ON_SUBMIT_HOOK=worker.notify:runs_submitted).

Asks for a scheduler tick at once, so a new run need not wait for beat's next
tick. Never raises: if the broker is down, beat and the janitor catch up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)


def runs_submitted(run_ids: Sequence[int]) -> None:
    try:
        from worker.tasks import request_schedule_tick

        request_schedule_tick()
    except Exception:  # noqa: BLE001
        log.warning("could not request a scheduler tick for runs %s", list(run_ids), exc_info=True)
