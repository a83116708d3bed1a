"""A run's stored files, the domain side (no HTTP): list them, open one for streaming.

::

    artifacts row (run_id, kind, uri, bytes, sha256)
        │  name = last part of the uri  (model.int6.ptz, train.log, train_gpt.py, ...)
        ▼
    list_artifacts ──▶ rows of a visible run
    open_artifact  ──▶ store.open(uri) ──▶ an open stream + what the response needs

Visibility is exactly the runs' rule (``runs.get_run``): another team's run,
and so its files, does not exist for the caller (``NotFound``). A row whose
uri the store refuses (outside its root, bucket or prefix) is never read.
"""

from __future__ import annotations

import builtins
import logging
from dataclasses import dataclass
from typing import IO
from urllib.parse import unquote, urlparse

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.errors import Gone, NotFound, Unavailable
from service.core.models import Artifact
from service.core.storage import ArtifactMissing, ArtifactOutsideStore, ArtifactStore, ArtifactStoreError
from service.runs.queries import get_run
from service.teams.tokens import Principal

log = logging.getLogger(__name__)


def artifact_name(artifact: Artifact) -> str:
    """The public name of a stored file: the last part of its key (``runs/5/model/model.int6.ptz`` -> ``model.int6.ptz``)."""
    return unquote(urlparse(artifact.uri).path.rsplit("/", 1)[-1])


def list_artifacts(session: Session, principal: Principal, run_id: int) -> list[Artifact]:
    """The run's stored files, in the order they were stored."""
    get_run(session, principal, run_id)
    return list(session.scalars(select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.id)))


def find_artifact(session: Session, principal: Principal, run_id: int, name: str) -> Artifact:
    """The run's file called ``name``; NotFound for an unknown name (or an invisible run)."""
    # The newest row wins should two ever share a name (the worker stores each name once per collect).
    for artifact in reversed(list_artifacts(session, principal, run_id)):
        if artifact_name(artifact) == name:
            return artifact
    raise NotFound(f"run {run_id} artifact", name)


@dataclass
class OpenedArtifact:
    """A stored file opened for reading, with what a download needs to describe it."""

    name: str
    kind: str
    bytes: int | None
    sha256: str | None
    stream: IO[builtins.bytes]  # the caller reads it in chunks and closes it; builtins: `bytes` above is a field


def open_artifact(session: Session, principal: Principal, run_id: int, name: str, store: ArtifactStore) -> OpenedArtifact:
    """Open the run's file ``name`` for streaming.

    NotFound: no such run for this caller, or no such file. Gone: the row
    exists but its bytes cannot be served (deleted from the store, or a uri
    outside the store, which is refused). Unavailable: the store cannot be
    reached now.
    """
    artifact = find_artifact(session, principal, run_id, name)
    try:
        stream = store.open(artifact.uri)
    except ArtifactOutsideStore:
        # The uri is not echoed to the caller: it would tell server paths or bucket names.
        log.warning("run %s: artifact %s points outside the artifact store (%s); refused", run_id, artifact.id, artifact.uri)
        raise Gone(f"artifact {name!r} of run {run_id} is not in this caddie's artifact store; refusing to serve it") from None
    except ArtifactMissing:
        raise Gone(f"artifact {name!r} of run {run_id} is no longer in the artifact store") from None
    except ArtifactStoreError as exc:
        log.warning("run %s: artifact %s cannot be read: %s", run_id, artifact.id, exc)
        raise Unavailable(f"the artifact store cannot be read now; try again later ({name!r} of run {run_id})") from None
    return OpenedArtifact(name=name, kind=artifact.kind, bytes=artifact.bytes, sha256=artifact.sha256, stream=stream)
