"""Escapes tried from inside a real sandboxed job (issue 17 item 1): every one is refused."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from service.core.settings import Settings
from tests.worker.launchers.test_local_launcher import wait_terminal
from worker.launchers.base import JobSpec, JobState, LaunchFailed
from worker.launchers.local import REPO_ROOT, LocalLauncher

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap is not installed (apt-get install bubblewrap)")

# Each attempt records "refused: <why>" or "DONE: <what it got>".
ESCAPES = r'''
import json, os, socket, subprocess, sys
a = json.loads(sys.argv[1])
out = {}
def attempt(name, fn):
    try:
        out[name] = "DONE: " + repr(fn())[:200]
    except Exception as exc:
        out[name] = "refused: " + type(exc).__name__
attempt("proc_environ", lambda: open(f"/proc/{a['pid']}/environ", "rb").read())
attempt("secret_key", lambda: open(a["secret_key"]).read())
attempt("other_run", lambda: open(a["other_run"]).read())
attempt("caddie_home", lambda: sorted(os.listdir(a["home"])))
attempt("runs", lambda: sorted(os.listdir(os.path.join(a["home"], "runs"))))
attempt("write_trainer", lambda: open(a["trainer_file"], "a").write("import os; os.system('evil')\n"))
attempt("write_python", lambda: open(os.path.join(sys.prefix, "caddie-was-here"), "w").write("x"))
attempt("write_data", lambda: open(os.path.join(a["data"], "poison"), "w").write("x"))
attempt("postgres", lambda: socket.create_connection(("127.0.0.1", 5432), timeout=2))
attempt("signal", lambda: os.kill(a["pid"], 0))
# a daemon that outlives the job unless the sandbox takes it down
subprocess.Popen(["sleep", "300", a["marker"]], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)  # torchrun's rendezvous needs loopback
socket.create_connection(srv.getsockname(), timeout=2).close()
out["loopback"] = "works"
out["uid"] = os.getuid()
open("escapes.json", "w").write(json.dumps(out))
'''


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if marker in (p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found



def test_every_escape_from_a_sandboxed_job_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = tmp_path / "data"
    data.mkdir()
    script = tmp_path / "escape.py"
    script.write_text(ESCAPES)
    settings = Settings(home=home, data_root=data, trainer_command=[sys.executable, str(script)], gpu_count=0)
    home.mkdir(exist_ok=True)
    (home / "secret_key").write_text("the session key")
    other = settings.runs_dir / "99" / "attempt-1"
    other.mkdir(parents=True)
    (other / "train_gpt.py").write_text("another team's script")
    marker = f"caddie-escape-{os.getpid()}-{time.time_ns()}"
    args = {"pid": os.getpid(), "secret_key": str(home / "secret_key"), "other_run": str(other / "train_gpt.py"), "home": str(home),
            "trainer_file": str(REPO_ROOT / "trainer" / "__main__.py"), "data": str(data), "marker": marker}  # fmt: skip
    settings = Settings(home=home, data_root=data, trainer_command=[sys.executable, str(script), json.dumps(args)], gpu_count=0)
    launcher = LocalLauncher(settings)
    before = (REPO_ROOT / "trainer" / "__main__.py").read_bytes()
    handle = launcher.submit(launcher.acquire(5, "local"), JobSpec(run_id=5, env={}, hardware="local", timeout_s=60))
    st = wait_terminal(launcher, handle, 30)
    assert st.state == JobState.SUCCEEDED, (st, launcher.read_log(handle, 0))
    seen = json.loads((Path(handle.data["workdir"]) / "escapes.json").read_text())
    for name in ("proc_environ", "secret_key", "other_run", "write_trainer", "write_python", "write_data", "postgres", "signal"):
        assert seen[name].startswith("refused"), (name, seen[name])
    # CADDIE_HOME holds only the empty path down to the job's own folder
    assert (seen["caddie_home"], seen["runs"]) == ("DONE: ['runs']", "DONE: ['5']")
    assert seen["loopback"] == "works" and seen["uid"] == 65534
    assert (REPO_ROOT / "trainer" / "__main__.py").read_bytes() == before
    assert not (data / "poison").exists() and not (Path(sys.prefix) / "caddie-was-here").exists()
    time.sleep(0.3)
    assert not _marked(marker), "a process of the job outlived it"


def test_no_bwrap_fails_the_job_clearly_unless_the_unsafe_opt_out_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # bwrap is nowhere on it
    settings = Settings(home=tmp_path / "home", trainer_command=[sys.executable, "-c", "print('unsealed')"], gpu_count=0)
    launcher = LocalLauncher(settings)
    with pytest.raises(LaunchFailed, match="bubblewrap"):
        launcher.submit(launcher.acquire(6, "local"), JobSpec(run_id=6, env={}, hardware="local", timeout_s=60))
    unsafe = LocalLauncher(Settings(**{**settings.model_dump(), "sandbox": "none"}))
    handle = unsafe.submit(unsafe.acquire(6, "local"), JobSpec(run_id=6, env={}, hardware="local", timeout_s=60))
    assert wait_terminal(unsafe, handle, 30).state == JobState.SUCCEEDED
