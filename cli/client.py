"""The CLI's HTTP client: where caddie is (URL and token from the environment
or the config file) and one method per API call, with every failure turned into
a :class:`CaddieError` whose message is one line a person can act on.

Precedence: CADDIE_URL / CADDIE_TOKEN, then the config file
(``~/.config/caddie/config.toml``, or the path in CADDIE_CONFIG), then the
default URL. The token is never part of any message.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
METRICS_PAGE = 10_000  # the API's largest page of metric points
# Bytes handed to the file (and the progress bar) at a time while downloading.
DOWNLOAD_CHUNK_BYTES = 1 << 20
# Back-off between attempts when caddie cannot be reached (seconds).
RETRY_DELAYS_S = (0.2, 0.5, 1.0)


class CaddieError(Exception):
    """A failure the CLI reports as one line and a non-zero exit code."""


# --- configuration ---------------------------------------------------------------------
def config_path() -> Path:
    override = os.environ.get("CADDIE_CONFIG")
    return Path(override).expanduser() if override else Path.home() / ".config" / "caddie" / "config.toml"


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str | None

    def __repr__(self) -> str:  # keep the secret out of any accidental print
        return f"ClientConfig(url={self.url!r}, token={'<set>' if self.token else None})"


def read_config_file(path: Path | None = None) -> dict[str, str]:
    path = path or config_path()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CaddieError(f"cannot read the config file {path}: {exc}") from None
    return {k: v for k, v in data.items() if k in ("url", "token") and isinstance(v, str)}


def load_config() -> ClientConfig:
    """URL and token: environment first, then the config file, then the default URL."""
    stored = read_config_file()
    url = os.environ.get("CADDIE_URL") or stored.get("url") or DEFAULT_URL
    token = os.environ.get("CADDIE_TOKEN") or stored.get("token") or None
    return ClientConfig(url=url.rstrip("/"), token=token)


def _toml_string(value: str) -> str:
    # JSON string escapes (\" \\ \n \uXXXX) are valid TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=True)


def write_config_file(url: str, token: str, path: Path | None = None) -> Path:
    """Write url and token to the config file, readable by its owner only (0600)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"url = {_toml_string(url)}\ntoken = {_toml_string(token)}\n"
    tmp = path.with_name(path.name + ".tmp")
    # Created 0600 from the start, so the token is never readable by others.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a file that existed
    os.replace(tmp, path)
    return path


