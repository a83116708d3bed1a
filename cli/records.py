"""Unpacking an exported records/ folder (the zip of GET /groups/{key}/export) into a directory."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath

from cli.client import CaddieError


def unpack_records(data: bytes, out_dir: Path, *, force: bool = False) -> tuple[Path, list[tuple[str, int]]]:
    """Write the zip's one folder under ``out_dir``; return (the folder, [(file name, bytes)]).

    Refuses an existing non-empty folder unless ``force`` (then the zip's files are
    overwritten and other files there are left alone), and any entry that would
    land outside the folder.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise CaddieError("caddie sent an export that is not a zip file") from None
    with zf:
        entries = [e for e in zf.infolist() if not e.is_dir()]
        folder = _common_folder([e.filename for e in entries])
        target = out_dir / folder
        if target.exists() and (not target.is_dir() or any(target.iterdir())) and not force:
            raise CaddieError(f"{target} already exists and is not empty; pass --force to overwrite its files")
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for entry in entries:
            name = PurePosixPath(entry.filename).name
            payload = zf.read(entry)
            (target / name).write_bytes(payload)
            written.append((name, len(payload)))
    return target, written


def _common_folder(names: list[str]) -> Path:
    """The one folder every entry sits in directly, e.g. records/track_10min_16mb/2026-03-23_name."""
    parents = set()
    for name in names:
        path = PurePosixPath(name)
        # Never trust a path from the network: no absolute paths, no '..', no backslashes.
        if path.is_absolute() or ".." in path.parts or "\\" in name or len(path.parts) < 2:
            raise CaddieError(f"caddie sent an export with an unsafe file name: {name!r}")
        parents.add(path.parent)
    if len(parents) != 1:
        raise CaddieError("caddie sent an export that is not one folder")
    return Path(*parents.pop().parts)
