"""A run's log is kept once (issue 17 item 5): when the run ends, the job's own stdout.log leaves
its run folder, and the log is the one stored (up to CADDIE_LOG_MAX_BYTES) in the artifact store.
Real executor, local launcher (sealed job) and PostgreSQL: the executor tests' stand-in trainer."""

from __future__ import annotations

from sqlalchemy import func, select

from service.core.models import LogChunk, Run
from service.core.storage import LocalArtifactStore
from service.runs.logs import archive_row, whole_log
from tests.worker.run.test_executor import go, maker, new_run, settings  # noqa: F401 (fixtures)


def test_an_ended_runs_log_is_stored_once_up_to_the_cap_and_its_folder_copy_is_gone(maker, settings) -> None:  # noqa: F811
    capped = settings.model_copy(update={"log_max_bytes": 60})  # the first line fits, the step lines do not
    run_id = new_run(maker)
    assert go(maker, capped, run_id) == f"run {run_id} SUCCEEDED"
    [attempt] = (settings.home / "runs" / str(run_id)).glob("attempt-*")
    assert not (attempt / "stdout.log").exists()  # the job's uncapped copy went with the run's end
    assert (attempt / "result.json").exists()  # its outputs stay until retention
    with maker() as s:
        run = s.get_one(Run, run_id)
        stored = whole_log(s, run_id, LocalArtifactStore(settings.home / "artifacts"))
        assert stored == b"seed:5 data:./data/datasets/fineweb10B_sp8192\n" and run.log_truncated_at == len(stored)
        assert run.log_bytes > len(stored) and run.val_bpb == 2.5  # the rest was read for its figures, not kept
        assert archive_row(s, run_id) is not None and s.scalar(select(func.count()).select_from(LogChunk).where(LogChunk.run_id == run_id)) == 0
