"""A script run's own environment (issue 20 item 3) through the local launcher: built with uv from
local wheels (offline, nothing downloaded) into CADDIE_ENVS_DIR/<hash> once, before the job; the job
runs that environment's Python, sealed; a build that fails, or a system package this machine lacks,
fails the submit before any run folder or training, with uv's own words or the package named."""

from __future__ import annotations

import functools
import http.server
import site
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.core.settings import Settings
from service.runs.scripts.environment import describe, folder_name
from tests.wheels import make_wheel
from worker.launchers.base import JobSpec, JobState, LaunchFailed
from worker.launchers.envs import ensure_env
from worker.launchers.local import LocalLauncher
from worker.launchers.trainer_env import AUDIT_ENV

SCRIPT = rb'''
import os, sys, tinypkg
print("python:" + sys.executable, flush=True)
print("tinypkg:" + tinypkg.__file__ + " " + str(tinypkg.VALUE), flush=True)
try:
    open(os.path.join(os.path.dirname(tinypkg.__file__), "poison.py"), "w").write("x")
    print("env_write:DONE", flush=True)
except OSError as exc:
    print("env_write:refused " + type(exc).__name__, flush=True)
'''


@pytest.fixture()
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    make_wheel(folder, "tinypkg", "1.2.3", {"tinypkg/__init__.py": "VALUE = 42\n"})
    return folder


@pytest.fixture()
def launcher(tmp_path: Path, wheels: Path) -> LocalLauncher:
    data = tmp_path / "data" / "datasets" / "fineweb10B_sp1024"
    data.mkdir(parents=True)
    return LocalLauncher(Settings(home=tmp_path / "home", data_root=tmp_path / "data", gpu_count=0, env_wheels=wheels, env_offline=True))


def job(requirements: bytes, **decl: object) -> JobSpec:
    files = {"train_gpt.py": SCRIPT, "requirements.txt": requirements}
    return JobSpec(run_id=5, env={"SEED": "1", **AUDIT_ENV}, hardware="cpu", timeout_s=60, script_files=files,
                   environment=describe({"requirements": "requirements.txt", **decl}, files))


def wait(launcher: LocalLauncher, handle, limit: float = 30) -> JobState:
    end = time.monotonic() + limit
    while (status := launcher.status(handle)).state in (JobState.PENDING, JobState.RUNNING):
        assert time.monotonic() < end, "the script did not finish"
        time.sleep(0.05)
    return status.state


def test_the_job_runs_the_python_of_its_own_environment_built_once(launcher: LocalLauncher, tmp_path: Path) -> None:
    j = job(b"# the record's own file\ntinypkg==1.2.3\n", python="3.11")
    handle = launcher.submit(launcher.acquire(5, "cpu"), j)
    assert wait(launcher, handle) is JobState.SUCCEEDED, launcher.read_log(handle, 0)
    log = launcher.read_log(handle, 0).decode()
    folder = launcher.envs_dir / folder_name(j.environment or {})
    assert f"python:{folder}/bin/python" in log  # sealed (bwrap), its environment read-only inside
    assert f"tinypkg:{folder}/lib/" in log and "site-packages/tinypkg/__init__.py 42" in log
    assert "env_write:refused" in log  # its environment is read-only inside the sandbox
    assert '"event": "start"' in (Path(handle.data["workdir"]) / "audit.jsonl").read_text()  # the environment's Python loads the audit hook too
    # What it ran on is recorded: the environment's own report, read from inside it.
    report = launcher.environment(handle, Path(handle.data["workdir"]))
    assert report is not None and report["packages"]["tinypkg"] == "1.2.3" and report["torch"] is None and report["python"].startswith("3.11.")
    assert report["env_hash"].startswith(folder.name) and report["declared"]["requirements"].endswith("tinypkg==1.2.3\n")
    # A second run of the same environment uses it as built (same report, same build time).
    again = launcher.submit(launcher.acquire(6, "cpu"), job(b"# the record's own file\ntinypkg==1.2.3\n", python="3.11"))
    assert wait(launcher, again) is JobState.SUCCEEDED
    assert launcher.environment(again, Path(again.data["workdir"])) == report
    # With no environment declared, a run reports the worker's own Python.
    own = launcher.environment(launcher.submit(launcher.acquire(7, "cpu"), JobSpec(run_id=7, env={}, hardware="cpu", timeout_s=60,
                                                                                 script_files={"train_gpt.py": b"print(1)\n"})), tmp_path)
    assert own is not None and "env_hash" not in own and "psutil" in own["packages"]


