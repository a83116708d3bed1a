"""``caddie sweep submit FILE | list | show ID | stop ID | resume ID`` (the /api/v1/sweeps endpoints).

Made by ``sweep_commands(friendly, api, out)`` so that this module needs nothing from
cli.main (which adds it as ``caddie sweep``) and the commands share main's error
handling (one ``error: ...`` line, exit 1) and its API client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from cli.client import CaddieClient, CaddieError
from cli.spec import script_upload
from service.core.text import printable

SWEEP_KEYS = ("name", "notes", "team", "track", "hardware", "priority", "base", "space", "strategy", "seeds", "max_trials",
              "max_parallel", "budget_gpu_hours", "prune", "pruner", "sampler_seed", "promote",
              "script", "files", "env", "data", "environment")  # fmt: skip
PREFIX = "/api/v1/sweeps"


def read_sweep_file(path: Path) -> dict[str, Any]:
    """The sweep file as a mapping; CaddieError naming the file (and the line) otherwise."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaddieError(f"sweep file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaddieError(f"cannot read sweep file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise CaddieError(f"sweep file {path}: invalid YAML{where}: {getattr(exc, 'problem', None) or 'not valid YAML'}") from None
    if not isinstance(data, dict):
        raise CaddieError(f"sweep file {path}: expected a mapping of {', '.join(SWEEP_KEYS)}, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in SWEEP_KEYS)
    if unknown:
        raise CaddieError(f"sweep file {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SWEEP_KEYS)}")
    return _with_script(data, path)


def _with_script(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """A script sweep's ``script:`` and ``files:`` (paths relative to the sweep file, as ``caddie submit``'s spec file
    names them) read and sent in base64; the environment's requirements file travels with them."""
    script, files = data.get("script"), data.get("files") or []
    if script is None:
        if files:
            raise CaddieError(f"sweep file {path}: files belong to a script sweep: name the script (script: train_gpt.py)")
        return data
    if not isinstance(script, str) or not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise CaddieError(f"sweep file {path}: script must be a path and files a list of paths")
    if data.get("env") is not None and not isinstance(data["env"], dict):
        raise CaddieError(f"sweep file {path}: env must be a mapping of NAME: value")
    script_path, paths = path.parent / script, [path.parent / f for f in files]
    environment = data.get("environment")
    req = environment.get("requirements") if isinstance(environment, dict) else None
    if isinstance(req, str) and (script_path.parent / req).resolve() not in {f.resolve() for f in paths}:
        paths.append(script_path.parent / req)
    return {**data, **script_upload(script_path, paths)}


def _figure(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def sweeps_table(items: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("ID", "NAME", "TEAM", "STRATEGY", "STATUS", "TRIALS", "BEST BPB", "GPU-H USED", "GPU-H SAVED"):
        table.add_column(col)
    for s in items:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(s["counts"].items())) or "none yet"
        best = s["best"]
        table.add_row(str(s["id"]), printable(s["name"]), printable(s["team"]), s["strategy"], s["status"], counts,
                      f"{_figure(best['value'])} (#{best['number']})" if best else "-", f"{s['gpu_hours_used']:.2f}", f"{s['gpu_hours_saved']:.2f}")  # fmt: skip
    return table


def _base_text(spec: dict[str, Any]) -> str:
    """A script sweep's base as its script (sha256, data, env, files); a trainer sweep's as its knobs."""
    base = spec["base"]
    if spec.get("kind") != "script":
        return str(base or "{}")
    env = " ".join(f"{k}={v}" for k, v in (base.get("env") or {}).items())
    files = len(base.get("files") or {})
    return f"script train_gpt.py {base['script'][:12]}, data {base.get('data')}" + (f", env {env}" if env else "") + (f", +{files} file(s)" if files else "")


def sweep_detail(s: dict[str, Any]) -> Iterator[Any]:
    spec = s["spec"]
    budget = spec.get("budget_gpu_hours")
    yield printable(f"sweep {s['id']} {s['name']} ({s['team']}, {s['user']}): {s['status']}, {s['status_reason']}")
    yield printable(f"{s['strategy']} over {', '.join(spec['space'])}; base {_base_text(spec)}; seeds {spec['seeds']}; "
                    f"{spec['max_trials']} trials at most, {spec['max_parallel']} at once; budget "
                    f"{'none' if budget is None else f'{budget:g} GPU-hours'}; {s['track']} on {s['hardware']}")  # fmt: skip
    prune = spec.get("prune")
    if not prune:
        yield "pruning: off"
    elif prune.get("pruner") == "median":
        yield f"pruning: Optuna's median pruner on the train loss, from step {prune['min_step']}, after {prune.get('startup_trials', 3)} complete trials"
    else:
        yield f"pruning: margin {prune['margin']:g} bpb at confidence {prune['confidence']:g}, from step {prune['min_step']}"
    promote = spec.get("promote")
    if promote:
        yield printable(f"promotion: the best {promote['top']} trial(s) run more seeds, {promote.get('step', 2)} a round, until the test "
                        f"({promote.get('policy', 'readme')} policy, against {promote.get('baseline') or 'the default baseline'}) says better or not, "
                        f"from {promote.get('min_seeds', 3)} to at most {promote.get('max_seeds', 8)} seeds")  # fmt: skip
    for p in s.get("promotion") or []:
        yield printable(promotion_line(p))
    result = s.get("result")
    if result and result.get("record_eligible"):
        yield printable(f"result: group {result['group_key']} is record-eligible; export it with: caddie export {result['group_key'][:12]}")
    elif result and result["verdict"] == "better":
        yield printable(f"result: group {result['group_key']} is {result.get('headline') or 'better'}; {result.get('record_why', '')}")
    yield f"GPU-hours used {s['gpu_hours_used']:.2f}, saved by pruning {s['gpu_hours_saved']:.2f}"
    if s.get("importance"):
        yield "knob importance (PED-ANOVA): " + ", ".join(f"{k} {v:.0%}" for k, v in s["importance"].items())
    table = Table(box=None, pad_edge=False)
    for col in ("#", "STATUS", "VAL_BPB", "GPU-H", "RUNS", "KNOBS", "WHY"):
        table.add_column(col)
    best = (s.get("best") or {}).get("number")
    for t in s.get("trials") or []:
        knobs = ", ".join(f"{k}={v}" for k, v in t["params"].items())
        mark = " best" if t["number"] == best else ""
        value = _figure(t["value"]) + (" (pred.)" if t["status"] == "pruned" and t["value"] is not None else "")
        table.add_row(f"{t['number']}{mark}", t["status"], value, _figure(t["gpu_hours"], 2), ",".join(map(str, t["run_ids"])),
                      printable(knobs), printable(t["reason"]))  # fmt: skip
    yield table


def promotion_line(p: dict[str, Any]) -> str:
    """'promoted #2 better at p = 0.0004 < 0.01 over 3 seeds (baseline 3): seeds 1, 2, 7 (3 succeeded, 1 round(s)), val_bpb 1.1003, ...
    improvement 0.13 against margin 0.00144 nats per byte, against base; record-eligible: ...; group KEY; why'."""
    line = f"promoted #{p['trial']} {p.get('headline') or p['verdict'].replace('_', ' ')}: seeds {', '.join(map(str, p.get('seeds') or [])) or '-'}"
    if p.get("succeeded") is not None:
        line += f" ({p['succeeded']} succeeded, {p['rounds']} round(s)), val_bpb {_figure(p.get('val_bpb'))}"
    if p.get("p_value") is not None:
        line += f", p = {p['p_value']:.3g} (alpha {p['alpha']:g}), improvement {p['improvement']:.5f} against margin {p['margin']:.5f} {p['unit']}"
    if p.get("baseline"):
        line += f", against {p['baseline']['name']}"
    if p.get("record_why"):
        line += f"; {p['record_why']}"
    return f"{line}; group {p.get('group_key') or '-'}; {p['why']}"


def sweep_commands(friendly: Callable[[Any], Any], api: Callable[[], AbstractContextManager[CaddieClient]], out: Console) -> typer.Typer:
    sweep_app = typer.Typer(help="Sweeps: a search over trainer knobs, each trial a run group in the ordinary queue.", no_args_is_help=True)

    def show_one(s: dict[str, Any]) -> None:
        for part in sweep_detail(s):
            out.print(part, markup=False) if isinstance(part, str) else out.print(part)

    @sweep_app.command("submit")
    @friendly
    def submit(file: Annotated[Path, typer.Argument(metavar="SWEEP.yaml", help="base, space, strategy, seeds, limits")]) -> None:
        """Submit a sweep; the scheduler starts its first trials within seconds."""
        body = read_sweep_file(file)
        with api() as client:
            s = client.request("POST", PREFIX, json_body=body)
        out.print(printable(f"sweep {s['id']} submitted: {s['strategy']} over {', '.join(s['spec']['space'])}; follow it with: caddie sweep show {s['id']}"),
                  markup=False)  # fmt: skip

    @sweep_app.command("list")
    @friendly
    def list_(
        team: Annotated[str | None, typer.Option(help="only this team's sweeps")] = None,
        limit: Annotated[int, typer.Option(min=1, max=200, help="sweeps per page")] = 50,
        all_: Annotated[bool, typer.Option("--all", help="every sweep, page after page")] = False,
    ) -> None:
        """Your teams' sweeps, newest first."""
        items: list[dict[str, Any]] = []
        cursor = None
        with api() as client:
            while True:
                page = client.request("GET", PREFIX, params={"team": team, "limit": limit, "cursor": cursor})
                items += page["items"]
                cursor = page.get("next_cursor")
                if not all_ or cursor is None:
                    break
        if not items:
            out.print("no sweeps", markup=False)
            return
        out.print(sweeps_table(items))
        if cursor is not None:
            out.print(f"showing the newest {len(items)}; more with --all or --limit", markup=False, style="dim")

    @sweep_app.command("show")
    @friendly
    def show(sweep_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
        """One sweep: its spec, its trials (pruned ones with why), the best so far."""
        with api() as client:
            show_one(client.request("GET", f"{PREFIX}/{sweep_id}", not_found=f"sweep {sweep_id} not found"))

    @sweep_app.command("stop")
    @friendly
    def stop(sweep_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
        """No new trials; trials still queued are cancelled; running ones finish."""
        with api() as client:
            s = client.request("POST", f"{PREFIX}/{sweep_id}/stop", not_found=f"sweep {sweep_id} not found")
        out.print(f"sweep {sweep_id}: {s['status']}", markup=False)

    @sweep_app.command("resume")
    @friendly
    def resume(sweep_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
        """Start a stopped sweep's next trials again."""
        with api() as client:
            s = client.request("POST", f"{PREFIX}/{sweep_id}/resume", not_found=f"sweep {sweep_id} not found")
        out.print(f"sweep {sweep_id}: {s['status']}", markup=False)

    return sweep_app
