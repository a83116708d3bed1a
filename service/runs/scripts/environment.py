"""A script run's own Python environment, declared in its spec (pure: plain values in, plain values out).

::

    spec: environment: {requirements: requirements.txt, python: "3.12", packages: [flash_attn_3],
                        find_links: [https://...], index_urls: [https://...], system_packages: [lrzip],
                        node_packages: true}
        │  normal_environment: each field checked, the requirements file one of the run's files
        ▼
    runs.spec["environment"] (the declaration, by file name)
        │  describe(declaration, the run's files)
        ▼
    the canonical description (the requirements file's text inlined) ──env_hash──▶ sha256
        a launcher builds it once per node into envs/<hash> (uv), before the job starts

A run that declares no environment runs on the node's own Python, as before. Requirement
lines are what ``pip install -r`` takes from a PyPI-like index, except what has no meaning on
the node or would reach outside it: editable installs, nested ``-r``/``-c`` files, local paths
and ``file:`` URLs. Only http(s) index and find-links URLs are taken.

The report (what a launcher read from inside the built environment; worker.launchers.env_probe)
is ``{"python", "torch", "cuda", "flash_attn", "packages": {name: version}, ...}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from service.core.errors import Issue

FORMAT = 1  # of the canonical description: a change here moves every hash (and so rebuilds every environment)
PYTHON_VERSION = re.compile(r"^3\.\d{1,2}(\.\d{1,3})?$")
URL = re.compile(r"^https?://[^\s\"'\\]+$")
URL_MAX_CHARS = 500
MAX_URLS = 8
MAX_PACKAGES = 50
MAX_SYSTEM_PACKAGES = 20
# Debian's package names (Policy 5.6.1): lower case letters, digits, + - . ; two characters at least.
SYSTEM_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,62}$")
# A requirement: a distribution name first (PEP 508), then extras, a version, markers or `@ URL`.
REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")
REQUIREMENT_MAX_CHARS = 300
# Options a requirements file may hold: where wheels come from (an http(s) URL), and nothing else.
URL_OPTIONS = {"--index-url": "index_urls", "-i": "index_urls", "--extra-index-url": "index_urls", "--find-links": "find_links", "-f": "find_links"}
FIELDS = ("requirements", "python", "packages", "index_urls", "find_links", "system_packages", "node_packages")


def _url_problem(url: str) -> str | None:
    if len(url) > URL_MAX_CHARS:
        return f"at most {URL_MAX_CHARS} characters"
    if not URL.match(url):
        return "must be an http:// or https:// URL (a path on the node is not one the run may name)"
    return None


def requirement_problem(line: str, *, options: bool) -> str | None:
    """Why one line of a requirements file (``options``) or one ``packages`` entry cannot be installed on a node, or None."""
    text = line.split(" #", 1)[0].strip()
    if not text or text.startswith("#"):
        return None if options else "must not be empty"
    if len(text) > REQUIREMENT_MAX_CHARS:
        return f"at most {REQUIREMENT_MAX_CHARS} characters"
    if text.startswith("-"):
        if not options:
            return "a package, not an option (use index_urls or find_links for where wheels come from)"
        name, _, value = text.replace("=", " ", 1).partition(" ")
        if name not in URL_OPTIONS:
            return (f"option {name} is not taken: a requirements file may name only --index-url, --extra-index-url and "
                    "--find-links with an http(s) URL (-e, -r, -c and local paths mean nothing on the node)")
        return _url_problem(value.strip())
    if not REQUIREMENT.match(text):
        return "must start with a distribution name (local paths and archives are not taken)"
    if "file:" in text.lower():
        return "file: URLs name a path on the node; not taken"
    if "@" in text:
        url = text.split("@", 1)[1].split(";", 1)[0].strip()
        if url and not URL.match(url):
            return "a direct reference must be an http(s) URL"
    return None


def requirements_problems(text: str) -> list[str]:
    """Every line of a requirements file that cannot be installed, as ``line N: ... : why``."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        problem = requirement_problem(line, options=True)
        if problem:
            out.append(f"line {n} ({line.strip()[:80]!r}): {problem}")
    return out


