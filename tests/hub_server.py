"""A loopback stand-in for the Hugging Face Hub, for offline push/download tests.

huggingface_hub 2.x talks to the Hub through `httpx2`, so mocking libraries such as `responses` or `respx` do not
intercept it; a real HTTP server on 127.0.0.1 is the robust fake. This module implements the handful of endpoints
that `HfApi.create_repo`, `HfApi.upload_folder`/`create_commit`, `PreTrainedModel.push_to_hub`,
`ModelCard.push_to_hub`/`ModelCard.load`, `hf_hub_download`, `snapshot_download` and `from_pretrained` use
(huggingface_hub 2.4, transformers 5.x), with the headers and error codes those clients rely on:

| Method | Route | Used by |
|---|---|---|
| GET | `/api/whoami-v2` | `HfApi.whoami` |
| POST | `/api/repos/create` | `create_repo` (409 + `url` when it exists, as the Hub does) |
| POST | `/api/validate-yaml` | `create_commit` when README.md is committed, `ModelCard.validate` |
| POST | `/api/models/{ns}/{name}/preupload/{rev}` | answers `"regular"` for every file: no LFS, no Xet |
| POST | `/api/models/{ns}/{name}/commit/{rev}` | NDJSON: `header`, `file` (base64), `deletedFile`, `deletedFolder` |
| GET | `/api/models/{ns}/{name}[/revision/{rev}]` | `model_info` / `repo_info` (sha, siblings, cardData) |
| GET | `/api/models/{ns}/{name}/tree/{rev}[/{path}]` | `list_repo_tree`, `list_repo_files`, `snapshot_download` |
| HEAD/GET | `/{ns}/{name}/resolve/{rev}/{path}` | `hf_hub_download` (`ETag`, `X-Repo-Commit`, `Content-Length`) |

Write requests need an `Authorization: Bearer ...` header (any token), so a test also proves that the client sent
one. Every commit is kept in memory (downloads by commit sha work), and the head of `main` of every repo is mirrored
to `storage_dir/<namespace>/<name>/` so tests can look at exactly what arrived. Requests the server does not know are
answered 404 and recorded in `LoopbackHub.unhandled_requests`, so a test can assert that nothing fell through.

Clients must be pointed at the server *before* huggingface_hub is imported (`HF_ENDPOINT` is read at import time and
transformers keeps a lazy `HfApi` singleton), so end-to-end tests run the client in a subprocess with
[`hub_client_env`].

Example:

```python
>>> with LoopbackHub(tmp_path) as hub:
...     env = hub_client_env(hub.endpoint, hf_home=tmp_path / "hf_home")
...     subprocess.run([sys.executable, "push_script.py"], env=env, check=True)
...     assert (hub.storage_dir / "user" / "my-model" / "config.json").is_file()
...     assert hub.unhandled_requests == []
```
"""

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


#: Name of the (only) user of the loopback Hub; repos created without a namespace land here.
DEFAULT_USER = "user"
#: Token that tests hand to clients; the server accepts any bearer token.
DUMMY_TOKEN = "hf_dummy"

_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)


