"""A script spec's own environment (issue 20 item 3): each field checked where it is declared, the
requirements file one of the run's files and only what a node can install; the canonical
description and its hash; the requirements.txt the export writes from what the runs reported."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from service.core.errors import InvalidInput
from service.runs.scripts.environment import describe, env_hash, folder_name, requirements_from_declaration
from service.runs.scripts.spec import ScriptLimits, ScriptSpec, check_script_spec

LIMITS = ScriptLimits(file_bytes=1 << 20, total_bytes=1 << 22, files=16, env_vars=64, env_value_chars=4096, variants=["sp1024"])
SCRIPT = base64.b64encode(b"print('x')\n").decode()
RECORD = Path(__file__).resolve().parents[3] / "shared" / "challenge" / "records" / "track_10min_16mb" / \
    "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611"
FA3 = "https://windreamer.github.io/flash-attention3-wheels/cu128_torch291/"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check(environment: object, requirements: bytes = b"numpy\n") -> ScriptSpec:
    spec, _ = check_script_spec(SCRIPT, [("requirements.txt", b64(requirements))], {}, "sp1024", LIMITS, environment=environment)
    return spec


def issues(environment: object, requirements: bytes = b"numpy\n") -> dict[tuple, str]:
    with pytest.raises(InvalidInput) as err:
        check(environment, requirements)
    return {tuple(i.loc): i.msg for i in err.value.issues}


@pytest.mark.skipif(not RECORD.is_dir(), reason="the challenge's records are not beside this checkout")
def test_the_0427_records_environment_is_accepted_with_its_own_requirements_file_unchanged() -> None:
    req = (RECORD / "requirements.txt").read_bytes()
    spec = check({"requirements": "requirements.txt", "python": "3.12", "packages": ["flash_attn_3"], "find_links": [FA3],
                  "index_urls": ["https://download.pytorch.org/whl/cu128"], "system_packages": ["lrzip"]}, req)
    assert spec.environment == {"requirements": "requirements.txt", "python": "3.12", "packages": ["flash_attn_3"], "find_links": [FA3],
                                "index_urls": ["https://download.pytorch.org/whl/cu128"], "system_packages": ["lrzip"]}
    assert spec.to_json()["environment"] == spec.environment and ScriptSpec.from_json(spec.to_json()) == spec
    assert spec.describe().endswith("own env python 3.12")
    d = describe(spec.environment, {"requirements.txt": req})
    assert d is not None and d["requirements"] == req.decode() and d["system_packages"] == ["lrzip"]


def test_a_spec_without_an_environment_keeps_its_json_and_so_its_group() -> None:
    spec = check(None)
    assert "environment" not in spec.to_json() and describe(spec.environment, {}) is None


@pytest.mark.parametrize("environment, loc, words", [
    ({"requirements": "reqs.txt"}, ("environment", "requirements"), "must name one of the run's files"),
    ({"python": "three"}, ("environment", "python"), "must be a Python version such as 3.12"),
    ({"python": 3.12}, ("environment", "python"), "as a string"),
    ({"find_links": ["/opt/wheels"]}, ("environment", "find_links", 0), "http:// or https:// URL"),
    ({"index_urls": "https://x"}, ("environment", "index_urls"), "must be a list of strings"),
    ({"system_packages": ["lrzip; rm -rf /"]}, ("environment", "system_packages", 0), "Debian package name"),
    ({"packages": ["--index-url=https://evil"]}, ("environment", "packages", 0), "a package, not an option"),
    ({"packages": ["./local_pkg"]}, ("environment", "packages", 0), "must start with a distribution name"),
    ({"pip": ["x"]}, ("environment",), "unknown field(s) pip"),
    ({"node_packages": "yes"}, ("environment", "node_packages"), "must be true or false"),
])  # fmt: skip
def test_each_bad_field_is_named(environment: object, loc: tuple, words: str) -> None:
    assert words in issues(environment)[loc]


@pytest.mark.parametrize("line, words", [
    (b"-e .\n", "option -e is not taken"),
    (b"-r other.txt\n", "option -r is not taken"),
    (b"--find-links /srv/wheels\n", "http:// or https:// URL"),
    (b"pkg @ file:///etc/passwd\n", "file: URLs name a path on the node"),
    (b"/tmp/x.whl\n", "must start with a distribution name"),
])  # fmt: skip
def test_a_requirements_line_the_node_cannot_install_is_named_with_its_line(line: bytes, words: str) -> None:
    msg = issues({"requirements": "requirements.txt"}, b"numpy\n" + line)[("environment", "requirements")]
    assert msg.startswith("requirements.txt line 2") and words in msg


def test_index_options_in_the_file_are_taken() -> None:
    check({"requirements": "requirements.txt"}, b"--extra-index-url https://download.pytorch.org/whl/cu128\ntorch==2.9.1+cu128  # pinned\n")


def test_the_hash_moves_with_what_is_installed_and_nothing_else() -> None:
    base = describe({"requirements": "r.txt", "python": "3.12"}, {"r.txt": b"numpy\n"})
    assert base is not None
    same = describe({"python": "3.12", "requirements": "other-name.txt"}, {"other-name.txt": b"numpy\r\n"})
    assert same is not None and env_hash(same) == env_hash(base)  # the file's name and line endings are not what is installed
    other = describe({"requirements": "r.txt", "python": "3.12"}, {"r.txt": b"numpy==2.0\n"})
    assert other is not None and env_hash(other) != env_hash(base)
    assert folder_name(base) == env_hash(base)[:20]
    # Seeing the node's packages is another environment; not asking for them leaves every earlier hash as it was.
    node = describe({"requirements": "r.txt", "python": "3.12", "node_packages": True}, {"r.txt": b"numpy\n"})
    assert node is not None and env_hash(node) != env_hash(base)
    off = describe({"requirements": "r.txt", "python": "3.12", "node_packages": False}, {"r.txt": b"numpy\n"})
    assert off is not None and env_hash(off) == env_hash(base) and "node_packages" not in base


def test_requirements_txt_from_the_runs_reports_pins_what_ran_the_records_way() -> None:
    d = describe({"requirements": "r.txt", "packages": ["flash_attn_3"], "find_links": [FA3], "system_packages": ["lrzip"]},
                 {"r.txt": b"# deps\ntorch==2.9.1+cu128\nsentencepiece\nbrotli\n"})
    report = {"python": "3.12.3", "torch": "2.9.1+cu128", "cuda": "12.8", "flash_attn": "flash_attn_3 3.0.0",
              "packages": {"torch": "2.9.1+cu128", "sentencepiece": "0.2.0", "Brotli": "1.1.0", "flash_attn_3": "3.0.0", "numpy": "2.1.0"}}
    other = {**report, "packages": {**report["packages"], "numpy": "2.2.0"}}
    lines = requirements_from_declaration(d, [report, other])
    assert lines == [
        "# Python 3.12.3; CUDA 12.8 (what the runs reported)",
        "# System deps (apt): apt-get install -y lrzip",
        f"--find-links {FA3}",
        "torch==2.9.1+cu128", "sentencepiece==0.2.0", "Brotli==1.1.0", "flash_attn_3==3.0.0",
        "# Every other package of the environment the runs ran in:",
        "numpy  # the runs differed: 2.1.0, 2.2.0",
    ]
