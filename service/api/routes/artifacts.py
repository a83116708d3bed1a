"""/runs/{id}/artifacts: a run's stored files, listed and streamed (visibility as for runs)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from service.core.storage import read_chunks
from service.http.deps import ArtifactStoreDep, CurrentUser, Id, SessionDep, SettingsDep
from service.runs import artifacts as domain
from service.runs.schemas import ArtifactOut

router = APIRouter(prefix="/runs", tags=["artifacts"])

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such run for the caller (other teams' runs look absent), or no file of that name"},
    410: {"description": "the file is recorded but can no longer be served from the artifact store"},
    503: {"description": "the artifact store cannot be reached now"},
}


@router.get("/{run_id}/artifacts", response_model=list[ArtifactOut], responses={404: ERRORS[404]})
def list_artifacts(run_id: Id, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> list[ArtifactOut]:
    """The run's stored files with sizes and sha256, and where to download each."""
    items = []
    for artifact in domain.list_artifacts(session, user, run_id):
        name = domain.artifact_name(artifact)
        url = f"{settings.api_prefix}/runs/{run_id}/artifacts/{quote(name, safe='')}"
        items.append(ArtifactOut(name=name, kind=artifact.kind, bytes=artifact.bytes, sha256=artifact.sha256, created_at=artifact.created_at, url=url))
    return items


@router.get(
    "/{run_id}/artifacts/{name}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file's bytes, streamed"}, **ERRORS},
)
def download_artifact(run_id: Id, name: str, user: CurrentUser, session: SessionDep, store: ArtifactStoreDep) -> StreamingResponse:
    """One stored file, streamed in chunks. ``X-Checksum-Sha256`` (and the ETag) carry its sha256 hex digest."""
    # Opened here, before the response starts, so that a missing file is a 410 and not a broken stream;
    # the DB session is not needed after this line.
    opened = domain.open_artifact(session, user, run_id, name, store)
    headers = {"Content-Disposition": content_disposition(opened.name)}
    if opened.bytes is not None:
        headers["Content-Length"] = str(opened.bytes)
    if opened.sha256:
        headers["X-Checksum-Sha256"] = opened.sha256
        headers["ETag"] = f'"{opened.sha256}"'
    return StreamingResponse(read_chunks(opened.stream), media_type="application/octet-stream", headers=headers)


def content_disposition(name: str) -> str:
    """``attachment`` with the file name; RFC 6266's ``filename*`` when the name is not plain ASCII."""
    quoted = quote(name, safe="")
    if quoted == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename*=utf-8''{quoted}"
