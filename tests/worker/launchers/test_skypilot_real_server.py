"""find() against SkyPilot's real API server (issue 21 item 2): the shapes the launcher reads to adopt a
launch are the server's own, not only the stand-in's: `sky.api_status` lists a `sky.launch` request with
its cluster's name and a body that carries the task's name (the attempt's launch key), and `sky.queue`
of a cluster that does not exist is an error the launcher reads as "no job there". No cloud is enabled
(a HOME of no credentials), so the launch request fails on the server after a moment; what is checked
is what the server says about it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytest.importorskip("sky")
import sky  # noqa: E402

from service.core.settings import Settings  # noqa: E402
from tests.sky_server import running_sky_server  # noqa: E402
from worker.launchers.base import ClusterHandle, JobSpec  # noqa: E402
from worker.launchers.skypilot import SkyPilotLauncher, names_task  # noqa: E402

pytestmark = pytest.mark.slow  # the server's start and a launch's upload: ~17 s here


def _forget_the_endpoint() -> None:
    from sky.server import common

    # The client caches where its server is for the process's life (annotations.lru_cache(scope="global")).
    common.get_server_url.cache_clear()
    common.is_api_server_local.cache_clear()


@pytest.fixture()
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # The server names the accelerator from SkyPilot's online catalog when it validates a launch; it cannot be
    # fetched here, so the server's HOME holds the one row that matters (read instead of fetched).
    catalog = tmp_path / "sky-home" / ".sky" / "catalogs" / "v6" / "common" / "accelerators.csv"
    catalog.parent.mkdir(parents=True)
    catalog.write_text('AcceleratorName,Clouds\nH100,"AWS, GCP"\n')
    with running_sky_server(tmp_path) as url:
        monkeypatch.setenv("SKYPILOT_API_SERVER_ENDPOINT", url)
        monkeypatch.setenv("HOME", str(tmp_path / "client-home"))  # the client's own files go here, not to anyone's ~/.sky
        _forget_the_endpoint()
        try:
            yield url
        finally:
            _forget_the_endpoint()


def test_the_real_server_lists_a_launch_the_way_find_reads_it(tmp_path: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd
    from sky.utils import accelerator_registry

    # The client names it too, from its own copy of that catalog.
    monkeypatch.setattr(accelerator_registry, "_accelerator_df", pd.DataFrame({"AcceleratorName": ["H100"], "Clouds": ["AWS, GCP"]}))
    sp = SkyPilotLauncher(Settings(home=tmp_path), sdk=sky, min_poll_s=0)
    cluster = ClusterHandle("skypilot", "caddie-h100x8-t1-5", "H100:8", {"reused": False})
    assert sp.find(5, "run-5-attempt-1", cluster) is None  # nothing launched: no request, and sky.queue says no such cluster

    job = JobSpec(run_id=5, env={"NUM_LAYERS": "11"}, hardware="H100:8", timeout_s=1800, launch_key="run-5-attempt-1")
    handle = sp.submit(cluster, job)
    rid = handle.data["request_id"]
    [req] = sky.api_status([rid])
    assert str(req.name).rsplit(".", 1)[-1] == "launch" and req.cluster_name == cluster.name
    assert "caddie-run-5-attempt-1" in str(req.request_body)  # the task's name, so the job's, in the request's body
    # read the way find() reads it: the body's JSON, its task the SDK's YAML (not the text search kept for other shapes)
    docs = list(yaml.safe_load_all(json.loads(str(req.request_body))["task"]))
    assert "caddie-run-5-attempt-1" in [d.get("name") for d in docs if isinstance(d, dict)]
    assert names_task(str(req.request_body), "caddie-run-5-attempt-1") and not names_task(str(req.request_body), "caddie-clean-run-5-attempt-1")
    found = sp.find(5, "run-5-attempt-1", cluster)
    # Adopted while the server still works on it; once it failed (no cloud here), nothing is left to adopt.
    status = str(sky.api_status([rid])[0].status).rsplit(".", 1)[-1]
    assert (found is not None and found.data["request_id"] == rid) or status in ("FAILED", "CANCELLED", "SUCCEEDED"), (found, status)
    assert sp.find(5, "run-5-attempt-2", cluster) is None  # another attempt's key is not this launch
    end = time.monotonic() + 120
    while str(sky.api_status([rid])[0].status).rsplit(".", 1)[-1] in ("PENDING", "RUNNING"):
        assert time.monotonic() < end
        time.sleep(0.5)
    assert sp.find(5, "run-5-attempt-1", cluster) is None  # the failed launch brought up no cluster, so no job
