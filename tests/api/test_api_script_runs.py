"""POST /runs with a script instead of a config: a team's own train_gpt.py, its files,
env and data variant. Good specs make script runs whose files are stored once by
sha256; every bad one is a 422 naming the field and stores nothing."""

from __future__ import annotations

import base64
import hashlib

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.models import Run, RunEvent, RunGroup, ScriptFile
from service.core.settings import Settings
from tests.world import World

RUNS = "/api/v1/runs"
SCRIPT = b"print('step:1/1 train_loss:1.0 train_time:1ms step_avg:1ms')\n"
HELPER = b"X = 1\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def script_spec(**over: object) -> dict:
    body: dict = {"name": "own", "track": "10min_16mb", "hardware": "H100:8", "script": b64(SCRIPT),
                  "files": [{"name": "helper.py", "content": b64(HELPER)}], "env": {"NUM_LAYERS": 11, "TTT_ENABLED": True},
                  "data": "sp1024", "seeds": [1337, 42]}
    body.update(over)
    return body


def stored(session: Session) -> tuple[int, ...]:
    session.expire_all()
    return tuple(session.scalar(select(func.count()).select_from(t)) for t in (Run, RunEvent, RunGroup, ScriptFile))


def test_a_script_spec_makes_script_runs_with_seeds_and_files_stored_once(client: TestClient, world: World, session: Session) -> None:
    r = client.post(RUNS, json=script_spec(), headers=world.h("alice"))
    assert r.status_code == 201, r.text
    runs = r.json()["runs"]
    assert [(x["kind"], x["seed"]) for x in runs] == [("script", 1337), ("script", 42)]
    sha = hashlib.sha256(SCRIPT).hexdigest()
    assert runs[0]["spec"] == {"script": sha, "files": {"helper.py": hashlib.sha256(HELPER).hexdigest()},
                               "env": {"NUM_LAYERS": "11", "TTT_ENABLED": "1"}, "data": "sp1024"}
    # The same script again (another name, another seed): the same group, and its bytes stored once.
    again = client.post(RUNS, json=script_spec(name="own again", seeds=[2025]), headers=world.h("alice"))
    assert again.status_code == 201 and again.json()["group_key"] == r.json()["group_key"]
    assert stored(session) == (3, 3, 1, 2)
    assert session.get(ScriptFile, sha).content == SCRIPT
    group = session.get(RunGroup, r.json()["group_key"])
    assert group.kind == "script" and group.config == runs[0]["spec"]


def test_what_makes_a_script_group_is_its_bytes_files_env_and_data(client: TestClient, world: World) -> None:
    def key(**over: object) -> str:
        r = client.post(RUNS, json=script_spec(**over), headers=world.h("alice"))
        assert r.status_code == 201, r.text
        return r.json()["group_key"]

    base = key()
    assert key(notes="same thing") == base
    others = {key(script=b64(SCRIPT + b"#\n")), key(env={"NUM_LAYERS": 10}), key(data="sp4096"), key(files=[]),
              key(files=[{"name": "helper2.py", "content": b64(HELPER)}])}
    assert base not in others and len(others) == 5


def test_a_script_run_and_a_trainer_run_list_together(client: TestClient, world: World, spec) -> None:
    assert client.post(RUNS, json=spec(), headers=world.h("alice")).status_code == 201
    assert client.post(RUNS, json=script_spec(seeds=[1]), headers=world.h("alice")).status_code == 201
    items = client.get(RUNS, headers=world.h("alice")).json()["items"]
    assert [i["kind"] for i in items] == ["script", "trainer"]