# --- errors ------------------------------------------------------------------------------
def _issue_text(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = [str(p) for p in item.get("loc") or []]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    msg = str(item.get("msg", "invalid"))
    return f"{'.'.join(loc)}: {msg}" if loc else msg


def _detail(response: httpx.Response) -> list[Any]:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip().splitlines()
        return [text[0][:200]] if text else []
    detail = body.get("detail") if isinstance(body, dict) else body
    if detail is None:
        return []
    return detail if isinstance(detail, list) else [detail]


def error_message(response: httpx.Response, url: str, not_found: str | None = None) -> str:
    """One line that says what went wrong with ``response``."""
    status = response.status_code
    issues = [_issue_text(d) for d in _detail(response)]
    joined = "; ".join(issues)
    if status == 401:
        return "token missing or invalid: run caddie login"
    if status == 404 and not_found:
        return not_found
    if status == 422:
        return f"invalid request: {joined}" if joined else "invalid request"
    if status == 403:
        return f"not allowed: {joined}" if joined else "not allowed"
    if status >= 500:
        return f"caddie at {url} failed with HTTP {status}" + (f": {joined}" if joined else "")
    return joined or f"HTTP {status} from caddie at {url}"


# --- the client ----------------------------------------------------------------------------
class CaddieClient:
    """Calls the caddie REST API. Every method returns the decoded JSON or raises CaddieError."""

    def __init__(self, url: str, token: str | None, *, timeout_s: float = 15.0, transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s, transport=transport)

    @classmethod
    def from_config(cls, config: ClientConfig | None = None) -> "CaddieClient":
        config = config or load_config()
        return cls(config.url, config.token)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "CaddieClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        idempotent: bool | None = None,
        not_found: str | None = None,
    ) -> Any:
        """One API call, its JSON answer (None for none)."""
        return self._decode(self._send(method, path, params=params, json_body=json_body, headers=headers, idempotent=idempotent, not_found=not_found))

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        idempotent: bool | None = None,
        not_found: str | None = None,
    ) -> httpx.Response:
        """One API call's response, CaddieError for an error answer. Connection failures are retried for every
        request (the request never reached caddie); timeouts and dropped connections only for
        idempotent ones (GET, or a POST that carries an Idempotency-Key)."""
        if idempotent is None:
            idempotent = method.upper() in ("GET", "HEAD", "PUT", "DELETE")
        params = {k: v for k, v in (params or {}).items() if v is not None}
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, params=params, json=json_body, headers=headers)
                # 503: caddie is up but could not serve this one (e.g. its database connection
                # was just lost); safe to ask again when the request is idempotent.
                if response.status_code != 503 or not idempotent or attempt >= len(RETRY_DELAYS_S):
                    break
            except httpx.ConnectError:
                if attempt >= len(RETRY_DELAYS_S):
                    raise CaddieError(f"cannot reach caddie at {self.url}: is `caddie up` running?") from None
            except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if not idempotent or attempt >= len(RETRY_DELAYS_S):
                    kind = "did not answer in time" if isinstance(exc, httpx.TimeoutException) else "dropped the connection"
                    raise CaddieError(f"caddie at {self.url} {kind}; the request may or may not have taken effect") from None
            except (httpx.InvalidURL, httpx.UnsupportedProtocol):
                raise CaddieError(f"not a valid caddie URL: {self.url!r} (set CADDIE_URL or run caddie login)") from None
            except httpx.HTTPError as exc:
                raise CaddieError(f"cannot talk to caddie at {self.url}: {type(exc).__name__}") from None
            time.sleep(RETRY_DELAYS_S[attempt])
            attempt += 1
        if response.status_code >= 400:
            raise CaddieError(error_message(response, self.url, not_found))
        return response

    def _decode(self, response: httpx.Response) -> Any:
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise CaddieError(f"caddie at {self.url} sent a response that is not JSON (is this the right URL?)") from None

    # --- runs ---------------------------------------------------------------------
    def submit(self, spec: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        # The key makes a retried POST return the first attempt's runs, so it is safe to retry.
        return self.request("POST", f"{API_PREFIX}/runs", json_body=spec, headers={"Idempotency-Key": idempotency_key}, idempotent=True)

    def list_runs(self, **filters: Any) -> dict[str, Any]:
        return self.request("GET", f"{API_PREFIX}/runs", params=filters)

    def get_run(self, run_id: int) -> dict[str, Any]:
        return self.request("GET", f"{API_PREFIX}/runs/{run_id}", not_found=f"run {run_id} not found")

    def cancel(self, run_id: int, wait_s: float | None = None) -> dict[str, Any]:
        """The run after the cancel; ``wait_s``: let the server wait that long for the worker to stop it."""
        return self.request("POST", f"{API_PREFIX}/runs/{run_id}/cancel", params={"wait_s": wait_s}, not_found=f"run {run_id} not found")

    def events(self, run_id: int) -> list[dict[str, Any]]:
        return self.request("GET", f"{API_PREFIX}/runs/{run_id}/events", not_found=f"run {run_id} not found")

    def metrics(self, run_id: int) -> list[dict[str, Any]]:
        # The endpoint is paged (at most 10,000 points a page): read pages until one comes short.
        points: list[dict[str, Any]] = []
        while True:
            page = self.request("GET", f"{API_PREFIX}/runs/{run_id}/metrics", params={"offset": len(points), "limit": METRICS_PAGE},
                                not_found=f"run {run_id} not found")  # fmt: skip
            points += page
            if len(page) < METRICS_PAGE:
                return points

    def logs(self, run_id: int, offset: int = 0) -> dict[str, Any]:
        return self.request("GET", f"{API_PREFIX}/runs/{run_id}/logs", params={"offset": offset}, not_found=f"run {run_id} not found")

    # --- results --------------------------------------------------------------------
    def groups(self, **filters: Any) -> list[dict[str, Any]]:
        return self.request("GET", f"{API_PREFIX}/groups", params=filters)

    def group(self, key: str, baseline: str | None = None) -> dict[str, Any]:
        return self.request("GET", f"{API_PREFIX}/groups/{quote(key, safe='')}", params={"baseline": baseline}, not_found=f"group {key} not found")

    def compare(self, key: str, baseline: str, policy: str = "readme") -> dict[str, Any]:
        path = f"{API_PREFIX}/groups/{quote(key, safe='')}/compare/{quote(baseline, safe='')}"
        return self.request("GET", path, params={"policy": policy}, not_found=f"group {key} or {baseline} not found")

    def publish(self, key: str, published: bool = True) -> dict[str, Any]:
        verb = "publish" if published else "unpublish"
        return self.request("POST", f"{API_PREFIX}/groups/{quote(key, safe='')}/{verb}", idempotent=True, not_found=f"group {key} not found")

    def leaderboard(self, track: str, hardware: str | None = None, limit: int = 100) -> dict[str, Any]:
        return self.request("GET", f"{API_PREFIX}/leaderboard", params={"track": track, "hardware": hardware, "limit": limit})

    # --- artifacts ------------------------------------------------------------------
    def artifacts(self, run_id: int) -> list[dict[str, Any]]:
        return self.request("GET", f"{API_PREFIX}/runs/{run_id}/artifacts", not_found=f"run {run_id} not found")

    def download_artifact(
        self,
        run_id: int,
        name: str,
        write: Callable[[bytes], object],
        on_start: Callable[[int | None], None] = lambda total: None,
    ) -> httpx.Headers:
        """Stream the run's file ``name`` to ``write``, chunk by chunk (never whole in memory); return
        the response headers. ``on_start(total bytes)`` runs once the server has said yes."""
        path = f"{API_PREFIX}/runs/{run_id}/artifacts/{quote(name, safe='')}"
        try:
            with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    # The server's 404 says which: the run, or a file of that name.
                    raise CaddieError(error_message(response, self.url))
                length = response.headers.get("content-length")
                on_start(int(length) if length and length.isdigit() else None)
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                    write(chunk)
                return response.headers
        except httpx.ConnectError:
            raise CaddieError(f"cannot reach caddie at {self.url}: is `caddie up` running?") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            raise CaddieError(f"not a valid caddie URL: {self.url!r} (set CADDIE_URL or run caddie login)") from None
        except httpx.HTTPError as exc:  # timeouts, a connection dropped mid-file, a short body
            raise CaddieError(f"download of {name} from caddie at {self.url} was cut off ({type(exc).__name__})") from None

    def queue(self, team: str | None = None, *, limit: int | None = None, all_pages: bool = False) -> tuple[list[dict[str, Any]], bool]:
        """The queue's first page (or every page), and whether more pages follow (its X-Next-Cursor header)."""
        items: list[dict[str, Any]] = []
        after = None
        while True:
            response = self._send("GET", f"{API_PREFIX}/queue", params={"team": team, "limit": limit, "after": after})
            items += self._decode(response) or []
            after = response.headers.get("X-Next-Cursor")
            if not after or not all_pages:
                return items, after is not None

    # --- the caller ------------------------------------------------------------------
    def me(self) -> dict[str, Any]:
        return self.request("GET", f"{API_PREFIX}/users/me")

    # --- teams ----------------------------------------------------------------------
    def team_usage(self, team: str, period: str = "week", since: str | None = None) -> dict[str, Any]:
        path = f"{API_PREFIX}/teams/{quote(team, safe='')}/usage"
        return self.request("GET", path, params={"period": period, "since": since}, not_found=f"team {team} not found")

    # --- records/ export --------------------------------------------------------------
    def export_group(self, key: str, *, override: str | None = None, baseline: str | None = None,
                     github_id: str | None = None, timeout_s: float = 300.0) -> bytes:
        """The group's records/ folder as zip bytes (GET /groups/{key}/export)."""
        params = {k: v for k, v in {"override": override, "baseline": baseline, "github_id": github_id}.items() if v is not None}
        path = f"{API_PREFIX}/groups/{quote(key, safe='')}/export"
        try:
            # Longer than the default timeout: the server reads every seed's log from the artifact store first.
            response = self._http.get(path, params=params, timeout=timeout_s)
        except httpx.ConnectError:
            raise CaddieError(f"cannot reach caddie at {self.url}: is `caddie up` running?") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            raise CaddieError(f"not a valid caddie URL: {self.url!r} (set CADDIE_URL or run caddie login)") from None
        except httpx.HTTPError as exc:
            raise CaddieError(f"export of group {key} from caddie at {self.url} failed ({type(exc).__name__})") from None
        if response.status_code >= 400:
            raise CaddieError(error_message(response, self.url, not_found=f"group {key} not found"))
        return response.content