def test_two_runs_asking_at_once_build_it_once(tmp_path: Path, wheels: Path) -> None:
    description = describe({"requirements": "r.txt"}, {"r.txt": b"tinypkg\n"})
    built: list = []
    threads = [threading.Thread(target=lambda: built.append(ensure_env(tmp_path / "envs", description, wheels=wheels, offline=True)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 2 and built[0].folder == built[1].folder
    assert built[0].report["built_at"] == built[1].report["built_at"]  # the second waited on the lock and took the first's


def test_a_bad_requirement_fails_before_the_run_with_uvs_message(launcher: LocalLauncher) -> None:
    with pytest.raises(LaunchFailed) as failed:
        launcher.submit(launcher.acquire(5, "cpu"), job(b"tinypkg==1.2.3\nnosuchpkg==9.9\n"))
    msg = str(failed.value)
    assert msg.startswith("the run's environment could not be built: uv pip install failed:")
    assert "No solution found when resolving dependencies" in msg and "nosuchpkg" in msg
    assert not (launcher.runs_dir / "5").exists()  # no run folder, no job: it ended before training
    assert not any(p.is_dir() and not p.name.startswith(".") for p in launcher.envs_dir.iterdir())  # the half-built folder is gone


def test_a_missing_system_package_fails_at_once_naming_it(launcher: LocalLauncher) -> None:
    start = time.monotonic()
    with pytest.raises(LaunchFailed, match=r"system package\(s\) not on this machine: caddie-no-such-pkg; the local launcher installs none"):
        launcher.submit(launcher.acquire(5, "cpu"), job(b"tinypkg\n", system_packages=["caddie-no-such-pkg", "coreutils"]))
    assert time.monotonic() - start < 5 and not launcher.envs_dir.exists()  # nothing built, nothing tried


NODE_SCRIPT = rb'''
import sys, tinypkg, psutil
print("tinypkg:" + tinypkg.__file__, flush=True)
print("psutil:" + psutil.__file__, flush=True)
'''


def test_node_packages_shows_the_nodes_own_beneath_the_environments(launcher: LocalLauncher) -> None:
    """A GPU image's torch is on no index the node reaches: node_packages lets the environment see this Python's
    packages (psutil here, torch there) after its own, sealed as before, and the report lists both."""
    files = {"train_gpt.py": NODE_SCRIPT}
    j = JobSpec(run_id=8, env={"SEED": "1", **AUDIT_ENV}, hardware="cpu", timeout_s=60, script_files=files,
                environment=describe({"packages": ["tinypkg"], "node_packages": True}, files))
    handle = launcher.submit(launcher.acquire(8, "cpu"), j)
    assert wait(launcher, handle) is JobState.SUCCEEDED, launcher.read_log(handle, 0)
    log = launcher.read_log(handle, 0).decode()
    folder = launcher.envs_dir / folder_name(j.environment or {})
    assert f"tinypkg:{folder}/lib/" in log  # the environment's own package
    node_site = next(d for d in site.getsitepackages() if (Path(d) / "psutil").is_dir())
    assert f"psutil:{node_site}/psutil/" in log  # the node's, from where the node has it
    report = launcher.environment(handle, Path(handle.data["workdir"]))
    assert report is not None and report["packages"]["tinypkg"] == "1.2.3" and "psutil" in report["packages"]
    assert report["declared"]["node_packages"] is True


def test_node_packages_with_another_python_fails_before_any_build(launcher: LocalLauncher) -> None:
    other = "3.10" if sys.version_info[:2] != (3, 10) else "3.12"
    files = {"train_gpt.py": b"print(1)\n"}
    j = JobSpec(run_id=9, env={}, hardware="cpu", timeout_s=60, script_files=files,
                environment=describe({"python": other, "node_packages": True}, files))
    with pytest.raises(LaunchFailed, match=rf"node_packages: the node's packages are built for its Python 3\.\d+; this environment asks for Python {other}"):
        launcher.submit(launcher.acquire(9, "cpu"), j)
    assert not launcher.envs_dir.exists() or not any(p.is_dir() and not p.name.startswith(".") for p in launcher.envs_dir.iterdir())


def test_a_python_this_machine_lacks_fails_offline_with_uvs_message(launcher: LocalLauncher) -> None:
    with pytest.raises(LaunchFailed, match=r"uv venv --python 3\.99 failed: .*No interpreter found for Python 3\.99"):
        launcher.submit(launcher.acquire(5, "cpu"), job(b"tinypkg\n", python="3.99"))


def test_the_report_reads_torchs_cuda_and_flashattention_as_their_wheels_ship_them(tmp_path: Path) -> None:
    """Stand-in wheels laid out as the real ones are: torch's CUDA version is read from its torch/version.py, not by importing it."""
    version_py = "from typing import Optional\n__version__ = '2.9.1+cu128'\ndebug = False\ncuda: Optional[str] = '12.8'\nhip: Optional[str] = None\n"
    make_wheel(tmp_path / "wheels", "torch", "2.9.1+cu128", {"torch/__init__.py": "raise ImportError('not imported by the probe')\n",
                                                             "torch/version.py": version_py})
    make_wheel(tmp_path / "wheels", "flash_attn_3", "3.0.0", {"flash_attn_interface.py": ""})
    description = describe({"requirements": "r.txt", "packages": ["flash_attn_3"]}, {"r.txt": b"torch==2.9.1+cu128\n"})
    assert description is not None
    report = ensure_env(tmp_path / "envs", description, wheels=tmp_path / "wheels", offline=True).report
    assert (report["torch"], report["cuda"], report["flash_attn"]) == ("2.9.1+cu128", "12.8", "flash_attn_3 3.0.0")


FA3_SCRIPT = rb'''
import flash_attn_interface, tinypkg
print("fa3:" + flash_attn_interface.__file__ + " " + flash_attn_interface.WHERE, flush=True)
print("tinypkg:" + tinypkg.__file__, flush=True)
'''


class _Index(http.server.SimpleHTTPRequestHandler):
    """Serves the test's folder and remembers every path asked for (the index's own log)."""

    asked: list[str] = []

    def log_message(self, *args: object) -> None:
        type(self).asked.append(self.path)


@pytest.fixture()
def wheel_server(tmp_path: Path) -> Iterator[str]:
    """A wheel index over HTTP, as the records' READMEs name theirs: a PEP 503 index (download.pytorch.org's
    kind) holding tinypkg, and a flat page of links (the FlashAttention 3 wheel page's kind) holding
    flash_attn_3. Its own wheels, nothing from the network."""
    root = tmp_path / "site"
    make_wheel(root / "files", "tinypkg", "1.2.3", {"tinypkg/__init__.py": "VALUE = 42\n"})
    make_wheel(root / "fa3", "flash_attn_3", "3.0.0", {"flash_attn_interface.py": "WHERE = 'the wheel page'\n"})
    (root / "simple" / "tinypkg").mkdir(parents=True)
    (root / "simple" / "index.html").write_text('<a href="tinypkg/">tinypkg</a>\n')
    (root / "simple" / "tinypkg" / "index.html").write_text(
        '<a href="../../files/tinypkg-1.2.3-py3-none-any.whl">tinypkg-1.2.3-py3-none-any.whl</a>\n')
    (root / "fa3" / "index.html").write_text('<a href="flash_attn_3-3.0.0-py3-none-any.whl">flash_attn_3-3.0.0-py3-none-any.whl</a>\n')
    _Index.asked = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Index, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_wheels_come_from_the_index_and_the_wheel_page_the_run_declares(tmp_path: Path, wheel_server: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 3's extra indexes, over real HTTP: the run names an index and a page of links (FlashAttention 3's
    way), the node's uv fetches from them, and the job imports what came from there. The default index is
    an empty one on the same server (every package 404), so uv never leaves it (no network in CI) and finds
    nothing but through what the run declared."""
    monkeypatch.setenv("UV_DEFAULT_INDEX", f"{wheel_server}/empty/")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a machine with a proxy set still reaches the local server directly
    data = tmp_path / "data" / "datasets" / "fineweb10B_sp1024"
    data.mkdir(parents=True)
    launcher = LocalLauncher(Settings(home=tmp_path / "home", data_root=tmp_path / "data", gpu_count=0))  # no operator wheels, online
    files = {"train_gpt.py": FA3_SCRIPT}
    decl = {"packages": ["flash_attn_3", "tinypkg==1.2.3"], "index_urls": [f"{wheel_server}/simple/"], "find_links": [f"{wheel_server}/fa3/"]}
    j = JobSpec(run_id=9, env={"SEED": "1", **AUDIT_ENV}, hardware="cpu", timeout_s=60, script_files=files, environment=describe(decl, files))
    handle = launcher.submit(launcher.acquire(9, "cpu"), j)
    assert wait(launcher, handle) is JobState.SUCCEEDED, launcher.read_log(handle, 0)
    log = launcher.read_log(handle, 0).decode()
    folder = launcher.envs_dir / folder_name(j.environment or {})
    assert f"fa3:{folder}/lib/" in log and "flash_attn_interface.py the wheel page" in log
    assert f"tinypkg:{folder}/lib/" in log
    assert "/fa3/flash_attn_3-3.0.0-py3-none-any.whl" in _Index.asked  # fetched from the page the run named
    assert "/files/tinypkg-1.2.3-py3-none-any.whl" in _Index.asked  # and from its index
    report = launcher.environment(handle, Path(handle.data["workdir"]))
    assert report is not None and report["flash_attn"] == "flash_attn_3 3.0.0" and report["packages"]["tinypkg"] == "1.2.3"
