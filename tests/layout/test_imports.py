"""The house rules of imports, read from the source (no import is executed):

- no import cycle between modules, counting imports inside functions too (a cycle held
  apart by a late import is still a cycle);
- no upward import between the top packages: trainer < service < worker < cli, so the
  trainer stays standalone (it is bundled into one file) and the service never needs the
  worker's dependencies;
- no cycle between the rooms of service/ either, and each room imports only the rooms below it
  (ROOMS): a room can be read, and tested, with only what is below it;
- the pure domain modules (the Makefile's PURE, type-checked strictly) reach no database,
  network or web framework through anything they import;
- nothing under service/ or worker/ is a flat module that belongs to a domain room.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("trainer", "service", "worker", "cli")  # each may import only those before it
# The rooms of service/, lowest first; each may import only those before it. core: infrastructure
# and the run vocabulary (models, status); teams: who may do what; billing: what compute cost;
# queue: who runs next (reads billing's GPU-hours); runs: a run from spec to final state (a
# submit checks billing's quota, a run's page reads the queue's forecast); results: groups,
# rules, records, export (read runs); webhooks: what an end tells a team (reads results; hears of
# a run's end through service.runs.lifecycle.on_run_ended); sweeps: searches that submit runs;
# http: what the two HTTP adapters share; web: the pages; api: the JSON routes and the app.
# What a pure module must not reach: a database, the network, a web or task framework.
IO_PACKAGES = frozenset({"sqlalchemy", "alembic", "fastapi", "starlette", "httpx", "celery", "kombu", "redis", "boto3", "sky"})
ROOMS = ("core", "teams", "billing", "queue", "runs", "results", "webhooks", "sweeps", "http", "web", "api")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in LAYERS:
        for path in (REPO / top).rglob("*.py") if (REPO / top).is_dir() else ():
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()

    def known(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {d for a in node.names if (d := known(a.name))}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {d for a in node.names if (d := known(f"{node.module}.{a.name}") or known(node.module))}
        deps.discard(name)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_imports_itself_through_others() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The check above can fail: a late import that closes a loop is seen.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _room(module: str) -> str | None:
    """``service.runs.scripts.spec`` -> ``service.runs``; a module outside a room of service/ -> None."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "service" and len(parts) >= 2 else None


def _room_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph seen from the rooms: room A -> room B when a module of A imports one of B."""
    rooms: dict[str, set[str]] = {}
    for module, deps in graph.items():
        if (room := _room(module)) is not None:
            rooms.setdefault(room, set()).update(r for d in deps if (r := _room(d)) is not None and r != room)
    for deps in list(rooms.values()):
        for room in deps:
            rooms.setdefault(room, set())
    return rooms


def test_no_room_imports_itself_through_others() -> None:
    assert _cycles(_room_graph(_graph())) == []


def test_the_room_cycle_finder_finds_a_cycle() -> None:
    # Modules that form no cycle among themselves can still tie two rooms together.
    planted = {"service.api.app": {"service.web.routes"}, "service.web.routes": {"service.api.deps"}, "service.api.deps": set(), "service.core.db": set()}
    assert _cycles(planted) == []
    assert _cycles(_room_graph(planted)) == [["service.api", "service.web"]]


def test_each_room_imports_only_the_rooms_below_it() -> None:
    rank = {f"service.{room}": i for i, room in enumerate(ROOMS)}
    graph = _graph()
    assert sorted(rank) == sorted({r for m in graph if (r := _room(m)) is not None})  # ROOMS names every room
    upward = sorted(f"{a} -> {d}" for a, deps in graph.items() for d in deps
                    if (ra := _room(a)) and (rd := _room(d)) and rank[rd] > rank[ra])  # fmt: skip
    assert upward == []


def _third_party(path: Path) -> set[str]:
    """The top-level packages outside the repo's layers that ``path`` imports (inside functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.partition(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.partition(".")[0])
    return names - set(LAYERS)


def _pure_modules() -> list[str]:
    """The Makefile's PURE list, as module names."""
    found = re.search(r"^PURE :=((?:.*\\\n)*.*)$", (REPO / "Makefile").read_text(encoding="utf-8"), re.M)
    assert found is not None, "the Makefile names no PURE modules"
    return [".".join(Path(p).with_suffix("").parts) for p in found.group(1).replace("\\", " ").split()]


def test_pure_modules_reach_no_io() -> None:
    graph, modules = _graph(), _modules()
    pure = _pure_modules()
    assert len(pure) >= 10 and all(m in modules for m in pure)
    reached_io = []
    for start in pure:
        seen, todo = set(), [start]
        while todo:
            if (module := todo.pop()) not in seen:
                seen.add(module)
                todo += graph[module]
        reached_io += sorted(f"{start}: {m} imports {pkg}" for m in seen for pkg in _third_party(modules[m]) & IO_PACKAGES)
    assert reached_io == []


def test_no_package_imports_a_later_layer() -> None:
    rank = {top: i for i, top in enumerate(LAYERS)}
    upward = sorted(f"{a} -> {d}" for a, deps in _graph().items() for d in deps if rank[d.split(".")[0]] > rank[a.split(".")[0]])
    assert upward == []


def test_service_and_worker_keep_their_modules_in_rooms() -> None:
    # Process-wide entry points of the worker stay at its top; everything else lives in a room.
    worker_top = {"__init__", "celery_app", "tasks", "runtime", "settings", "embedded", "notify"}
    flat = [p.name for p in (REPO / "service").glob("*.py") if p.stem != "__init__"]
    flat += [p.name for p in (REPO / "worker").glob("*.py") if p.stem not in worker_top]
    assert flat == []
