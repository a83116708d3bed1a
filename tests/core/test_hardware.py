"""Hardware a deployment cannot provide: refused at submit (422 naming the field and what is
provided), or accepted with CADDIE_UNAVAILABLE_HARDWARE=accept and a sentence saying where it
runs; what a node reported is what the rules judge and billing bills (service.core.hardware)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.billing.accounting import billed_hardware
from service.core.hardware import NodeHardware, derive_provided, gpus_of, parse_gpu_list, where_it_runs
from service.core.models import Run
from service.core.settings import Settings
from service.results.rules import RunFacts, Verdict, check_train_time

RUNS = "/api/v1/runs"
SMI = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0a1b)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-0a1c)
"""


def _cpu_deployment(db_url: str, tmp_path: Path, **over: object) -> Settings:
    # gpu_count=0: the local launcher of a CPU machine, whatever this host has.
    return Settings(home=tmp_path / "home", database_url=db_url, gpu_count=0, **over)


def test_a_cpu_deployment_refuses_h100x8_naming_the_field_and_what_it_provides(db_url, tmp_path, world, spec, session: Session) -> None:
    with TestClient(create_app(_cpu_deployment(db_url, tmp_path, unavailable_hardware="refuse"))) as client:
        r = client.post(RUNS, json=spec(hardware="H100:8"), headers=world.h("alice"))
        assert r.status_code == 422, r.text
        [issue] = [d for d in r.json()["detail"] if d["loc"] == ["body", "hardware"]]
        assert "cannot provide H100:8: it provides cpu" in issue["msg"] and "CADDIE_UNAVAILABLE_HARDWARE=accept" in issue["msg"]
        assert session.scalar(select(func.count()).select_from(Run)) == 0
        assert client.post(RUNS, json=spec(hardware="cpu"), headers=world.h("alice")).status_code == 201  # what it has: fine


def test_with_accept_it_is_queued_and_says_where_it_runs(db_url, tmp_path, world, spec) -> None:
    with TestClient(create_app(_cpu_deployment(db_url, tmp_path, unavailable_hardware="accept"))) as client:
        r = client.post(RUNS, json=spec(hardware="H100:8"), headers=world.h("alice"))
        assert r.status_code == 201, r.text
        run = r.json()["runs"][0]
        assert run["node_hardware"] is None
        assert run["runs_on"].startswith("asked for H100:8, which this deployment cannot provide (it provides cpu): it will run on cpu")
        page = client.get(f"/api/v1/runs/{run['id']}", headers=world.h("alice")).json()
        assert page["runs_on"] == run["runs_on"]
        assert client.post("/signin", data={"token": world.tokens["alice"], "next": "/runs"}, follow_redirects=False).status_code == 303
        html = client.get(f"/runs/{run['id']}").text
        assert '<p id="runs-on">Hardware: asked for H100:8, which this deployment cannot provide (it provides cpu)' in html


def test_a_local_box_outside_the_allowed_list_takes_specs_for_itself(db_url, tmp_path, world, spec) -> None:
    # A team's own 2x H100 box (as nvidia-smi would list it; declared here, this host has no GPU): H100:2
    # is none of the allowed defaults, yet it is the one thing `caddie up` there can run.
    settings = Settings(home=tmp_path / "home", database_url=db_url, provided_hardware="H100:2", unavailable_hardware="refuse")
    assert "H100:2" not in settings.hardware_choices
    with TestClient(create_app(settings)) as client:
        assert client.post(RUNS, json=spec(hardware="H100:2"), headers=world.h("alice")).status_code == 201
        r = client.post(RUNS, json=spec(hardware="H100:3"), headers=world.h("alice"))
        [issue] = [d for d in r.json()["detail"] if d["loc"] == ["body", "hardware"]]
        assert r.status_code == 422 and "must be one of H100:8, H100:1, H200:8, cpu, H100:2" in issue["msg"]
        assert "cannot provide H100:1: it provides H100:2" in client.post(RUNS, json=spec(hardware="H100:1"), headers=world.h("alice")).text
        assert client.post("/signin", data={"token": world.tokens["alice"], "next": "/runs/new"}, follow_redirects=False).status_code == 303
        assert '>H100:2</option>' in client.get("/runs/new").text  # the web form offers it


def test_the_local_launcher_provides_its_gpus_skypilot_its_allowed_or_declared_hardware() -> None:
    node = parse_gpu_list(SMI)
    assert (node.gpu_name, node.gpus, node.hardware) == ("NVIDIA H100 80GB HBM3", 2, "H100:2")
    assert parse_gpu_list("").hardware == "cpu"
    assert derive_provided("local", "", ["H100:8", "cpu"], node) == ["H100:2"]
    assert derive_provided("skypilot", "", ["H100:8", "H100:1", "cpu"], None) == ["H100:8", "H100:1"]
    assert derive_provided("skypilot", "H100:8", ["H100:8", "H100:1", "cpu"], None) == ["H100:8"]


def test_what_ran_is_said_judged_and_billed_not_what_was_asked() -> None:
    cpu = NodeHardware("cpu", 0, "nvidia-smi -L")
    assert where_it_runs("H100:8", cpu, ["cpu"]).startswith("asked for H100:8; ran on the CPU (no GPU) (cpu), as its node reported")
    assert where_it_runs("cpu", None, ["cpu"]) == "runs on cpu"
    assert billed_hardware("H100:8", cpu.to_json()) == "cpu" and gpus_of(billed_hardware("H100:8", cpu.to_json())) == 0
    assert billed_hardware("H100:8", None) == "H100:8"  # not launched (or before nodes were recorded): the spec's
    # A script whose log claims 8x H100 SXM, on a CPU node: the node wins, and the reason says so.
    facts = RunFacts.from_result(track="10min_16mb", hardware="H100:8", allow_noncompliant=False, node=cpu.to_json(),
                                 result={"train_seconds": 590.0, "gpu_name": "NVIDIA H100 80GB HBM3", "world_size": 8})
    check = check_train_time(facts)
    assert check.verdict == Verdict.NOT_COMPARABLE
    assert "on the CPU (no GPU) (as its node reported, nvidia-smi -L: what the node reported wins over the log; " \
           "its log says 8x NVIDIA H100 80GB HBM3)" in check.reason
    # A PCIe node passing as SXM in its log: judged on the node's model.
    pcie = NodeHardware("NVIDIA H100 PCIe", 8, "nvidia-smi -L").to_json()
    facts = RunFacts.from_result(track="10min_16mb", hardware="H100:8", allow_noncompliant=False, node=pcie,
                                 result={"train_seconds": 590.0, "gpu_name": "NVIDIA H100 80GB HBM3", "world_size": 8})
    assert check_train_time(facts).verdict == Verdict.NOT_COMPARABLE and "8x NVIDIA H100 PCIe" in check_train_time(facts).reason
    # SkyPilot gives only the accelerator name: the log's form factor of that accelerator is kept.
    sky = NodeHardware("H100", 8, "SkyPilot cluster resources").to_json()
    facts = RunFacts.from_result(track="10min_16mb", hardware="H100:8", allow_noncompliant=False, node=sky,
                                 result={"train_seconds": 590.0, "gpu_name": "NVIDIA H100 80GB HBM3", "world_size": 8})
    passed = check_train_time(facts)
    assert passed.verdict == Verdict.PASS and "on 8x NVIDIA H100 80GB HBM3 (as its node reported, SkyPilot" in passed.reason
