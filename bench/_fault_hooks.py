"""The `runs` worker of bench/faults.py, with one fault point armed by a marker file (bench-only).

    python bench/_fault_hooks.py -A worker.celery_app worker ...   (celery's own arguments)

The launch gap: when ``$CADDIE_HOME/kill-before-record`` exists, the first executor that has
submitted a job and is about to record it (PROVISIONING -> RUNNING with the job's handle)
removes the file and SIGKILLs its own worker process, so the job runs with nothing in the
database saying so. The file is removed first, so the fault strikes once; every other path
of the worker is caddie's own, unchanged.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repository first


def arm(home: Path) -> None:
    from worker.run import executor

    original = executor.RunDriver._to_running
    marker = home / "kill-before-record"

    # Keyword arguments pass through as they are: the executor's own signature may grow (it did: environment=).
    def to_running(self: Any, handle: Any, reason: str, **kw: Any) -> bool:
        if kw.get("warm") is not None:  # a launch (or an adoption) being recorded, not a re-attach
            try:
                marker.unlink()
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, handle, reason, **kw)

    executor.RunDriver._to_running = to_running  # type: ignore[method-assign]


if __name__ == "__main__":
    arm(Path(os.environ["CADDIE_HOME"]))
    from celery.__main__ import main

    sys.argv[0] = "celery"
    sys.exit(main())