def git_blob_sha1(content: bytes) -> str:
    """Git's object id of a blob (`git hash-object`): what the Hub reports as `oid`/`ETag` of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _HubError(Exception):
    """An error answer: HTTP status, the Hub's `X-Error-Code` header (drives huggingface_hub's exception types)."""

    def __init__(self, status: int, message: str, error_code: str | None = None, repo_commit: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.repo_commit = repo_commit


class _Repo:
    """One model repo: every commit as a full `{path: bytes}` snapshot, plus branch heads."""

    def __init__(self, repo_id: str):
        self.repo_id = repo_id
        self.commits: dict[str, dict[str, bytes]] = {}
        self.commit_titles: dict[str, str] = {}
        self.branches: dict[str, str] = {}
        self.last_modified = datetime.now(timezone.utc)
        self.commit(branch="main", additions={".gitattributes": _GITATTRIBUTES}, deletions=[], title="initial commit")

    def resolve(self, revision: str) -> str:
        """Branch name or (full) commit sha -> commit sha."""
        revision = unquote(revision)
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.commits:
            return revision
        raise _HubError(404, f"Invalid rev id: {revision}", error_code="RevisionNotFound")

    def commit(self, *, branch: str, additions: dict[str, bytes], deletions: list[str], title: str) -> str:
        parent = self.branches.get(branch)
        files = dict(self.commits[parent]) if parent else {}
        for deleted in deletions:
            if deleted.endswith("/"):
                files = {path: data for path, data in files.items() if not path.startswith(deleted)}
            elif deleted in files:
                del files[deleted]
            else:
                raise _HubError(404, f"File not found: {deleted}", error_code="EntryNotFound")
        files.update(additions)
        # Like git, the id depends on parent, tree and message; the counter keeps re-commits of a tree distinct.
        digest = hashlib.sha1()
        digest.update(f"{parent}\n{title}\n{len(self.commits)}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_sha1(files[path])}\n".encode())
        sha = digest.hexdigest()
        self.commits[sha] = files
        self.commit_titles[sha] = title
        self.branches[branch] = sha
        self.last_modified = datetime.now(timezone.utc)
        return sha


class LoopbackHub:
    """Hub-compatible HTTP server on `127.0.0.1` (random port), served from a daemon thread.

    Args:
        storage_dir (`str` or `os.PathLike`):
            Folder where the head of `main` of each repo is mirrored as `<namespace>/<name>/<files>`.
        user (`str`, *optional*, defaults to `"user"`):
            Name returned by `whoami`; namespace of repos created without one.

    Use it as a context manager (or call `start()`/`stop()`). Attributes: `endpoint` (`"http://127.0.0.1:<port>"`),
    `storage_dir`, `requests` (every `(method, path, status)` served), `unhandled_requests` (routes it does not
    implement) and `server_errors` (exceptions raised while answering).
    """

    def __init__(self, storage_dir: str | os.PathLike, user: str = DEFAULT_USER):
        self.storage_dir = Path(storage_dir)
        self.user = user
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.unhandled_requests: list[tuple[str, str]] = []
        self.server_errors: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------------- lifecycle
    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("LoopbackHub is not running; call start() or use it as a context manager.")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LoopbackHub":
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        hub = self

        class Handler(_HubRequestHandler):
            loopback_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "LoopbackHub":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------------- repo state
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Snapshot `{path: content}` of `repo_id` at `revision` (branch or commit sha)."""
        with self._lock:
            repo = self._get_repo(repo_id)
            return dict(repo.commits[repo.resolve(revision)])

    def _get_repo(self, repo_id: str) -> _Repo:
        if repo_id not in self.repos:
            raise _HubError(404, f"Repository not found: {repo_id}", error_code="RepoNotFound")
        return self.repos[repo_id]

    def _mirror(self, repo: _Repo) -> None:
        folder = self.storage_dir.joinpath(*repo.repo_id.split("/"))
        if folder.exists():
            shutil.rmtree(folder)
        for path, content in repo.commits[repo.branches["main"]].items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


def _front_matter(readme: bytes | None) -> dict | None:
    """Parsed YAML metadata block of a README, or None when absent."""
    if readme is None:
        return None
    match = _FRONT_MATTER.match(readme.decode("utf-8", errors="replace"))
    if match is None:
        return None
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else None


def _model_index_errors(metadata: dict) -> list[str]:
    """The structural checks the Hub applies to `model-index` (each result needs task, dataset and metrics)."""
    errors = []
    model_index = metadata.get("model-index")
    if model_index is None:
        return errors
    if not isinstance(model_index, list):
        return ["model-index must be a list"]
    for model_position, model_entry in enumerate(model_index):
        prefix = f"model-index[{model_position}]"
        if not isinstance(model_entry, dict) or not isinstance(model_entry.get("name"), str):
            errors.append(f"{prefix}.name is required")
            continue
        for result_position, result in enumerate(model_entry.get("results") or []):
            where = f"{prefix}.results[{result_position}]"
            if not isinstance((result.get("task") or {}).get("type"), str):
                errors.append(f"{where}.task.type is required")
            dataset = result.get("dataset") or {}
            for key in ("type", "name"):
                if not isinstance(dataset.get(key), str):
                    errors.append(f"{where}.dataset.{key} is required")
            metrics = result.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                errors.append(f"{where}.metrics must be a non-empty list")
                continue
            for metric_position, metric in enumerate(metrics):
                if not isinstance(metric.get("type"), str) or "value" not in metric:
                    errors.append(f"{where}.metrics[{metric_position}] needs type and value")
    return errors


