"""/groups/{key}/export: a group's records/ folder for a pull request to the challenge, as a zip."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from service.core.errors import InvalidInput, Issue
from service.http.deps import ArtifactStoreDep, CurrentUser, SessionDep
from service.results.export import OVERRIDE_MAX_CHARS, override_problem
from service.results.export_io import build_export, zip_bytes

router = APIRouter(tags=["results"])

# GitHub user names: letters, digits and inner hyphens, at most 39 characters.
GITHUB_ID_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,37}[A-Za-z0-9])?$"


@router.get(
    "/groups/{key}/export",
    response_class=Response,
    responses={
        200: {"content": {"application/zip": {}}, "description": "records/track_<track>/<date>_<name>/ with README.md, "
              "submission.json, train_seed<SEED>.log per seed, train_gpt.py, requirements.txt"},
        403: {"description": "another team's published group (visible, but only its team exports it)"},
        404: {"description": "no such group for the caller (other teams' unpublished groups look absent)"},
        409: {"description": "not record-eligible (the message lists why) and no override given, or its runs bundled different trainers"},
        410: {"description": "a run's train_gpt.py is no longer in the artifact store"},
        503: {"description": "the artifact store cannot be reached now"},
    },
)
def export_group(
    key: str,
    user: CurrentUser,
    session: SessionDep,
    store: ArtifactStoreDep,
    override: Annotated[str | None, Query(min_length=1, max_length=OVERRIDE_MAX_CHARS,
                                          description="why a group that is not record-eligible is exported anyway; written into README.md and submission.json")] = None,
    baseline: Annotated[str | None, Query(max_length=300, description="baseline: a group key, leader, or record:<folder> (default: the track's public record where imported, else the team's leader)")] = None,
    github_id: Annotated[str | None, Query(pattern=GITHUB_ID_PATTERN, description="GitHub user name for submission.json")] = None,
) -> Response:
    """The group's records/ folder as a zip (its own team only)."""
    problem = override_problem(override)
    if problem:
        raise InvalidInput([Issue(("query", "override"), problem, override)])
    folder, files = build_export(session, user, key, store=store, override=override, baseline_key=baseline, github_id=github_id)
    filename = folder.rsplit("/", 1)[-1] + ".zip"  # a slug: plain ASCII, safe in the header as is
    return Response(zip_bytes(folder, files), media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
