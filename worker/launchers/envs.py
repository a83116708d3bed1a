"""A script run's declared Python environment, built on this machine with uv, once per content hash.

::

    the canonical description (service.runs.scripts.environment.describe)
        │  system packages present? (dpkg, else on PATH): if not, LaunchFailed naming them, at once
        ▼
    envs/<folder_name>/            under envs/<folder_name>.lock (fcntl): two runs never build one twice
        uv venv --python P         P: the declared version (a uv-managed one where the machine has none), else this Python
        node_packages: a .pth      this (the worker's) Python's site folders after the environment's own: the node's torch
        uv pip install --no-build  -r the requirements, the packages, its index/find-links URLs, the operator's wheels
        caddie-env.json            what is inside (worker/launchers/env_probe.py run by its Python), written last:
                                   its presence is what "built" means; a half-built folder is removed and built again

``--no-build``: only wheels are installed. Building an sdist runs its own code, here outside the
sandbox; a package without a wheel fails the build, saying so (uv's message). A failed build
removes its folder and raises LaunchFailed with uv's own error lines. The job then runs this
folder's ``bin/python``, the folder read-only inside its sandbox.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.runs.scripts.environment import env_hash, folder_name, requirement_lines
from worker.launchers.base import LaunchFailed

REPORT = "caddie-env.json"  # in an environment's folder, written once it is whole
PROBE = Path(__file__).resolve().parent / "env_probe.py"
UV_CACHE = ".uv-cache"  # under the envs folder: wheels fetched once serve every later build (hard links)
UV_PYTHONS = ".python"  # under the envs folder: uv-managed Pythons, bound read-only into the jobs that use them
ERROR_LINES = 12  # of uv's output, in a failed run's reason
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class BuiltEnv:
    folder: Path
    report: dict[str, Any]

    @property
    def python(self) -> Path:
        return self.folder / "bin" / "python"

    def ro_paths(self) -> list[Path]:
        """What a sealed job needs to run this environment's Python: the folder and its base Python's installation."""
        paths = [self.folder]
        try:
            cfg = (self.folder / "pyvenv.cfg").read_text(encoding="utf-8")
        except OSError:
            return paths
        m = re.search(r"^home\s*=\s*(.+)$", cfg, re.M)
        if m:
            paths.append(Path(m.group(1).strip()).resolve().parent)  # .../bin -> the installation's prefix
        return paths


def uv_bin() -> str:
    """The uv binary the `uv` wheel ships (a worker dependency)."""
    from uv import find_uv_bin  # imported here: the service never needs it

    return find_uv_bin()


def missing_system_packages(names: Sequence[str]) -> list[str]:
    """The Debian packages of ``names`` this machine lacks: not installed as dpkg says, nor a command of that name on PATH."""
    missing = []
    dpkg = shutil.which("dpkg-query")
    for name in names:
        if dpkg:
            done = subprocess.run([dpkg, "-W", "-f=${Status}", name], capture_output=True, text=True, check=False)
            if done.returncode == 0 and done.stdout.strip().endswith(" installed"):
                continue
        if shutil.which(name):
            continue
        missing.append(name)
    return missing


def read_report(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / REPORT).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def probe(python: Path | str, timeout_s: float = 120.0) -> dict[str, Any]:
    """What the Python at ``python`` holds (env_probe.py, run isolated: -I). LaunchFailed if it cannot say."""
    try:
        done = subprocess.run([str(python), "-I", str(PROBE)], capture_output=True, text=True, timeout=timeout_s, check=False,
                              stdin=subprocess.DEVNULL, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchFailed(f"cannot read the environment of {python}: {exc}") from None
    if done.returncode != 0:
        raise LaunchFailed(f"cannot read the environment of {python}: {_tail(done.stderr) or f'exit {done.returncode}'}")
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise LaunchFailed(f"cannot read the environment of {python}: not JSON: {done.stdout[:200]!r}") from None
    return report if isinstance(report, dict) else {}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # a second run waits here while the first builds
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail(text: str, lines: int = ERROR_LINES) -> str:
    """uv's last error lines as one line each, joined: what a failed run's reason shows."""
    kept = [ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def uv_env(envs_dir: Path, offline: bool) -> dict[str, str]:
    """uv's environment: the worker's own (an operator's UV_* settings, proxies) with caddie's cache and Python folders."""
    env = {**os.environ, "UV_CACHE_DIR": str(envs_dir / UV_CACHE), "UV_PYTHON_INSTALL_DIR": str(envs_dir / UV_PYTHONS),
           "NO_COLOR": "1", "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)  # the worker's own venv is not the one being built
    if offline:
        env["UV_OFFLINE"] = "1"
        env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def install_argv(description: Mapping[str, Any], python: Path, requirements: Path, wheels: Path | None, offline: bool) -> list[str]:
    """``uv pip install`` of a description into the environment of ``python`` (only wheels)."""
    argv = [uv_bin(), "pip", "install", "--python", str(python), "--no-build"]
    if str(description.get("requirements") or "").strip():
        argv += ["-r", str(requirements)]
    argv += list(description.get("packages") or ())
    for url in description.get("index_urls") or ():
        argv += ["--extra-index-url", url]
    for url in description.get("find_links") or ():
        argv += ["--find-links", url]
    if wheels is not None:
        argv += ["--find-links", str(wheels)]  # the operator's local wheels (CADDIE_ENV_WHEELS)
    if offline:
        argv.append("--offline")
    return argv


def apt_install(names: Sequence[str], timeout_s: float) -> None:
    """apt-get install ``names`` (a SkyPilot node: caddie's own machine for the run; never the local worker's)."""
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    for argv in ([*sudo, "apt-get", "update", "-qq"], [*sudo, "apt-get", "install", "-y", "-qq", *names]):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LaunchFailed(f"system package(s) {', '.join(names)} could not be installed: {exc}") from None
        if done.returncode != 0 and "install" in argv:
            raise LaunchFailed(f"system package(s) {', '.join(names)} could not be installed: {_tail(done.stderr + done.stdout)}")


def ensure_env(envs_dir: Path, description: Mapping[str, Any], *, wheels: Path | None = None, offline: bool = False,
               timeout_s: float = 1800.0, apt: bool = False) -> BuiltEnv:
    """The environment of ``description`` on this machine, built now unless it already is. ``apt``: install
    the system packages it lacks (a SkyPilot node); otherwise a missing one fails it at once.

    LaunchFailed: a system package is missing (named), or uv could not build it (uv's own lines)."""
    missing = missing_system_packages(list(description.get("system_packages") or ()))
    if missing and apt:
        apt_install(missing, timeout_s)
        missing = missing_system_packages(missing)
    if missing:
        raise LaunchFailed(f"system package(s) not on this machine: {', '.join(missing)}; the local launcher installs none "
                           f"(the operator installs them: apt-get install {' '.join(missing)})")
    envs_dir = envs_dir.resolve()
    envs_dir.mkdir(parents=True, exist_ok=True)
    name = folder_name(description)
    folder = envs_dir / name
    report = read_report(folder)
    if report is not None:
        return _current(folder, description, report)
    with _locked(envs_dir / f"{name}.lock"):
        report = read_report(folder)  # built by another run while this one waited
        if report is not None:
            return _current(folder, description, report)
        shutil.rmtree(folder, ignore_errors=True)  # a build that died half-way
        try:
            report = _build(envs_dir, folder, description, wheels, offline, timeout_s)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    return BuiltEnv(folder, report)


def _current(folder: Path, description: Mapping[str, Any], report: dict[str, Any]) -> BuiltEnv:
    """A built environment as it is now: one that sees the node's packages is read again (the node's torch may
    have changed since the build, and a run records what it ran on)."""
    built = BuiltEnv(folder, report)
    if description.get("node_packages"):
        now = {**report, **probe(built.python)}
        if now != report:  # kept on disk too: the launcher reads a finished run's report from there
            _write_report(folder, now)
            built = BuiltEnv(folder, now)
    return built


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout_s: float, what: str) -> None:
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LaunchFailed(f"the run's environment could not be built: {what} took longer than {timeout_s:.0f} s (CADDIE_ENV_BUILD_TIMEOUT_S)") from None
    except OSError as exc:
        raise LaunchFailed(f"the run's environment could not be built: {what}: {exc}") from None
    if done.returncode != 0:
        raise LaunchFailed(f"the run's environment could not be built: {what} failed: {_tail(done.stderr + done.stdout)}")


NODE_PTH = "_caddie_node_packages.pth"


def node_site_problem(declared_python: str) -> str | None:
    """Why an environment asking for the node's packages cannot have them (its Python is another version), or None."""
    node = f"{sys.version_info.major}.{sys.version_info.minor}"
    if declared_python and not (declared_python == node or declared_python.startswith(node + ".")):
        return (f"node_packages: the node's packages are built for its Python {node}; this environment asks for Python "
                f"{declared_python} (declare python \"{node}\", or leave it out)")
    return None


def add_node_packages(folder: Path) -> None:
    """Make the node's own site folders (this Python's: what a run with no environment sees) visible beneath the
    environment's, as venv's --system-site-packages would for a base Python. Done with site.addsitedir in a .pth,
    because the node's Python is often a venv itself (a GPU image's /opt/.../.venv holding torch), and
    --system-site-packages would reach only that venv's base."""
    dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
    lib = folder / "lib"
    targets = sorted(lib.glob("python3*/site-packages"))
    if not targets:
        raise LaunchFailed(f"the run's environment could not be built: no site-packages under {lib}")
    line = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n"
    for t in targets:
        (t / NODE_PTH).write_text(line, encoding="utf-8")


def _build(envs_dir: Path, folder: Path, description: Mapping[str, Any], wheels: Path | None, offline: bool, timeout_s: float) -> dict[str, Any]:
    env = uv_env(envs_dir, offline)
    if description.get("node_packages") and (problem := node_site_problem(str(description.get("python") or ""))):
        raise LaunchFailed(f"the run's environment could not be built: {problem}")
    python = str(description.get("python") or sys.executable)  # undeclared: the worker's own Python version
    _run([uv_bin(), "venv", "--python", python, str(folder)], env, envs_dir, timeout_s, f"uv venv --python {python}")
    if description.get("node_packages"):
        add_node_packages(folder)
    if requirement_lines(description):
        with tempfile.TemporaryDirectory(dir=envs_dir, prefix=".req-") as tmp:
            req = Path(tmp) / "requirements.txt"
            req.write_text(str(description.get("requirements") or ""), encoding="utf-8")
            _run(install_argv(description, folder / "bin" / "python", req, wheels, offline), env, envs_dir, timeout_s, "uv pip install")
    report = {**probe(folder / "bin" / "python"), "env_hash": env_hash(description), "declared": dict(description), "built_at": time.time()}
    _write_report(folder, report)
    return report


def _write_report(folder: Path, report: Mapping[str, Any]) -> None:
    tmp_report = folder / f".{REPORT}.{os.getpid()}.tmp"
    tmp_report.write_text(json.dumps(report, indent=1), encoding="utf-8")
    os.replace(tmp_report, folder / REPORT)  # whole or absent: its presence means built


def main(args: list[str] | None = None) -> int:
    """``python -m worker.launchers.envs --envs-dir DIR [--apt]`` on a SkyPilot node: builds the environment
    described by $CADDIE_ENV_SPEC (JSON) unless built; prints its folder, then each other path a sealed job
    needs read-only, one a line. Exit 1 with ``caddie: <why>`` on stderr when it cannot be built."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m worker.launchers.envs")
    parser.add_argument("--envs-dir", required=True, type=Path)
    parser.add_argument("--apt", action="store_true", help="apt-get install the system packages this node lacks")
    parser.add_argument("--timeout", type=float, default=1800.0)
    ns = parser.parse_args(args)
    try:
        description = json.loads(os.environ["CADDIE_ENV_SPEC"])
        built = ensure_env(ns.envs_dir, description, timeout_s=ns.timeout, apt=ns.apt)
    except (KeyError, json.JSONDecodeError) as exc:
        print(f"caddie: no environment description in CADDIE_ENV_SPEC: {exc}", file=sys.stderr, flush=True)
        return 1
    except LaunchFailed as exc:
        print(f"caddie: {exc}", file=sys.stderr, flush=True)
        return 1
    print("\n".join(str(p) for p in built.ro_paths()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