# (id, fields replaced, loc of the error, words in its message)
BAD = [
    ("no-script", {"script": None}, ["body", "script"], "give the script"),
    ("script-not-base64", {"script": "not base64!"}, ["body", "script"], "base64"),
    ("empty-script", {"script": ""}, ["body", "script"], "empty"),
    ("config-and-script", {"config": {"NUM_LAYERS": 9}}, ["body", "config"], "env, not config"),
    ("reserved-rank", {"env": {"RANK": 0}}, ["body", "env", "RANK"], "torchrun"),
    ("reserved-world-size", {"env": {"WORLD_SIZE": 8}}, ["body", "env", "WORLD_SIZE"], "torchrun"),
    ("reserved-path", {"env": {"PATH": "/tmp"}}, ["body", "env", "PATH"], "reserved"),
    ("reserved-ld", {"env": {"LD_PRELOAD": "x.so"}}, ["body", "env", "LD_PRELOAD"], "LD_*"),
    ("reserved-python", {"env": {"PYTHONPATH": "/x"}}, ["body", "env", "PYTHONPATH"], "PYTHON*"),
    ("reserved-seed", {"env": {"SEED": 1}}, ["body", "env", "SEED"], "seeds"),
    ("reserved-data-path", {"env": {"DATA_PATH": "/data"}}, ["body", "env", "DATA_PATH"], "data variant"),
    ("reserved-run-id", {"env": {"RUN_ID": "x"}}, ["body", "env", "RUN_ID"], "reserved"),
    ("reserved-caddie", {"env": {"CADDIE_DATABASE_URL": "x"}}, ["body", "env", "CADDIE_DATABASE_URL"], "caddie"),
    ("lower-case-env", {"env": {"num_layers": 1}}, ["body", "env", "num_layers"], "[A-Z_]"),
    ("env-value-too-long", {"env": {"NOTE": "x" * 5000}}, ["body", "env", "NOTE"], "4,096"),
    ("env-nul", {"env": {"NOTE": "a\x00b"}}, ["body", "env", "NOTE"], "NUL"),
    ("unknown-variant", {"data": "sp999"}, ["body", "data"], "sp1024, sp4096, sp8192"),
    ("dotdot-file", {"files": [{"name": "../x.py", "content": b64(HELPER)}]}, ["body", "files", 0, "name"], "inside the run folder"),
    ("nested-dotdot-file", {"files": [{"name": "a/../../x", "content": b64(HELPER)}]}, ["body", "files", 0, "name"], "'..'"),
    ("absolute-file", {"files": [{"name": "/etc/passwd", "content": b64(HELPER)}]}, ["body", "files", 0, "name"], "relative"),
    ("backslash-file", {"files": [{"name": "..\\x.py", "content": b64(HELPER)}]}, ["body", "files", 0, "name"], "relative"),
    ("hidden-file", {"files": [{"name": ".bashrc", "content": b64(HELPER)}]}, ["body", "files", 0, "name"], "start with '.'"),
    ("file-named-like-the-script", {"files": [{"name": "train_gpt.py", "content": b64(HELPER)}]}, ["body", "files", 0, "name"], "reserved"),
    ("file-in-data", {"files": [{"name": "data/tokenizers/x.model", "content": b64(HELPER)}]}, ["body", "files", 0, "name"], "reserved"),
    ("duplicate-files", {"files": [{"name": "h.py", "content": b64(HELPER)}, {"name": "h.py", "content": b64(b"y")}]},
     ["body", "files", 1, "name"], "another file has this name"),
    ("file-and-folder", {"files": [{"name": "h", "content": b64(HELPER)}, {"name": "h/x.py", "content": b64(b"y")}]},
     ["body", "files", 1, "name"], "folder"),
    ("score-label-not-a-regex", {"score_label": "final_(("}, ["body", "score_label"], "not a regular expression"),
    ("score-label-too-long", {"score_label": "x" * 201}, ["body", "score_label"], "1 to 200 characters"),
]


def _error(r, loc: list) -> str:
    assert r.status_code == 422, r.text
    msgs = [d["msg"] for d in r.json()["detail"] if d["loc"] == loc]
    assert msgs, f"no error at {loc}: {r.json()['detail']}"
    return " ".join(msgs)


@pytest.mark.parametrize(("over", "loc", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_script_spec_is_a_422_naming_the_field_and_stores_nothing(client: TestClient, world: World, session: Session,
                                                                       over: dict, loc: list, words: str) -> None:
    before = stored(session)
    r = client.post(RUNS, json=script_spec(**over), headers=world.h("alice"))
    assert words in _error(r, loc)
    assert stored(session) == before


def test_script_fields_without_a_script_name_the_script(client: TestClient, world: World, session: Session, spec) -> None:
    r = client.post(RUNS, json=spec(env={"NUM_LAYERS": 9}), headers=world.h("alice"))
    assert "give the script" in _error(r, ["body", "script"])
    assert stored(session) == (0, 0, 0, 0)


def test_size_limits_are_stated_in_the_error(db_url: str, tmp_path, world: World, session: Session) -> None:
    from service.api.app import create_app

    settings = Settings(home=tmp_path / "home", database_url=db_url, max_script_file_bytes=2048, max_script_total_bytes=3000,
                        max_script_files=2)
    with TestClient(create_app(settings)) as client:
        big = client.post(RUNS, json=script_spec(script=b64(b"#" * 2049)), headers=world.h("alice"))
        assert "2,049 bytes; the limit is 2,048 bytes per file" in _error(big, ["body", "script"])
        files = [{"name": f"f{i}.bin", "content": b64(bytes([i]) * 1500)} for i in range(2)]
        total = client.post(RUNS, json=script_spec(files=files), headers=world.h("alice"))
        assert "the limit is 3,000 bytes" in _error(total, ["body", "files"])
        many = client.post(RUNS, json=script_spec(files=[{"name": f"f{i}", "content": b64(b"x")} for i in range(3)]), headers=world.h("alice"))
        assert "at most 2 files" in _error(many, ["body", "files"])
        huge = client.post(RUNS, json=script_spec(script=b64(b"#" * 200_000)), headers=world.h("alice"))
        # Over the whole request's limit: refused before it is read (service/http/limits.py).
        assert huge.status_code == 413 and f"over {settings.max_request_bytes} bytes" in huge.text
    assert stored(session) == (0, 0, 0, 0)