def _strings(value: Any, loc: tuple[str | int, ...], issues: list[Issue], limit: int) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        issues.append(Issue(loc, "must be a list of strings", value if isinstance(value, list | str) else None))
        return []
    if len(value) > limit:
        issues.append(Issue(loc, f"at most {limit} entries, got {len(value)}", len(value)))
        return []
    return [v.strip() for v in value]


def normal_environment(decl: Any, files: Mapping[str, bytes], issues: list[Issue]) -> dict[str, Any]:
    """The normal form of a spec's ``environment`` (only the fields it sets; {} when it sets none), checked
    against the run's ``files`` (name -> bytes); each problem appended to ``issues`` at ("environment", field)."""
    loc = ("environment",)
    if decl is None:
        return {}
    if not isinstance(decl, Mapping):
        issues.append(Issue(loc, f"must be a mapping of {', '.join(FIELDS)}", None))
        return {}
    unknown = sorted(str(k) for k in decl if k not in FIELDS)
    if unknown:
        issues.append(Issue(loc, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}", unknown))
    out: dict[str, Any] = {}
    req = decl.get("requirements")
    if req is not None:
        if not isinstance(req, str) or req not in files:
            issues.append(Issue((*loc, "requirements"), "must name one of the run's files (e.g. requirements.txt, uploaded with files)", req))
        else:
            try:
                problems = requirements_problems(files[req].decode("utf-8"))
            except UnicodeDecodeError:
                problems = ["is not UTF-8 text"]
            for p in problems:
                issues.append(Issue((*loc, "requirements"), f"{req} {p}", req))
            out["requirements"] = req
    python = decl.get("python")
    if python is not None:
        if not isinstance(python, str) or not PYTHON_VERSION.match(python):
            issues.append(Issue((*loc, "python"), "must be a Python version such as 3.12 or 3.12.3 (as a string: \"3.10\", not 3.1)", decl.get("python")))
        else:
            out["python"] = python
    packages = _strings(decl.get("packages"), (*loc, "packages"), issues, MAX_PACKAGES)
    for i, p in enumerate(packages):
        problem = requirement_problem(p, options=False)
        if problem:
            issues.append(Issue((*loc, "packages", i), problem, p))
    if packages:
        out["packages"] = packages
    for field in ("index_urls", "find_links"):
        urls = _strings(decl.get(field), (*loc, field), issues, MAX_URLS)
        for i, u in enumerate(urls):
            problem = _url_problem(u)
            if problem:
                issues.append(Issue((*loc, field, i), problem, u))
        if urls:
            out[field] = list(dict.fromkeys(urls))  # order kept: the first index is asked first
    system = _strings(decl.get("system_packages"), (*loc, "system_packages"), issues, MAX_SYSTEM_PACKAGES)
    for i, s in enumerate(system):
        if not SYSTEM_PACKAGE.match(s):
            issues.append(Issue((*loc, "system_packages", i), "must be a Debian package name (lower-case letters, digits, + - .), e.g. lrzip", s))
    if system:
        out["system_packages"] = sorted(set(system))
    node = decl.get("node_packages")
    if node is not None and not isinstance(node, bool):
        issues.append(Issue((*loc, "node_packages"), "must be true or false", node if isinstance(node, int | str) else None))
    elif node:
        out["node_packages"] = True
    return out


def describe(decl: Mapping[str, Any] | None, files: Mapping[str, bytes]) -> dict[str, Any] | None:
    """The canonical description of a declared environment: the declaration with its requirements
    file's text inlined (line endings normalised), every field present; None when none is declared.
    KeyError when the requirements file is not among ``files``."""
    if not decl:
        return None
    req = decl.get("requirements")
    text = files[req].decode("utf-8").replace("\r\n", "\n") if req else ""
    # Present only when asked for: every environment declared before it keeps its hash (and its build).
    node = {"node_packages": True} if decl.get("node_packages") else {}
    return {**node,
        "format": FORMAT,
        "python": decl.get("python") or "",  # "": the node's own Python version
        "requirements": text,
        "packages": list(decl.get("packages") or ()),
        "index_urls": list(decl.get("index_urls") or ()),
        "find_links": list(decl.get("find_links") or ()),
        "system_packages": sorted(decl.get("system_packages") or ()),
    }


def env_hash(description: Mapping[str, Any]) -> str:
    """The sha256 of a canonical description (its JSON, keys sorted, no spaces): the environment's name on a node."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def folder_name(description: Mapping[str, Any]) -> str:
    """The environment's folder under a node's envs/ (short: it is in every script's shebang)."""
    return env_hash(description)[:20]


def requirement_lines(description: Mapping[str, Any]) -> list[str]:
    """What is installed: the requirements file's lines, then ``packages`` (comments and blank lines dropped)."""
    lines = [ln.split(" #", 1)[0].strip() for ln in str(description.get("requirements") or "").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")] + list(description.get("packages") or ())


def requirement_name(line: str) -> str | None:
    """The distribution a requirement line names, normalised (``Flash-Attn_3>=3`` -> ``flash_attn_3``); None for an option."""
    m = REQUIREMENT.match(line.strip())
    if line.strip().startswith("-") or not m:
        return None
    return normal_name(m.group(0))


def normal_name(name: str) -> str:
    """A distribution's name as compared here: lower case, runs of - _ . as one _ (PEP 503, with _)."""
    return re.sub(r"[-_.]+", "_", name).lower()


# --- the export ----------------------------------------------------------------------------
def requirements_from_declaration(description: Mapping[str, Any] | None, reports: Sequence[Mapping[str, Any]]) -> list[str]:
    """A records folder's requirements.txt lines for runs that ran in a declared environment: its
    index and find-links options, each declared requirement pinned to the version every run had
    (a line of its own, a comment where the runs differed), then every other package they held,
    pinned the same way; the Python version, CUDA and system packages as comments, the records' way."""
    versions: dict[str, set[str]] = {}
    names: dict[str, str] = {}
    for r in reports:
        for k, v in (r.get("packages") or {}).items():
            versions.setdefault(normal_name(str(k)), set()).add(str(v))
            names.setdefault(normal_name(str(k)), str(k))

    def pin(key: str, original: str) -> str:
        seen = sorted(versions.get(key, ()))
        if len(seen) == 1:
            return f"{names.get(key, original)}=={seen[0]}"
        if not seen:
            return f"{original}  # not reported by the runs"
        return f"{original}  # the runs differed: {', '.join(seen)}"

    lines: list[str] = []
    pythons = sorted({str(r["python"]) for r in reports if r.get("python")})
    cudas = sorted({str(r["cuda"]) for r in reports if r.get("cuda")})
    if pythons or cudas:
        lines.append("# " + "; ".join(filter(None, [f"Python {', '.join(pythons)}" if pythons else "",
                                                    f"CUDA {', '.join(cudas)}" if cudas else ""])) + " (what the runs reported)")
    desc = description or {}
    if desc.get("system_packages"):
        lines.append(f"# System deps (apt): apt-get install -y {' '.join(desc['system_packages'])}")
    lines += [f"--extra-index-url {u}" for u in desc.get("index_urls") or ()]
    lines += [f"--find-links {u}" for u in desc.get("find_links") or ()]
    declared: dict[str, str] = {}
    for line in requirement_lines(desc):
        key = requirement_name(line)
        if key is None:
            lines.append(line)  # an option of the file: kept as written
        elif key not in declared:
            declared[key] = line
            lines.append(pin(key, line))
    rest = sorted(k for k in versions if k not in declared)
    if rest:
        lines.append("# Every other package of the environment the runs ran in:")
        lines += [pin(k, names[k]) for k in rest]
    return lines
