"""GET /runs/{id}/artifacts and /runs/{id}/artifacts/{name}, through the real app, on SQLite and PostgreSQL:
listing and byte-exact streaming for the run's team, 404 for everyone else, and a store that
never serves a file outside itself."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.core.models import Artifact, utcnow
from service.core.settings import Settings
from service.core.storage import ArtifactStoreError, LocalArtifactStore, S3ArtifactStore

RUNS = "/api/v1/runs"


def submit(client: TestClient, world, spec, who: str = "alice") -> int:
    r = client.post(RUNS, json=spec(), headers=world.h(who))
    assert r.status_code == 201, r.text
    return r.json()["runs"][0]["id"]


def store_file(session: Session, store, run_id: int, kind: str, path: Path) -> Artifact:
    """What the worker does after a run: put the file in the store and record the row."""
    uri, size, sha = store.put(run_id, kind, path)
    row = Artifact(run_id=run_id, kind=kind, uri=uri, bytes=size, sha256=sha, created_at=utcnow())
    session.add(row)
    session.commit()
    return row


def add_row(session: Session, run_id: int, uri: str, data: bytes, kind: str = "log") -> None:
    session.add(Artifact(run_id=run_id, kind=kind, uri=uri, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), created_at=utcnow()))
    session.commit()


@pytest.fixture
def store(settings: Settings) -> LocalArtifactStore:
    return LocalArtifactStore(settings.artifact_dir)


@pytest.fixture
def outputs(tmp_path: Path) -> dict[str, Path]:
    """A run's output files: a model of a few MB (several stream chunks), a log and a result."""
    out = tmp_path / "out"
    out.mkdir()
    files = {
        "model.int6.ptz": hashlib.sha256(b"weights").digest() * (5 * 2**20 // 32 + 3),  # 5 MiB and 96 bytes
        "train.log": b"step:1/2 train_loss:3.2\nstep:2/2 val_bpb:1.2345\n",
        "result.json": b'{"val_bpb": 1.2345}\n',
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    return {name: out / name for name in files}


@pytest.fixture
def stored_run(client: TestClient, world, spec, session: Session, store: LocalArtifactStore, outputs: dict[str, Path]) -> int:
    run_id = submit(client, world, spec)
    for name, kind in (("model.int6.ptz", "model"), ("train.log", "log"), ("result.json", "result")):
        store_file(session, store, run_id, kind, outputs[name])
    return run_id


def test_list_gives_name_kind_size_sha256_and_url(client: TestClient, world, stored_run: int, outputs: dict[str, Path]) -> None:
    r = client.get(f"{RUNS}/{stored_run}/artifacts", headers=world.h("alice"))
    assert r.status_code == 200, r.text
    items = r.json()
    assert [(i["name"], i["kind"]) for i in items] == [("model.int6.ptz", "model"), ("train.log", "log"), ("result.json", "result")]
    for item in items:
        data = outputs[item["name"]].read_bytes()
        assert item["bytes"] == len(data) and item["sha256"] == hashlib.sha256(data).hexdigest()
        assert item["url"] == f"{RUNS}/{stored_run}/artifacts/{item['name']}" and item["created_at"]
    assert client.get(f"{RUNS}/{stored_run}/artifacts", headers=world.h("root")).json() == items  # global admin


def test_download_streams_the_exact_bytes_with_checksum_headers(client: TestClient, world, stored_run: int, outputs: dict[str, Path]) -> None:
    for who in ("alice", "aaron", "root"):
        for name, path in outputs.items():
            data = path.read_bytes()
            with client.stream("GET", f"{RUNS}/{stored_run}/artifacts/{name}", headers=world.h(who)) as r:
                assert r.status_code == 200, r.read()
                body = b"".join(r.iter_bytes())
            assert body == data
            digest = hashlib.sha256(data).hexdigest()
            assert r.headers["x-checksum-sha256"] == digest and r.headers["etag"] == f'"{digest}"'
            assert r.headers["content-length"] == str(len(data))
            assert r.headers["content-disposition"] == f'attachment; filename="{name}"'
            assert r.headers["content-type"] == "application/octet-stream"


def test_a_multi_megabyte_file_is_read_in_chunks_never_whole(client: TestClient, world, stored_run: int, store: LocalArtifactStore, outputs: dict[str, Path]) -> None:
    reads: list[int] = []

    class Recording:
        """The store's file, with every read's size noted."""

        def __init__(self, fh: IO[bytes]) -> None:
            self.fh = fh

        def read(self, n: int = -1) -> bytes:
            reads.append(n)
            return self.fh.read(n)

        def close(self) -> None:
            self.fh.close()

    class RecordingStore:
        def open(self, uri: str) -> Recording:
            return Recording(store.open(uri))

    client.app.state.artifact_store = RecordingStore()
    r = client.get(f"{RUNS}/{stored_run}/artifacts/model.int6.ptz", headers=world.h("alice"))
    assert r.status_code == 200 and r.content == outputs["model.int6.ptz"].read_bytes()
    size = len(r.content)
    assert all(0 < n <= 2**20 for n in reads), reads  # never read(-1), never more than a chunk at a time
    assert len(reads) >= size // 2**20 + 1


def test_other_teams_get_404_for_the_list_and_every_file(client: TestClient, world, stored_run: int) -> None:
    listing = client.get(f"{RUNS}/{stored_run}/artifacts", headers=world.h("bob"))
    missing = client.get(f"{RUNS}/999999/artifacts", headers=world.h("bob"))
    assert listing.status_code == missing.status_code == 404
    # The same answer as for a run that does not exist, so ids tell nothing.
    assert listing.json()["detail"][0]["msg"] == f"run {stored_run} not found"
    for name in ("model.int6.ptz", "train.log", "nope.bin"):
        r = client.get(f"{RUNS}/{stored_run}/artifacts/{name}", headers=world.h("bob"))
        assert r.status_code == 404 and r.json()["detail"][0]["msg"] == f"run {stored_run} not found"
        assert "x-checksum-sha256" not in r.headers
    assert client.get(f"{RUNS}/{stored_run}/artifacts", headers=world.h(None)).status_code == 401
    assert client.get(f"{RUNS}/{stored_run}/artifacts/train.log", headers=world.h("carol")).status_code == 401  # revoked token


def test_unknown_names_are_404(client: TestClient, world, stored_run: int, spec) -> None:
    h = world.h("alice")
    for name in ("nope.bin", "MODEL.INT6.PTZ", "..%2Fresult.json", "runs%2F1%2Fmodel%2Fmodel.int6.ptz", "%2E%2E"):
        r = client.get(f"{RUNS}/{stored_run}/artifacts/{name}", headers=h)
        assert r.status_code == 404, (name, r.status_code)
    assert client.get(f"{RUNS}/{stored_run}/artifacts/nope.bin", headers=h).json()["detail"][0]["msg"] == f"run {stored_run} artifact 'nope.bin' not found"
    empty = submit(client, world, spec)
    assert client.get(f"{RUNS}/{empty}/artifacts", headers=h).json() == []
    assert client.get(f"{RUNS}/{empty}/artifacts/train.log", headers=h).status_code == 404


def test_a_row_pointing_outside_the_store_is_never_served(client: TestClient, world, spec, session: Session, settings: Settings, tmp_path: Path) -> None:
    run_id = submit(client, world, spec)
    root = Path(settings.artifact_dir)
    (root / "runs").mkdir(parents=True)
    for name in ("plain.txt", "dotdot.txt", "encoded.txt", "target.txt"):
        (tmp_path / name).write_bytes(b"database password")
    (root / "runs" / "link.txt").symlink_to(tmp_path / "target.txt")
    uris = {  # name -> uri; each would reach a file outside the store's root
        "plain.txt": (tmp_path / "plain.txt").as_uri(),
        "dotdot.txt": f"file://{root}/runs/../../../dotdot.txt",
        "encoded.txt": f"file://{root}/runs/%2E%2E/%2E%2E/%2e%2e/encoded.txt",
        "link.txt": (root / "runs" / "link.txt").as_uri(),
        "other.bin": "s3://some-bucket/runs/1/model/other.bin",
    }
    for uri in uris.values():
        add_row(session, run_id, uri, b"database password")
    names = [i["name"] for i in client.get(f"{RUNS}/{run_id}/artifacts", headers=world.h("alice")).json()]
    assert sorted(names) == sorted(uris)
    for name in uris:
        r = client.get(f"{RUNS}/{run_id}/artifacts/{name}", headers=world.h("alice"))
        assert r.status_code == 410, (name, r.status_code, r.text)
        assert b"database password" not in r.content and str(tmp_path).encode() not in r.content
        assert "not in this caddie's artifact store" in r.json()["detail"][0]["msg"]


def test_a_file_gone_from_the_store_is_410_with_a_clear_message(client: TestClient, world, stored_run: int, settings: Settings) -> None:
    (Path(settings.artifact_dir) / f"runs/{stored_run}/log/train.log").unlink()
    r = client.get(f"{RUNS}/{stored_run}/artifacts/train.log", headers=world.h("alice"))
    assert r.status_code == 410
    assert r.json()["detail"][0] == {"msg": f"artifact 'train.log' of run {stored_run} is no longer in the artifact store", "type": "gone"}
    assert client.get(f"{RUNS}/{stored_run}/artifacts/result.json", headers=world.h("alice")).status_code == 200


def test_an_unreachable_store_is_503(client: TestClient, world, stored_run: int) -> None:
    class Down:
        def open(self, uri: str) -> IO[bytes]:
            raise ArtifactStoreError("connection refused by s3.example:443")

    client.app.state.artifact_store = Down()
    r = client.get(f"{RUNS}/{stored_run}/artifacts/train.log", headers=world.h("alice"))
    assert r.status_code == 503 and "try again later" in r.json()["detail"][0]["msg"] and "s3.example" not in r.text


def test_the_api_builds_its_store_from_the_shared_settings(db_url: str, tmp_path: Path) -> None:
    from service.api.app import create_app

    local = create_app(Settings(home=tmp_path, database_url=db_url, artifact_dir=tmp_path / "store")).state.artifact_store
    assert isinstance(local, LocalArtifactStore) and local.root == (tmp_path / "store").resolve()
    s3 = create_app(Settings(home=tmp_path, database_url=db_url, s3_bucket="caddie-runs", s3_prefix="prod")).state.artifact_store
    assert isinstance(s3, S3ArtifactStore) and s3.bucket == "caddie-runs" and s3.prefix == "prod"
    with pytest.raises(ArtifactStoreError, match="CADDIE_S3_BUCKET"):
        create_app(Settings(home=tmp_path, database_url=db_url, s3_bucket="Not_A_Bucket"))


def test_download_from_an_s3_store(client: TestClient, world, spec, session: Session, outputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    run_id = submit(client, world, spec)
    with moto.mock_aws():
        boto3.client("s3").create_bucket(Bucket="caddie-test")
        s3 = S3ArtifactStore("caddie-test", prefix="prod")
        client.app.state.artifact_store = s3
        store_file(session, s3, run_id, "model", outputs["model.int6.ptz"])
        store_file(session, s3, run_id, "log", outputs["train.log"])
        data = outputs["model.int6.ptz"].read_bytes()
        r = client.get(f"{RUNS}/{run_id}/artifacts/model.int6.ptz", headers=world.h("alice"))
        assert r.status_code == 200 and r.content == data and r.headers["x-checksum-sha256"] == hashlib.sha256(data).hexdigest()
        assert client.get(f"{RUNS}/{run_id}/artifacts/model.int6.ptz", headers=world.h("bob")).status_code == 404
        boto3.client("s3").delete_object(Bucket="caddie-test", Key=f"prod/runs/{run_id}/log/train.log")
        assert client.get(f"{RUNS}/{run_id}/artifacts/train.log", headers=world.h("alice")).status_code == 410
