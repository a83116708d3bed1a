"""The worker records the node's GPUs at launch (runs.node_hardware), for every run: a real
local run on this machine (the local launcher, sealed as in production, probing `nvidia-smi -L`)
records "cpu"; the rules judge it and billing bills it instead of the spec's H100:8."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy import select, update

from service.billing.accounting import load_team_runs
from service.core.hardware import NodeHardware, probe_local_node
from service.core.models import Run, RunEvent, Team
from service.core.settings import Settings
from tests.worker.run.test_executor import STAND_IN, go, maker, new_run  # noqa: F401  (maker: the fixture)
from worker.launchers.local import LocalLauncher
from worker.launchers.skypilot import NODE_REPORT, SkyPilotLauncher

pytestmark = pytest.mark.skipif(probe_local_node().gpus > 0, reason="asserts what a machine with no GPU records")


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    # gpu_count None: the launcher asks nvidia-smi, as a deployment that declares nothing does.
    return Settings(home=tmp_path, trainer_command=[sys.executable, str(script)], gpu_count=None, heartbeat_s=0.5,
                    poll_interval_s=0.05)  # fmt: skip  (sandbox: bwrap, the default)


def test_a_local_run_records_its_node_as_the_cpu_and_is_judged_and_billed_on_it(maker, settings) -> None:  # noqa: F811
    run_id = new_run(maker, track="10min_16mb")
    with maker() as s:
        s.execute(update(Run).where(Run.id == run_id).values(hardware="H100:8"))  # what the spec asked for
        s.commit()
    assert go(maker, settings, run_id) == f"run {run_id} SUCCEEDED"
    with maker() as s:
        run = s.get_one(Run, run_id)
        assert run.node_hardware == {"gpu_name": "cpu", "gpus": 0, "source": "nvidia-smi -L", "hardware": "cpu"}
        running = s.scalars(select(RunEvent.reason).where(RunEvent.run_id == run_id, RunEvent.to_status == "RUNNING")).one()
        assert "node: the CPU (no GPU) (cpu, not the H100:8 it asked for)" in running
        [train_time] = [c for c in run.checks if c["rule"] == "train_time"]
        assert train_time["verdict"] == "not_comparable" and "as its node reported" in train_time["reason"], train_time
        team = s.scalar(select(Team.id).where(Team.name == "exec"))
        [record] = [r for r in load_team_runs(s, team, run.submitted_at) if r.run_id == run_id]
        assert record.hardware == "cpu"  # billed on what ran: no GPU-hours


class NodeReportingLauncher(LocalLauncher):
    """The local launcher, plus the node report a SkyPilot node's run script leaves beside its outputs
    (SkyPilotLauncher.node_report reads the same file; its collect puts it there)."""

    def node_report(self, outdir: Path) -> NodeHardware | None:
        return SkyPilotLauncher.node_report(self, outdir)  # type: ignore[arg-type]

    def collect(self, handle, dest: Path) -> Path:
        out = super().collect(handle, dest)
        (out / NODE_REPORT).write_text("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)\n")
        return out


def test_the_nodes_own_report_at_the_end_replaces_what_was_recorded_at_launch(maker, settings) -> None:  # noqa: F811
    run_id = new_run(maker, track="10min_16mb")
    assert go(maker, settings, run_id, launcher=NodeReportingLauncher(settings)) == f"run {run_id} SUCCEEDED"
    with maker() as s:
        run = s.get_one(Run, run_id)
        assert run.node_hardware == {"gpu_name": "NVIDIA H100 80GB HBM3", "gpus": 2, "source": "nvidia-smi -L on the node", "hardware": "H100:2"}
        [train_time] = [c for c in run.checks if c["rule"] == "train_time"]  # judged on the node's 2 GPUs, not 8
        assert train_time["verdict"] == "not_comparable" and "2x NVIDIA H100 80GB HBM3" in train_time["reason"], train_time
