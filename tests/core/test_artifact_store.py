"""Artifact store: the local directory for real, S3 for layout and configuration (and moto round trips)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.core.settings import Settings
from service.core.storage import (
    ArtifactMissing,
    ArtifactOutsideStore,
    ArtifactStoreError,
    LocalArtifactStore,
    S3ArtifactStore,
    artifact_key,
    make_artifact_store,
    read_chunks,
)


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
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "link").symlink_to(tmp_path / "secret")
    outside = [
        (tmp_path / "secret").as_uri(),
        (tmp_path / "artifacts" / ".." / "secret").as_uri(),
        f"file://{tmp_path}/artifacts/%2E%2E/secret",
        (tmp_path / "artifacts" / "link").as_uri(),  # a symlink out of the root
        f"file://evil.example{tmp_path}/artifacts/x",
        "s3://b/k",
        "/etc/passwd",
    ]
    for uri in outside:
        with pytest.raises(ArtifactOutsideStore):
            store.open(uri)
    with pytest.raises(ArtifactMissing, match="does not exist"):
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
    local = make_artifact_store(Settings(home=tmp_path))
    assert isinstance(local, LocalArtifactStore) and local.root == (tmp_path / "artifacts").resolve()
    elsewhere = make_artifact_store(Settings(home=tmp_path, artifact_dir=tmp_path / "elsewhere"))
    assert isinstance(elsewhere, LocalArtifactStore) and elsewhere.root == (tmp_path / "elsewhere").resolve()
    s3 = make_artifact_store(Settings(home=tmp_path, s3_bucket="runs-bucket", s3_prefix="p"))
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
        with pytest.raises(ArtifactMissing, match="does not exist"):
            store.open("s3://caddie-test/prod/runs/9/model/missing")
        with pytest.raises(ArtifactStoreError, match="upload"):
            S3ArtifactStore("no-such-bucket").put(9, "model", model_file)


def test_settings_come_from_the_same_env_vars_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADDIE_ARTIFACT_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("CADDIE_S3_PREFIX", "team-x")
    monkeypatch.setenv("CADDIE_S3_ENDPOINT_URL", "http://minio:9000")
    settings = Settings()
    assert (settings.artifact_dir, settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url) == (tmp_path / "from-env", "", "team-x", "http://minio:9000")
    monkeypatch.setenv("CADDIE_S3_BUCKET", "runs-bucket")
    assert isinstance(make_artifact_store(Settings()), S3ArtifactStore)


def test_read_chunks_streams_in_pieces_and_closes(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 41)  # 10,496 bytes
    fh = open(path, "rb")
    chunks = list(read_chunks(fh, 4096))
    assert [len(c) for c in chunks] == [4096, 4096, 2304] and b"".join(chunks) == path.read_bytes()
    assert fh.closed


def test_s3_open_streams_and_refuses_foreign_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API's read path on S3: a multi-MB object comes back in chunks, byte for byte;
    objects of another bucket, outside the prefix, or with '..' in the key are never read."""
    moto = pytest.importorskip("moto")
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    big = tmp_path / "model.int6.ptz"
    big.write_bytes(hashlib.sha256(b"seed").digest() * (3 * 2**20 // 32 + 7))  # a bit over 3 MiB
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="caddie-test")
        s3.put_object(Bucket="caddie-test", Key="other/runs/1/log/train.log", Body=b"not ours")
        store = S3ArtifactStore("caddie-test", prefix="prod")
        uri, size, sha = store.put(3, "model", big)
        chunks = list(read_chunks(store.open(uri), 1 << 20))
        assert len(chunks) == 4 and b"".join(chunks) == big.read_bytes()
        assert hashlib.sha256(b"".join(chunks)).hexdigest() == sha and size == big.stat().st_size
        for foreign in ("s3://caddie-test/other/runs/1/log/train.log", "s3://caddie-test/prod/../other/runs/1/log/train.log", "s3://another-bucket/prod/runs/3/model/model.int6.ptz", "file:///etc/passwd"):
            with pytest.raises(ArtifactOutsideStore):
                store.open(foreign)
