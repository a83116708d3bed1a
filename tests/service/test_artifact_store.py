"""Artifact store: the local directory for real, S3 for layout and configuration (and a moto round trip)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from worker.artifacts import ArtifactStoreError, LocalArtifactStore, S3ArtifactStore, artifact_key, make_artifact_store
from worker.settings import WorkerSettings


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    p = tmp_path / "out" / "model.int6.ptz"
    p.parent.mkdir()
    p.write_bytes(b"\x00\x01zstd" * 1000)
    return p


def test_local_put_and_open_round_trip(tmp_path: Path, model_file: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    uri, size, sha = store.put(42, "model", model_file)
    assert uri == (tmp_path / "artifacts" / "runs/42/model/model.int6.ptz").resolve().as_uri()
    assert size == model_file.stat().st_size
    assert sha == hashlib.sha256(model_file.read_bytes()).hexdigest()
    with store.open(uri) as fh:
        assert fh.read() == model_file.read_bytes()
    assert store.put(42, "model", model_file)[0] == uri  # putting again replaces, same URI


def test_local_refuses_uris_outside_the_store(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    (tmp_path / "secret").write_text("x")
    for uri in [(tmp_path / "secret").as_uri(), (tmp_path / "artifacts" / ".." / "secret").as_uri(), "s3://b/k"]:
        with pytest.raises(ArtifactStoreError):
            store.open(uri)
    with pytest.raises(ArtifactStoreError, match="does not exist"):
        store.open((tmp_path / "artifacts" / "runs/1/log/nope").as_uri())


def test_key_layout_and_bad_inputs() -> None:
    assert artifact_key(3, "log", "/tmp/x/train.log") == "runs/3/log/train.log"
    assert artifact_key(3, "log", "../../etc/passwd") == "runs/3/log/passwd"
    assert artifact_key(3, "result", "we ird$name.json") == "runs/3/result/we_ird_name.json"
    with pytest.raises(ArtifactStoreError, match="kind"):
        artifact_key(3, "weights", "a")
    with pytest.raises(ArtifactStoreError, match="run_id"):
        artifact_key(-1, "log", "a")


def test_s3_key_layout_and_uri() -> None:
    store = S3ArtifactStore("caddie-artifacts", prefix="/team-a/", endpoint_url="http://127.0.0.1:9000")
    key = store.key_for(5, "model", "model.int6.ptz")
    assert key == "team-a/runs/5/model/model.int6.ptz"
    assert store.uri_for(key) == "s3://caddie-artifacts/team-a/runs/5/model/model.int6.ptz"
    assert store.split_uri(store.uri_for(key)) == key
    assert S3ArtifactStore("caddie-artifacts").key_for(5, "log", "train.log") == "runs/5/log/train.log"
    with pytest.raises(ArtifactStoreError, match="not an object of bucket"):
        store.split_uri("s3://other-bucket/runs/5/log/train.log")


@pytest.mark.parametrize(
    ("bucket", "endpoint", "message"),
    [
        ("", "", "CADDIE_S3_BUCKET"),
        ("Caddie_Artifacts", "", "CADDIE_S3_BUCKET"),
        ("ab", "", "CADDIE_S3_BUCKET"),
        ("caddie", "ftp://minio:9000", "CADDIE_S3_ENDPOINT_URL"),
    ],
)
def test_s3_config_errors_name_the_setting(bucket: str, endpoint: str, message: str) -> None:
    with pytest.raises(ArtifactStoreError, match=message):
        S3ArtifactStore(bucket, endpoint_url=endpoint)


def test_settings_pick_the_backend(tmp_path: Path) -> None:
    local = make_artifact_store(WorkerSettings(home=tmp_path))
    assert isinstance(local, LocalArtifactStore) and local.root == (tmp_path / "artifacts").resolve()
    s3 = make_artifact_store(WorkerSettings(home=tmp_path, s3_bucket="runs-bucket", s3_prefix="p"))
    assert isinstance(s3, S3ArtifactStore) and s3.key_for(1, "log", "train.log") == "p/runs/1/log/train.log"


def test_s3_round_trip_against_moto(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with moto.mock_aws():
        boto3.client("s3").create_bucket(Bucket="caddie-test")
        store = S3ArtifactStore("caddie-test", prefix="prod")
        uri, size, sha = store.put(9, "model", model_file)
        assert uri == "s3://caddie-test/prod/runs/9/model/model.int6.ptz"
        assert (size, sha) == (model_file.stat().st_size, hashlib.sha256(model_file.read_bytes()).hexdigest())
        assert store.open(uri).read() == model_file.read_bytes()
        with pytest.raises(ArtifactStoreError, match="cannot read"):
            store.open("s3://caddie-test/prod/runs/9/model/missing")
        with pytest.raises(ArtifactStoreError, match="upload"):
            S3ArtifactStore("no-such-bucket").put(9, "model", model_file)