class _HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one request to the `LoopbackHub` given as class attribute `loopback_hub`."""

    loopback_hub: LoopbackHub
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; every answer carries Content-Length

    def log_message(self, format, *args):
        pass  # keep pytest output clean; `LoopbackHub.requests` records traffic instead

    # ----------------------------------------------------------------------------------------------- plumbing
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        hub = self.loopback_hub
        url = urlsplit(self.path)
        self._query = parse_qs(url.query)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = self._route(method, url.path)
        if route is None:
            hub.unhandled_requests.append((method, self.path))
            status = self._send_json({"error": f"loopback hub does not implement {method} {url.path}"}, status=404)
        else:
            handler, arguments = route
            try:
                with hub._lock:
                    status = handler(body, *arguments)
            except _HubError as error:
                status = self._send_error(error)
            except Exception as error:  # noqa: BLE001 - a bug here must reach the test as a 500, not as a hung client
                hub.server_errors.append(f"{method} {self.path}: {error!r}")
                status = self._send_error(_HubError(500, f"loopback hub error: {error!r}"))
        hub.requests.append((method, self.path, status))

    def _route(self, method: str, path: str):
        """(handler, path arguments) for a known route, else None. Path pieces stay URL-quoted here."""
        routes = [
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", self._preupload),
            ("POST", r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", self._commit),
            ("GET", r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", self._tree),
            ("GET", r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", self._model_info),
            ("GET", r"/api/models/([^/]+/[^/]+)", self._model_info),
            ("GET", r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self._resolve),
            ("HEAD", r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self._resolve),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                return handler, [unquote(group) if group is not None else None for group in match.groups()]
        return None

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None, content_type: str = "") -> int:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        return status

    def _send_json(self, data, status: int = 200, headers: dict[str, str] | None = None) -> int:
        return self._send(status, json.dumps(data).encode(), headers, content_type="application/json")

    def _send_error(self, error: _HubError) -> int:
        headers = {"X-Error-Message": error.message}
        if error.error_code:
            headers["X-Error-Code"] = error.error_code
        if error.repo_commit:
            headers["X-Repo-Commit"] = error.repo_commit
        return self._send_json({"error": error.message}, status=error.status, headers=headers)

    def _require_token(self) -> None:
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            raise _HubError(401, "Invalid username or password.")

    def _json_body(self, body: bytes) -> dict:
        try:
            data = json.loads(body or b"{}")
        except json.JSONDecodeError as error:
            raise _HubError(400, f"Request body is not JSON: {error}") from error
        if not isinstance(data, dict):
            raise _HubError(400, "Request body must be a JSON object")
        return data

    @staticmethod
    def _check_path(path: object) -> str:
        if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
            raise _HubError(400, f"Invalid path in repo: {path!r}")
        return path

    # ----------------------------------------------------------------------------------------------- endpoints
    def _whoami(self, body: bytes) -> int:
        self._require_token()
        user = self.loopback_hub.user
        return self._send_json(
            {
                "type": "user",
                "id": "0" * 24,
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "loopback", "role": "write"}},
            }
        )

    def _create_repo(self, body: bytes) -> int:
        self._require_token()
        payload = self._json_body(body)
        if payload.get("type") not in (None, "model"):
            raise _HubError(400, f"loopback hub only hosts model repos, got type={payload.get('type')!r}")
        name = payload.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
            raise _HubError(400, f"Invalid repo name: {name!r}")
        repo_id = f"{payload.get('organization') or self.loopback_hub.user}/{name}"
        url = f"{self.loopback_hub.endpoint}/{repo_id}"
        if repo_id in self.loopback_hub.repos:
            # The Hub answers 409 *with* the url; huggingface_hub reads it when `exist_ok=True`.
            return self._send_json({"error": "You already created this model repo", "url": url}, status=409)
        repo = self.loopback_hub.repos[repo_id] = _Repo(repo_id)
        self.loopback_hub._mirror(repo)
        return self._send_json({"url": url, "name": repo_id, "id": "0" * 24})

    def _validate_yaml(self, body: bytes) -> int:
        content = self._json_body(body).get("content", "")
        try:
            metadata = _front_matter(content.encode())
        except yaml.YAMLError as error:
            return self._send_json({"errors": [{"message": f"Invalid YAML: {error}"}], "warnings": []}, status=400)
        errors = _model_index_errors(metadata or {})
        warnings = [] if metadata else [{"message": "Empty or missing yaml metadata in repo card"}]
        status = 400 if errors else 200
        return self._send_json({"errors": [{"message": error} for error in errors], "warnings": warnings}, status)

    def _preupload(self, body: bytes, repo_id: str, revision: str) -> int:
        self._require_token()
        repo = self.loopback_hub._get_repo(repo_id)
        current = repo.commits[repo.resolve(revision)] if revision in repo.branches else {}
        files = []
        for entry in self._json_body(body).get("files", []):
            path = self._check_path(entry.get("path"))
            # "regular" keeps every upload inline in the commit payload (no LFS/Xet endpoints needed); the oid of an
            # existing file lets the client skip files that did not change, as it does against the real Hub.
            oid = git_blob_sha1(current[path]) if path in current else None
            files.append({"path": path, "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        return self._send_json({"files": files, "commitOid": repo.branches.get(revision)})

    def _commit(self, body: bytes, repo_id: str, revision: str) -> int:
        self._require_token()
        repo = self.loopback_hub._get_repo(repo_id)
        if self._query.get("create_pr"):
            raise _HubError(400, "loopback hub does not support pull requests (create_pr)")
        if revision not in repo.branches:
            raise _HubError(404, f"Invalid rev id: {revision}", error_code="RevisionNotFound")
        title, additions, deletions = None, {}, []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                title = value.get("summary")
                parent = value.get("parentCommit")
                if parent and not repo.branches[revision].startswith(parent):
                    raise _HubError(412, f"Parent commit {parent} is not the head of {revision}")
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                additions[self._check_path(value.get("path"))] = base64.b64decode(value.get("content", ""))
            elif key in ("deletedFile", "deletedFolder"):
                path = self._check_path(value.get("path", "").rstrip("/"))
                deletions.append(path + "/" if key == "deletedFolder" else path)
            else:
                raise _HubError(400, f"loopback hub does not support commit operation {key!r} (only regular files)")
        if not title:
            raise _HubError(400, "Commit header with a summary is required")
        sha = repo.commit(branch=revision, additions=additions, deletions=deletions, title=title)
        if revision == "main":
            self.loopback_hub._mirror(repo)
        commit_url = f"{self.loopback_hub.endpoint}/{repo_id}/commit/{sha}"
        return self._send_json({"success": True, "commitOid": sha, "commitUrl": commit_url})

    def _model_info(self, body: bytes, repo_id: str, revision: str | None = None) -> int:
        repo = self.loopback_hub._get_repo(repo_id)
        sha = repo.resolve(revision or "main")
        files = repo.commits[sha]
        card_data = _front_matter(files.get("README.md"))
        info = {
            "_id": "0" * 24,
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": sha,
            "lastModified": repo.last_modified.isoformat().replace("+00:00", "Z"),
            "private": False,
            "disabled": False,
            "gated": False,
            "tags": list((card_data or {}).get("tags") or []),
            "pipeline_tag": (card_data or {}).get("pipeline_tag"),
            "library_name": (card_data or {}).get("library_name"),
            "siblings": [{"rfilename": path} for path in sorted(files)],
        }
        if card_data is not None:
            info["cardData"] = card_data
            if "model-index" in card_data:
                info["model-index"] = card_data["model-index"]
        if "blobs" in self._query:
            for sibling in info["siblings"]:
                content = files[sibling["rfilename"]]
                sibling.update(size=len(content), blobId=git_blob_sha1(content))
        return self._send_json(info)

    def _tree(self, body: bytes, repo_id: str, revision: str, path: str | None) -> int:
        repo = self.loopback_hub._get_repo(repo_id)
        files = repo.commits[repo.resolve(revision)]
        prefix = path.strip("/") + "/" if path and path.strip("/") else ""
        recursive = self._query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for file_path in sorted(files):
            if not file_path.startswith(prefix):
                continue
            relative_parts = file_path[len(prefix) :].split("/")
            # Folders on the way to the file: all of them when recursive, else only the first level.
            for depth in range(1, len(relative_parts) if recursive else min(2, len(relative_parts))):
                folders.add(prefix + "/".join(relative_parts[:depth]))
            if recursive or len(relative_parts) == 1:
                content = files[file_path]
                entries.append(
                    {"type": "file", "oid": git_blob_sha1(content), "size": len(content), "path": file_path}
                )
        if prefix and not entries and not folders:
            raise _HubError(404, f"{path} does not exist on {revision}", error_code="EntryNotFound")
        folder_entries = [
            {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder}
            for folder in sorted(folders)
        ]
        return self._send_json(folder_entries + entries)

    def _resolve(self, body: bytes, repo_id: str, revision: str, path: str) -> int:
        repo = self.loopback_hub._get_repo(repo_id)
        sha = repo.resolve(revision)
        files = repo.commits[sha]
        if path not in files:
            # X-Repo-Commit on the 404 lets hf_hub_download cache the file's absence for this commit.
            raise _HubError(404, f"Entry not found: {path}", error_code="EntryNotFound", repo_commit=sha)
        content = files[path]
        headers = {"ETag": f'"{git_blob_sha1(content)}"', "X-Repo-Commit": sha, "Accept-Ranges": "none"}
        return self._send(200, content, headers, content_type="application/octet-stream")


@contextlib.contextmanager
def run_hub_server(storage_dir: str | os.PathLike, user: str = DEFAULT_USER) -> Iterator[str]:
    """Run a [`LoopbackHub`] for the duration of a `with` block and yield its endpoint URL.

    Args:
        storage_dir (`str` or `os.PathLike`):
            Folder that receives a mirror of every repo (`<storage_dir>/<namespace>/<name>/...`), typically a pytest
            `tmp_path` (sub)folder.
        user (`str`, *optional*, defaults to `"user"`):
            Name the server answers to `whoami`.

    Returns:
        `Iterator[str]`: yields `"http://127.0.0.1:<port>"`, to pass as `HF_ENDPOINT` (see [`hub_client_env`]).
    """
    with LoopbackHub(storage_dir, user=user) as hub:
        yield hub.endpoint


def hub_client_env(
    endpoint: str, hf_home: str | os.PathLike, base_env: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment for a client subprocess that must talk to the loopback Hub and nothing else.

    Args:
        endpoint (`str`):
            The server URL (`LoopbackHub.endpoint` or what [`run_hub_server`] yields).
        hf_home (`str` or `os.PathLike`):
            A fresh `HF_HOME` (cache and token folder) for the subprocess.
        base_env (`dict[str, str]`, *optional*):
            Environment to start from; defaults to a copy of `os.environ`.

    Returns:
        `dict[str, str]`: the environment, with `HF_HUB_OFFLINE`/`TRANSFORMERS_OFFLINE` removed (they block uploads)
        and Xet, telemetry and implicit tokens from other places switched off.
    """
    env = dict(os.environ if base_env is None else base_env)
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN_PATH", "HF_HUB_CACHE"):
        env.pop(variable, None)
    env.update(
        HF_ENDPOINT=endpoint,
        HF_TOKEN=DUMMY_TOKEN,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",  # keep uploads and downloads on the plain HTTP paths this server implements
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env
