"""A loopback stand-in for the Hugging Face Hub, for offline push/download tests.

huggingface_hub 2.x talks to the Hub through `httpx2`, so mocking libraries such as `responses` or `respx` do not
intercept it; a real HTTP server on 127.0.0.1 is the robust fake. This module implements the handful of endpoints
that `HfApi.create_repo`, `HfApi.upload_folder`/`create_commit`, `PreTrainedModel.push_to_hub`,
`ModelCard.push_to_hub`/`ModelCard.load`, `hf_hub_download`, `snapshot_download`, `from_pretrained`, and
`datasets.load_dataset` of a Hub dataset (through `HfFileSystem`) use (huggingface_hub 2.4, transformers 5.x,
datasets 5.x), with the headers and error codes those clients rely on. `{type}` is `models` or `datasets`:

| Method | Route | Used by |
|---|---|---|
| GET | `/api/whoami-v2` | `HfApi.whoami` |
| POST | `/api/repos/create` | `create_repo` of a model or dataset (409 + `url` when it exists, as the Hub does) |
| POST | `/api/validate-yaml` | `create_commit` when README.md is committed, `ModelCard.validate` |
| POST | `/api/{type}/{id}/preupload/{rev}` | answers `"regular"` for every file: no LFS, no Xet |
| POST | `/api/{type}/{id}/commit/{rev}` | NDJSON: `header`, `file` (base64), `deletedFile`, `deletedFolder` |
| POST | `/api/{type}/{id}/paths-info/{rev}` | `get_paths_info`, `HfFileSystem.info` (form body `paths`, `expand`) |
| GET | `/api/{type}/{id}[/revision/{rev}]` | `model_info`/`dataset_info` (sha, siblings, cardData) |
| GET | `/api/{type}/{id}/tree/{rev}[/{path}]` | `list_repo_tree`, `snapshot_download`, `HfFileSystem.ls`/`glob` (`recursive`, `expand` with `lastCommit`, cursor pages in a `Link` header) |
| HEAD/GET | `/{id}/resolve/{rev}/{path}` | `hf_hub_download` of a model file (`ETag`, `X-Repo-Commit`, `Content-Length`) |
| HEAD/GET | `/datasets/{id}/resolve/{rev}/{path}` | the same for a dataset file (cards, parquet shards) |

Dataset ids may lack a namespace, and an alias registered with [`LoopbackHub.add_dataset`] answers every dataset
route with a 307 redirect to the canonical id, as the Hub does for the canonical datasets that moved under an
organisation (`glue` -> `nyu-mll/glue`). The Hub's dataset viewer (`datasets-server.<host>`, asked for parquet
exports) is another host, which clients reach only through DNS; against this server that lookup fails and `datasets`
falls back to the repo's own files, as it does when the viewer has nothing.

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
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import yaml


#: Name of the (only) user of the loopback Hub; repos created without a namespace land here.
DEFAULT_USER = "user"
#: Token that tests hand to clients; the server accepts any bearer token.
DUMMY_TOKEN = "hf_dummy"
#: Repo types the server hosts (the Hub's `{type}s` in `/api/{type}s/...` and `/{type}s/{id}/resolve/...`).
REPO_TYPES = ("model", "dataset")

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
    """One model or dataset repo: every commit as a full `{path: bytes}` snapshot, plus branch heads."""

    def __init__(self, repo_id: str, repo_type: str = "model"):
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.commits: dict[str, dict[str, bytes]] = {}
        self.commit_titles: dict[str, str] = {}
        self.commit_dates: dict[str, datetime] = {}
        self.parents: dict[str, str | None] = {}
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
        self.parents[sha] = parent
        self.last_modified = self.commit_dates[sha] = datetime.now(timezone.utc)
        self.branches[branch] = sha
        return sha

    def last_commit(self, sha: str, path: str) -> str:
        """The newest commit at or before `sha` that changed `path` (a file, or anything under a folder): what the
        Hub reports as `lastCommit` of a tree entry when asked to `expand`."""

        def snapshot(commit: str | None) -> dict[str, str]:
            files = self.commits[commit] if commit else {}
            prefix = path + "/"
            return {p: git_blob_sha1(c) for p, c in files.items() if p == path or p.startswith(prefix)}

        while self.parents[sha] is not None and snapshot(sha) == snapshot(self.parents[sha]):
            sha = self.parents[sha]
        return sha


class LoopbackHub:
    """Hub-compatible HTTP server on `127.0.0.1` (random port), served from a daemon thread.

    Args:
        storage_dir (`str` or `os.PathLike`):
            Folder where the head of `main` of each repo is mirrored as `<namespace>/<name>/<files>` (models) and
            `datasets/<namespace>/<name>/<files>` (datasets).
        user (`str`, *optional*, defaults to `"user"`):
            Name returned by `whoami`; namespace of repos created without one.
        tree_page_size (`int`, *optional*, defaults to 1000):
            Entries per page of a tree listing (the Hub's 1000; with `expand=true` at most 50, as on the Hub); more
            entries continue on the page named by a `Link: <...>; rel="next"` header.

    Use it as a context manager (or call `start()`/`stop()`). Attributes: `endpoint` (`"http://127.0.0.1:<port>"`),
    `storage_dir`, `repos` (`{"model": {repo_id: repo}, "dataset": {...}}`), `aliases` (names that redirect to a
    dataset, see [`~LoopbackHub.add_dataset`]), `requests` (every `(method, path, status)` served),
    `unhandled_requests` (routes it does not implement) and `server_errors` (exceptions raised while answering).
    """

    def __init__(self, storage_dir: str | os.PathLike, user: str = DEFAULT_USER, tree_page_size: int = 1000):
        self.storage_dir = Path(storage_dir)
        self.user = user
        self.tree_page_size = tree_page_size
        self.repos: dict[str, dict[str, _Repo]] = {repo_type: {} for repo_type in REPO_TYPES}
        self.aliases: dict[str, str] = {}
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
    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Snapshot `{path: content}` of `repo_id` (a `repo_type` repo) at `revision` (branch or commit sha)."""
        with self._lock:
            repo = self._get_repo(repo_id, repo_type)
            return dict(repo.commits[repo.resolve(revision)])

    def add_dataset(
        self,
        repo_id: str,
        files: dict[str, bytes],
        aliases: tuple[str, ...] = (),
        title: str = "Upload dataset",
    ) -> str:
        """Seeds a dataset repo with `files` in one commit on `main`, as a test fixture (no HTTP, no token).

        Args:
            repo_id (`str`):
                `"namespace/name"` of the dataset.
            files (`dict[str, bytes]`):
                `{path in repo: content}`, e.g. `README.md` with the `configs:`/`dataset_info:` YAML and parquet
                shards.
            aliases (`tuple[str, ...]`, *optional*):
                Other ids that the Hub redirects (HTTP 307) to `repo_id`, as it does for the canonical datasets that
                moved under an organisation (`glue` -> `nyu-mll/glue`). Every route answers the redirect, so the
                client follows it and caches the dataset under the name it was given.
            title (`str`, *optional*): The commit title.

        Returns:
            `str`: the commit sha.
        """
        with self._lock:
            repos = self.repos["dataset"]
            repo = repos.get(repo_id) or repos.setdefault(repo_id, _Repo(repo_id, "dataset"))
            sha = repo.commit(branch="main", additions=dict(files), deletions=[], title=title)
            for alias in aliases:
                if alias in repos or alias == repo_id:
                    raise ValueError(f"alias {alias!r} is the id of a dataset repo; expected a free name.")
                self.aliases[alias] = repo_id
            self._mirror(repo)
            return sha

    def _get_repo(self, repo_id: str, repo_type: str = "model") -> _Repo:
        if repo_id not in self.repos[repo_type]:
            raise _HubError(404, f"Repository not found: {repo_id}", error_code="RepoNotFound")
        return self.repos[repo_type][repo_id]

    def _mirror(self, repo: _Repo) -> None:
        base = self.storage_dir if repo.repo_type == "model" else self.storage_dir / f"{repo.repo_type}s"
        folder = base.joinpath(*repo.repo_id.split("/"))
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
            handler, arguments, match = route
            try:
                with hub._lock:
                    target = self._alias_target(url, arguments, match)
                    status = self._redirect(target) if target else handler(body, **arguments)
            except _HubError as error:
                status = self._send_error(error)
            except Exception as error:  # noqa: BLE001 - a bug here must reach the test as a 500, not as a hung client
                hub.server_errors.append(f"{method} {self.path}: {error!r}")
                status = self._send_error(_HubError(500, f"loopback hub error: {error!r}"))
        hub.requests.append((method, self.path, status))

    def _route(self, method: str, path: str):
        """`(handler, keyword arguments, match)` for a known route, else None. Path pieces stay URL-quoted here.

        `type` is `models`/`datasets` in API routes; resolve routes of models have no prefix (`/{id}/resolve/...`),
        those of datasets have `/datasets/`. Dataset ids may lack a namespace (`glue`), model ids may not.
        """
        api = r"/api/(?P<repo_type>models|datasets)/(?P<repo_id>[^/]+/[^/]+|(?<=datasets/)[^/]+)"
        routes = [
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", api + r"/preupload/(?P<revision>[^/]+)", self._preupload),
            ("POST", api + r"/commit/(?P<revision>[^/]+)", self._commit),
            ("POST", api + r"/paths-info/(?P<revision>[^/]+)", self._paths_info),
            ("GET", api + r"/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?", self._tree),
            ("GET", api + r"/revision/(?P<revision>[^/]+)", self._repo_info),
            ("GET", api, self._repo_info),
            # Dataset routes first: `/datasets/x/resolve/...` would also read as the model repo `datasets/x`.
            ("GET", r"/(?P<repo_type>datasets)/(?P<repo_id>[^/]+(?:/[^/]+)?)/resolve/(?P<revision>[^/]+)/(?P<path>.+)",
             self._resolve),
            ("HEAD", r"/(?P<repo_type>datasets)/(?P<repo_id>[^/]+(?:/[^/]+)?)/resolve/(?P<revision>[^/]+)/(?P<path>.+)",
             self._resolve),
            ("GET", r"/(?P<repo_id>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)", self._resolve),
            ("HEAD", r"/(?P<repo_id>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)", self._resolve),
        ]  # fmt: skip
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                arguments = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                if "repo_type" in arguments or "repo_id" in arguments:
                    arguments["repo_type"] = arguments.get("repo_type", "models")[: -len("s")]
                return handler, arguments, match
        return None

    def _alias_target(self, url, arguments: dict, match: re.Match) -> str | None:
        """Where the Hub redirects a request that names a dataset by an alias (`glue` -> `nyu-mll/glue`), else None."""
        canonical = (
            self.loopback_hub.aliases.get(arguments.get("repo_id"))
            if arguments.get("repo_type") == "dataset"
            else None
        )
        if canonical is None:
            return None
        path = url.path[: match.start("repo_id")] + canonical + url.path[match.end("repo_id") :]
        return path + (f"?{url.query}" if url.query else "")

    def _redirect(self, location: str) -> int:
        # 307 keeps method and body (paths-info is a POST); a relative Location, as the Hub sends.
        return self._send_json({"redirect": location}, status=307, headers={"Location": location})

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
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise _HubError(400, f"loopback hub hosts {' and '.join(REPO_TYPES)} repos, got type={repo_type!r}")
        name = payload.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
            raise _HubError(400, f"Invalid repo name: {name!r}")
        repo_id = f"{payload.get('organization') or self.loopback_hub.user}/{name}"
        url = self._repo_url(repo_type, repo_id)
        repos = self.loopback_hub.repos[repo_type]
        if repo_id in repos:
            # The Hub answers 409 *with* the url; huggingface_hub reads it when `exist_ok=True`.
            return self._send_json({"error": f"You already created this {repo_type} repo", "url": url}, status=409)
        repo = repos[repo_id] = _Repo(repo_id, repo_type)
        self.loopback_hub._mirror(repo)
        return self._send_json({"url": url, "name": repo_id, "id": "0" * 24})

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.loopback_hub.endpoint}/{prefix}{repo_id}"

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

    def _preupload(self, body: bytes, repo_type: str, repo_id: str, revision: str) -> int:
        self._require_token()
        repo = self.loopback_hub._get_repo(repo_id, repo_type)
        current = repo.commits[repo.resolve(revision)] if revision in repo.branches else {}
        files = []
        for entry in self._json_body(body).get("files", []):
            path = self._check_path(entry.get("path"))
            # "regular" keeps every upload inline in the commit payload (no LFS/Xet endpoints needed); the oid of an
            # existing file lets the client skip files that did not change, as it does against the real Hub.
            oid = git_blob_sha1(current[path]) if path in current else None
            files.append({"path": path, "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        return self._send_json({"files": files, "commitOid": repo.branches.get(revision)})

    def _commit(self, body: bytes, repo_type: str, repo_id: str, revision: str) -> int:
        self._require_token()
        repo = self.loopback_hub._get_repo(repo_id, repo_type)
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
        commit_url = f"{self._repo_url(repo_type, repo_id)}/commit/{sha}"
        return self._send_json({"success": True, "commitOid": sha, "commitUrl": commit_url})

    def _repo_info(self, body: bytes, repo_type: str, repo_id: str, revision: str | None = None) -> int:
        repo = self.loopback_hub._get_repo(repo_id, repo_type)
        sha = repo.resolve(revision or "main")
        files = repo.commits[sha]
        card_data = _front_matter(files.get("README.md"))
        info = {
            "_id": "0" * 24,
            "id": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": sha,
            "lastModified": _iso(repo.last_modified),
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": list((card_data or {}).get("tags") or []),
            "siblings": [{"rfilename": path} for path in sorted(files)],
        }
        if repo_type == "model":
            info.update(
                modelId=repo_id,
                pipeline_tag=(card_data or {}).get("pipeline_tag"),
                library_name=(card_data or {}).get("library_name"),
            )
        if card_data is not None:
            info["cardData"] = card_data
            if "model-index" in card_data:
                info["model-index"] = card_data["model-index"]
        if "blobs" in self._query:
            for sibling in info["siblings"]:
                content = files[sibling["rfilename"]]
                sibling.update(size=len(content), blobId=git_blob_sha1(content))
        return self._send_json(info)

    def _entry(self, repo: _Repo, sha: str, path: str, expand: bool) -> dict:
        """A tree / paths-info entry: a file (`oid` = git blob id, `size`) or a directory; with `expand`, also the
        `lastCommit` that touched it."""
        files = repo.commits[sha]
        if path in files:
            entry = {"type": "file", "oid": git_blob_sha1(files[path]), "size": len(files[path]), "path": path}
        else:
            entry = {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
        if expand:
            commit = repo.last_commit(sha, path)
            entry["lastCommit"] = {
                "id": commit,
                "title": repo.commit_titles[commit],
                "date": _iso(repo.commit_dates[commit]),
            }
        return entry

    def _tree(self, body: bytes, repo_type: str, repo_id: str, revision: str, path: str | None = None) -> int:
        repo = self.loopback_hub._get_repo(repo_id, repo_type)
        sha = repo.resolve(revision)
        files = repo.commits[sha]
        prefix = path.strip("/") + "/" if path and path.strip("/") else ""
        recursive = self._flag("recursive")
        expand = self._flag("expand")
        paths, folders = [], set()
        for file_path in sorted(files):
            if not file_path.startswith(prefix):
                continue
            relative_parts = file_path[len(prefix) :].split("/")
            # Folders on the way to the file: all of them when recursive, else only the first level.
            for depth in range(1, len(relative_parts) if recursive else min(2, len(relative_parts))):
                folders.add(prefix + "/".join(relative_parts[:depth]))
            if recursive or len(relative_parts) == 1:
                paths.append(file_path)
        if prefix and not paths and not folders:
            raise _HubError(404, f"{path} does not exist on {revision}", error_code="EntryNotFound")
        ordered = sorted(folders) + paths
        # Cursor pagination as on the Hub: the next page's url (query included) in a `Link: <...>; rel="next"` header.
        page_size = min(self.loopback_hub.tree_page_size, 50) if expand else self.loopback_hub.tree_page_size
        start = int(self._query.get("cursor", ["0"])[0])
        page = ordered[start : start + page_size]
        headers = {}
        if start + page_size < len(ordered):
            query = {key: values[0] for key, values in self._query.items()}
            query["cursor"] = str(start + page_size)
            next_url = f"{self.loopback_hub.endpoint}{urlsplit(self.path).path}?{urlencode(query)}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        return self._send_json([self._entry(repo, sha, entry, expand) for entry in page], headers=headers)

    def _paths_info(self, body: bytes, repo_type: str, repo_id: str, revision: str) -> int:
        repo = self.loopback_hub._get_repo(repo_id, repo_type)
        sha = repo.resolve(revision)
        files = repo.commits[sha]
        # A form body (`paths=a&paths=b&expand=True`), as `HfApi.get_paths_info` sends it.
        form = parse_qs(body.decode())
        expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
        entries = []
        for requested in form.get("paths", []):
            path = requested.strip("/")
            # Paths that do not exist are left out of the answer, as the Hub does.
            if path in files or any(file_path.startswith(path + "/") for file_path in files):
                entries.append(self._entry(repo, sha, path, expand))
        return self._send_json(entries)

    def _flag(self, name: str) -> bool:
        return self._query.get(name, ["false"])[0].lower() in ("1", "true")

    def _resolve(self, body: bytes, repo_id: str, revision: str, path: str, repo_type: str = "model") -> int:
        repo = self.loopback_hub._get_repo(repo_id, repo_type)
        sha = repo.resolve(revision)
        files = repo.commits[sha]
        if path not in files:
            # X-Repo-Commit on the 404 lets hf_hub_download cache the file's absence for this commit.
            raise _HubError(404, f"Entry not found: {path}", error_code="EntryNotFound", repo_commit=sha)
        content = files[path]
        headers = {"ETag": f'"{git_blob_sha1(content)}"', "X-Repo-Commit": sha, "Accept-Ranges": "none"}
        return self._send(200, content, headers, content_type="application/octet-stream")


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


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
        `dict[str, str]`: the environment, with `HF_HUB_OFFLINE`/`TRANSFORMERS_OFFLINE`/`HF_DATASETS_OFFLINE` removed
        (they block uploads and Hub datasets), the hub and datasets caches under `hf_home`, and Xet, telemetry and
        implicit tokens from other places switched off.
    """
    env = dict(os.environ if base_env is None else base_env)
    offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    for variable in (*offline, "HF_TOKEN_PATH", "HF_HUB_CACHE", "HF_DATASETS_CACHE"):
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
