"""A script run's bytes, counted from its files rather than taken from its log (pure).

The challenge: "The submission artifact is computed as code bytes plus compressed model
bytes. All counted code should live in the train_gpt.py script" (16,000,000 bytes, decimal).

    code    train_gpt.py, plus every helper module of the run folder it opened (the audit
            saw it; without an audit, every uploaded .py file, to be safe), at its bytes. A
            script whose log counts its code compressed (``Code size (compressed): N``, the
            records of 2026-04, accepted so by the maintainers) ships the same code as a
            self-extracting file: caddie counts its own such file of each (SELF_EXTRACTING:
            lzma 9e, base85, exec), never the script's word for it.
    model   the compressed model the script wrote in its run folder (a ``*.ptz``; of several,
            the one of the log's size, else the newest)
    total   code + model

Where the log states a figure (``Code size ...``, ``Serialized model ...``, ``Total
submission size ...``) that differs, both are kept and the files' count wins. A figure
with no file behind it (no model file written) stays the log's, and says so.
"""

from __future__ import annotations

import base64
import lzma
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.runs.scripts.spec import SCRIPT_NAME

SELF_EXTRACTING = b'import lzma as L,base64 as b\nexec(L.decompress(b.b85decode("%s")))\n'


def self_extracting_bytes(code: bytes) -> int:
    """Bytes of ``code`` shipped as a file that decompresses and runs it (lzma preset 9e, base85)."""
    packed = base64.b85encode(lzma.compress(code, preset=9 | lzma.PRESET_EXTREME))
    return len(SELF_EXTRACTING % packed)


def code_files(folder: Mapping[str, bytes], imported: set[str] | None) -> dict[str, bytes]:
    """The run folder's files that count as code: train_gpt.py and the helper modules it imported
    (``imported``: run-folder paths the audit saw opened; None: not watched, every .py counts)."""
    helpers = {n: b for n, b in folder.items() if n != SCRIPT_NAME and n.endswith(".py") and (imported is None or n in imported)}
    return {SCRIPT_NAME: folder[SCRIPT_NAME], **dict(sorted(helpers.items()))} if SCRIPT_NAME in folder else dict(sorted(helpers.items()))


@dataclass(frozen=True)
class ByteCount:
    """The bytes of a script run, from its files, beside what its log said (None: not stated)."""

    code: int | None  # counted, from the files
    model: int | None  # the model file's size
    model_file: str | None
    code_per_file: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> {"bytes", "counted"}
    log_code: int | None = None
    log_model: int | None = None
    log_total: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int | None:
        """code + model, each from its file where there is one, else the log's; the log's total
        where a part is known from neither."""
        code = self.code if self.code is not None else self.log_code
        model = self.model if self.model is not None else self.log_model
        if code is None or model is None or (self.code is None and self.model is None):
            return self.log_total
        return code + model

    @property
    def disagreements(self) -> list[str]:
        """Each figure where the log and the files differ, in words (the files win)."""
        out = []
        for what, mine, logged in (("code", self.code, self.log_code), ("model", self.model, self.log_model),
                                   ("artifact", self.total, self.log_total)):
            if mine is not None and logged is not None and mine != logged:
                out.append(f"{what}: the log says {logged:,} bytes, the files {mine:,} (the files count)")
        return out

    def columns(self) -> dict[str, int]:
        """The run's columns the files decide (the log's stay where no file speaks)."""
        values = {}
        if self.code is not None:
            values["code_bytes"] = self.code
        if self.model is not None:
            values["model_bytes"] = self.model
        if (self.code is not None or self.model is not None) and self.total is not None:
            values["artifact_bytes"] = self.total
        return values

    def to_json(self) -> dict[str, Any]:
        return {"code": {"counted": self.code, "log": self.log_code, "files": self.code_per_file},
                "model": {"file": self.model_file, "bytes": self.model, "log": self.log_model},
                "artifact": {"counted": self.total, "log": self.log_total},
                "disagreements": self.disagreements, "notes": list(self.notes)}


def count_bytes(folder: Mapping[str, bytes], imported: set[str] | None, models: Mapping[str, tuple[int, float]], *,
                log_code: int | None, log_model: int | None, log_total: int | None, code_compressed: bool = False) -> ByteCount:
    """Count a run's bytes. ``folder``: its uploaded files as they are in the run folder;
    ``models``: the ``*.ptz`` files it wrote, name -> (bytes, mtime); ``code_compressed``:
    its log counts its code compressed."""
    notes = []
    files = code_files(folder, imported)
    per_file = {n: {"bytes": len(b), "counted": self_extracting_bytes(b) if code_compressed else len(b)} for n, b in files.items()}
    code = sum(f["counted"] for f in per_file.values()) if SCRIPT_NAME in files else None
    if code is None:
        notes.append(f"no {SCRIPT_NAME} in the run folder: code bytes are the log's")
    elif code_compressed:
        notes.append("the log counts its code compressed: each code file counted as caddie's own self-extracting lzma file of it")
    if len(files) > 1:
        notes.append(f"code files counted: {', '.join(files)}")
    model_file = model = None
    if models:
        same = [n for n, (size, _) in models.items() if size == log_model]
        model_file = same[0] if same else max(models, key=lambda n: (models[n][1], n))
        model = models[model_file][0]
    else:
        notes.append("the script wrote no *.ptz model file: model bytes are the log's")
    return ByteCount(code, model, model_file, per_file, log_code, log_model, log_total, tuple(notes))
