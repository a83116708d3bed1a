"""``caddie artifacts`` and ``caddie download``: a run's stored files as a table, and fetched to a folder.

Each file is streamed to a hidden temporary file beside its target, checked
against the sha256 caddie recorded when it stored the file, and only then
renamed into place: an interrupted or corrupted download never leaves a file
that looks complete. An existing file with other content is never overwritten
without ``--force``; one with the same content is left as it is.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from cli.client import CaddieClient, CaddieError
from cli.render import escape, fmt_bytes, fmt_time
from service.core.text import printable

SHA_PREFIX_CHARS = 12
_HASH_CHUNK = 1 << 20


def artifacts_table(items: list[dict[str, Any]]) -> Table:
    table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("sha256", no_wrap=True)
    table.add_column("stored", no_wrap=True)
    for item in items:
        sha = item.get("sha256") or ""
        table.add_row(escape(item["name"]), escape(item["kind"]), fmt_bytes(item.get("bytes")), escape(sha[:SHA_PREFIX_CHARS]) or "-", fmt_time(item.get("created_at")))
    return table


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Planned:
    """One file to fetch: where it goes, and whether an identical copy is already there."""

    item: dict[str, Any]
    target: Path
    already_there: bool = False


def plan_downloads(items: list[dict[str, Any]], out_dir: Path, force: bool) -> list[Planned]:
    """Decide every target before anything is downloaded, so a conflict stops the command
    before it has written a byte."""
    plan = []
    for item in items:
        name = item["name"]
        # The name comes from the server; it must stay a plain file name inside out_dir.
        if not name or name in (".", "..") or Path(name).name != name or "\\" in name or "\x00" in name:
            raise CaddieError(f"refusing the file name {name!r} from caddie: not a plain file name")
        target = out_dir / name
        planned = Planned(item, target)
        if target.exists() or target.is_symlink():
            if not target.is_file():
                raise CaddieError(f"{target} exists and is not a file")
            if item.get("sha256") and file_sha256(target) == item["sha256"]:
                planned.already_there = True
            elif not force:
                raise CaddieError(f"{target} exists with other content; use --force to overwrite it")
        plan.append(planned)
    return plan


def download_run(
    client: CaddieClient,
    run_id: int,
    out_dir: Path,
    *,
    name: str | None,
    force: bool,
    out: Console,
    err: Console,
) -> list[Path]:
    """Download the run's files (or only ``name``) into ``out_dir``; return the paths written or kept."""
    stored = client.artifacts(run_id)
    items = stored if name is None else [i for i in stored if i["name"] == name]
    if name is not None and not items:
        have = ", ".join(i["name"] for i in stored) or "none"
        raise CaddieError(f"run {run_id} has no stored file {name!r} (it has: {have})")
    if not items:
        raise CaddieError(f"run {run_id} has no stored files (yet)")
    if out_dir.exists() and not out_dir.is_dir():
        raise CaddieError(f"{out_dir} exists and is not a folder")
    try:
        return _download(client, run_id, plan_downloads(items, out_dir, force), out_dir, out, err)
    except OSError as exc:  # a folder we may not write to, a full disk, ...
        raise CaddieError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None


def _download(client: CaddieClient, run_id: int, plan: list[Planned], out_dir: Path, out: Console, err: Console) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    # Progress goes to stderr and starts with the first byte, so an error before that is
    # the only line printed; stdout gets one line per file once the bars are done (two
    # consoles writing to one terminal while a bar redraws would garble it).
    progress = Progress(*columns, console=err)
    done: list[str] = []
    try:
        for planned in plan:
            if planned.already_there:
                done.append(f"{planned.target}: already there, same sha256")
                continue
            fetch_one(client, run_id, planned, progress)
            done.append(f"{planned.target}: {fmt_bytes(planned.item.get('bytes'))} bytes, sha256 {_checked(planned.item)}")
    finally:
        progress.stop()
        for line in done:
            out.print(printable(line), markup=False, soft_wrap=True)
    return [p.target for p in plan]


def _checked(item: dict[str, Any]) -> str:
    return "ok" if item.get("sha256") else "not recorded by caddie, not checked"


def fetch_one(client: CaddieClient, run_id: int, planned: Planned, progress: Progress) -> None:
    """Stream one file to a temporary name beside the target, check its sha256 (or, without one,
    its size), then rename it into place. Whatever goes wrong, the temporary file is removed."""
    item, target = planned.item, planned.target
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    received = 0
    task: TaskID | None = None

    def started(total: int | None) -> None:
        nonlocal task
        progress.start()
        task = progress.add_task(item["name"], total=total if total is not None else item.get("bytes"))

    try:
        with os.fdopen(fd, "wb") as sink:

            def write(chunk: bytes) -> None:
                nonlocal received
                sink.write(chunk)
                digest.update(chunk)  # hashed on the way in: the file is not read a second time
                received += len(chunk)
                if task is not None:
                    progress.advance(task, len(chunk))

            headers = client.download_artifact(run_id, item["name"], write, on_start=started)
            sink.flush()
            os.fsync(sink.fileno())  # on disk before the name says the file is complete
        expected = headers.get("x-checksum-sha256") or item.get("sha256")
        got = digest.hexdigest()
        if expected and got != expected:
            raise CaddieError(
                f"{item['name']}: sha256 mismatch (caddie recorded {expected[:SHA_PREFIX_CHARS]}..., "
                f"downloaded {got[:SHA_PREFIX_CHARS]}...); the download was discarded"
            )
        if not expected and item.get("bytes") is not None and received != item["bytes"]:
            raise CaddieError(f"{item['name']}: got {received:,} bytes, caddie recorded {item['bytes']:,}; the download was discarded")
        os.replace(tmp, target)  # atomic: the target is either the old file or the whole new one
    finally:
        tmp.unlink(missing_ok=True)
