"""A loopback emulator of the Hugging Face Hub endpoints that `huggingface_hub` 2.x and `datasets` 5.x use.

Enough of the Hub for a real `Dataset.push_to_hub` / `HfApi.create_commit` / `DatasetCard.load` /
`load_dataset(repo[, config])` round trip, on 127.0.0.1 with a free port, no network:

- repos: `POST /api/repos/create`, `GET /api/datasets/{repo}[/revision/{rev}]`, branches, refs;
- uploads: `POST .../preupload/{rev}` (parquet and images answered `uploadMode: "lfs"`), the LFS batch API
  plus a `PUT` of the object, `POST .../commit/{rev}` (NDJSON: header, file, lfsFile, deletedFile,
  deletedFolder; `parentCommit` checked: 412 when stale);
- reads: `tree` (recursive), `paths-info`, `resolve` (GET and HEAD, byte ranges), `POST /api/validate-yaml`.

Files are kept per repository and commit; a branch points at a commit, a commit holds a full snapshot.
Every request is recorded (method, path, headers, body) so tests can check where a token went.
`fail` makes requests answer 500: `"all"` every request, `"writes"` every POST/PUT/DELETE, `"commit"` only
commits (uploads succeed, nothing lands: a push that dies at the end).
Clients must run with `HF_ENDPOINT=<emulator.url>` and `HF_HUB_DISABLE_XET=1` (see `hub_env`).

Usage::

    with HubEmulator(token="hf_test") as hub:
        env = hub_env(hub, tmp_path)   # environment for a subprocess that talks to it
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

MAX_BODY = 256 * 1024 * 1024
"""Largest request body accepted (bytes); larger requests get 413."""
LFS_SUFFIXES = (".parquet", ".arrow", ".png", ".jpg", ".jpeg", ".bin", ".safetensors", ".gz", ".zip")
"""Paths answered `uploadMode: "lfs"` at preupload (the Hub decides by size and .gitattributes)."""
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a blob (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Entry:
    """One file in a snapshot."""

    data: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_blob_sha1(self.data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, Entry]
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        """A branch name or a (possibly abbreviated) commit oid -> that commit."""
        if rev in self.branches:
            return self.commits[self.branches[rev]]
        if re.fullmatch(r"[0-9a-f]{5,40}", rev):
            hits = [c for oid, c in self.commits.items() if oid.startswith(rev)]
            if len(hits) == 1:
                return hits[0]
        return None


@dataclass
class Request:
    """One request as the emulator saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class HubEmulator:
    """The emulated Hub: state, routing and the HTTP server thread. Use as a context manager."""

    def __init__(self, token: str | None = None, user: str = "tester") -> None:
        self.token = token
        """Token accepted for writes (None: any bearer token); requests without one get 401 on writes."""
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.fail: str | None = None
        """None, "all" (every request answers 500), "writes" (POST/PUT/DELETE) or "commit" (commits only)."""
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "emulator not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubEmulator:
        emulator = self

        class Handler(_Handler):
            hub = emulator

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="hub-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- helpers for tests --------------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Snapshot of a repo at a branch or commit: path -> content."""
        with self.lock:
            commit = self.repos[repo_id].resolve(revision)
            assert commit is not None, f"no revision {revision} in {repo_id}"
            return {p: e.data for p, e in commit.files.items()}

    def put_file(self, repo_id: str, path: str, data: bytes, revision: str = "main",
                 title: str = "edit") -> str:
        """Commit one file directly, as a user editing on the website would; returns the commit oid."""
        entry = Entry(data, path.endswith(LFS_SUFFIXES))
        with self.lock:
            return self._commit(self.repos[repo_id], revision, title, None, [("add", path, entry)])

    def stored_blobs(self) -> Iterator[tuple[str, bytes]]:
        """Every stored byte string (all commits of all repos, LFS objects) with a label, for leak checks."""
        with self.lock:
            for repo in self.repos.values():
                for commit in repo.commits.values():
                    yield f"{repo.repo_id}@{commit.oid[:8]}:title", commit.title.encode()
                    for path, entry in commit.files.items():
                        yield f"{repo.repo_id}@{commit.oid[:8]}:{path}", entry.data
            for oid, data in self.lfs.items():
                yield f"lfs:{oid[:12]}", data

    # ---- state changes ------------------------------------------------------------------------------------
    def _new_oid(self) -> str:
        return hashlib.sha1(uuid.uuid4().bytes).hexdigest()

    def _create_repo(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id, private)
        oid = self._new_oid()
        repo.commits[oid] = Commit(oid, None, "initial commit",
                                   {".gitattributes": Entry(GITATTRIBUTES, False)})
        repo.branches["main"] = oid
        self.repos[repo_id] = repo
        return repo

    def _commit(self, repo: Repo, branch: str, title: str, parent: str | None,
                ops: list[tuple[str, str, Entry | None]]) -> str:
        if branch not in repo.branches:
            raise HttpError(404, f"Revision not found: {branch}", "RevisionNotFound")
        head = repo.commits[repo.branches[branch]]
        if parent is not None and not head.oid.startswith(parent):
            raise HttpError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for kind, path, entry in ops:
            if kind == "add":
                assert entry is not None
                files[path] = entry
            elif kind == "deletedFile":
                if files.pop(path, None) is None:
                    raise HttpError(404, f"File not found: {path}", "EntryNotFound")
            else:  # deletedFolder
                prefix = path.rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    del files[p]
        oid = self._new_oid()
        repo.commits[oid] = Commit(oid, head.oid, title, files)
        repo.branches[branch] = oid
        return oid


def _tree_entry(path: str, entry: Entry | None) -> dict[str, Any]:
    if entry is None:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path}
    size = len(entry.data)
    out: dict[str, Any] = {"type": "file", "oid": git_blob_sha1(entry.data), "size": size, "path": path}
    if entry.lfs:
        out["lfs"] = {"oid": hashlib.sha256(entry.data).hexdigest(), "size": size, "pointerSize": 134}
    return out


def _dirs(files: dict[str, Entry]) -> set[str]:
    out: set[str] = set()
    for p in files:
        parts = p.split("/")[:-1]
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return out


class _Handler(BaseHTTPRequestHandler):
    hub: HubEmulator
    protocol_version = "HTTP/1.1"
    timeout = 30  # socket timeout: a stuck client cannot hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    # every method goes through one place
    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _handle(self) -> None:
        hub = self.hub
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"error": "request too large"})
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        record = Request(self.command, self.path, dict(self.headers.items()), body)
        with hub.lock:
            hub.requests.append(record)
        try:
            if hub.fail == "all" or (hub.fail == "writes" and self.command in ("POST", "PUT", "DELETE")) or (
                    hub.fail == "commit" and self.command == "POST" and "/commit/" in self.path):
                raise HttpError(500, "Internal Error - emulated failure")
            with hub.lock:
                status, payload, headers = self._route(body)
        except HttpError as err:
            status, headers = err.status, {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            payload = {"error": err.message, **err.extra}
        record.status = status
        self._send(status, payload, headers)

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/octet-stream" if isinstance(payload, bytes)
                           else "application/json")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", headers.get("Content-Length", str(len(data))))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # ---- routing -------------------------------------------------------------------------------------------
    def _auth(self, required: bool) -> bool:
        value = self.headers.get("Authorization", "")
        ok = value.startswith("Bearer ") and (self.hub.token is None or value[7:] == self.hub.token)
        if required and not ok:
            raise HttpError(401, "Invalid credentials in Authorization header")
        return ok

    def _repo(self, repo_id: str) -> Repo:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not self._auth(False)):
            raise HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    def _rev(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _route(self, body: bytes) -> tuple[int, Any, dict[str, str]]:
        split = urlsplit(self.path)
        query = parse_qs(split.query)
        seg = [unquote(s) for s in split.path.strip("/").split("/")]
        m = self.command
        if seg[:2] == ["api", "whoami-v2"]:
            self._auth(True)
            return 200, {"type": "user", "name": self.hub.user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"role": "write"}}}, {}
        if m == "POST" and seg[:3] == ["api", "repos", "create"]:
            return self._create(json.loads(body or b"{}"))
        if m == "POST" and seg[:2] == ["api", "validate-yaml"]:
            return self._validate_yaml(json.loads(body or b"{}"))
        if m == "PUT" and seg[0] == "_lfs" and len(seg) == 2:
            if hashlib.sha256(body).hexdigest() != seg[1]:
                raise HttpError(400, "sha256 mismatch")
            self.hub.lfs[seg[1]] = body
            return 200, {}, {}
        if seg[:2] == ["api", "datasets"] and len(seg) >= 4:
            repo = self._repo(f"{seg[2]}/{seg[3]}")
            return self._api(repo, seg[4:], query, body)
        if seg[0] == "datasets" and len(seg) >= 4:
            if m == "POST" and seg[2].endswith(".git") and seg[3:] == ["info", "lfs", "objects", "batch"]:
                self._auth(True)
                self._repo(f"{seg[1]}/{seg[2].removesuffix('.git')}")
                return self._lfs_batch(json.loads(body))
            if m in ("GET", "HEAD") and seg[3] == "resolve" and len(seg) >= 6:
                return self._resolve(self._repo(f"{seg[1]}/{seg[2]}"), seg[4], "/".join(seg[5:]))
        raise HttpError(404, f"emulator: no route for {m} {split.path}")

    def _create(self, payload: dict) -> tuple[int, Any, dict[str, str]]:
        self._auth(True)
        if payload.get("type") != "dataset":
            raise HttpError(400, "emulator: only dataset repos")
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        url = f"{self.hub.url}/datasets/{repo_id}"
        if repo_id in self.hub.repos:
            raise HttpError(409, "You already created this dataset repo", extra={"url": url})
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        self.hub._create_repo(repo_id, private)
        return 200, {"url": url, "name": repo_id}, {}

    def _validate_yaml(self, payload: dict) -> tuple[int, Any, dict[str, str]]:
        content = payload.get("content", "")
        m = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError as exc:
            raise HttpError(400, f"Invalid YAML: {exc}") from None
        if meta is not None and not isinstance(meta, dict):
            raise HttpError(400, "Invalid metadata: not a mapping")
        return 200, {"errors": [], "warnings": []}, {}

    def _api(self, repo: Repo, rest: list[str], query: dict, body: bytes) -> tuple[int, Any, dict[str, str]]:
        m = self.command
        if m == "GET" and (not rest or rest[0] == "revision"):
            commit = self._rev(repo, rest[1] if len(rest) > 1 else "main")
            return 200, self._info(repo, commit), {}
        if m == "GET" and rest[0] == "refs":
            return 200, {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                                      for b, oid in repo.branches.items()], "converts": [], "tags": []}, {}
        if m == "POST" and rest[0] == "branch" and len(rest) == 2:
            self._auth(True)
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            if rest[1] in repo.branches:
                raise HttpError(409, f"Reference already exists: refs/heads/{rest[1]}")
            repo.branches[rest[1]] = self._rev(repo, start).oid
            return 200, {}, {}
        if m == "POST" and rest[0] == "preupload" and len(rest) == 2:
            self._auth(True)
            commit = self._rev(repo, rest[1])
            files = []
            for f in json.loads(body)["files"]:
                have = commit.files.get(f["path"])
                files.append({"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES)
                              else "regular", "shouldIgnore": False, "oid": have.oid if have else None})
            return 200, {"files": files, "commitOid": commit.oid}, {}
        if m == "POST" and rest[0] == "commit" and len(rest) == 2:
            self._auth(True)
            if query.get("create_pr"):
                raise HttpError(400, "emulator: pull requests are not supported")
            return self._commit(repo, rest[1], body)
        if m == "GET" and rest[0] == "tree" and len(rest) >= 2:
            commit = self._rev(repo, rest[1])
            recursive = query.get("recursive", ["false"])[0] == "true"
            return 200, self._tree(commit, "/".join(rest[2:]), recursive), {}
        if m == "POST" and rest[0] == "paths-info" and len(rest) == 2:
            commit = self._rev(repo, rest[1])
            form = parse_qs(body.decode())
            paths = form.get("paths") or json.loads(body or b"{}").get("paths", [])
            dirs = _dirs(commit.files)
            out = [_tree_entry(p, commit.files[p]) if p in commit.files else _tree_entry(p, None)
                   for p in paths if p in commit.files or p in dirs]
            return 200, out, {}
        raise HttpError(404, f"emulator: no route for {m} {'/'.join(rest)}")

    def _info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        card = {}
        if "README.md" in commit.files:
            text = commit.files["README.md"].data.decode()
            mm = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.S)
            card = (yaml.safe_load(mm.group(1)) if mm else None) or {}
        return {"_id": repo.repo_id, "id": repo.repo_id, "author": repo.repo_id.split("/")[0],
                "sha": commit.oid, "lastModified": commit.date, "createdAt": commit.date,
                "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": card.get("tags") or [], "cardData": card,
                "siblings": [{"rfilename": p} for p in sorted(commit.files)]}

    def _tree(self, commit: Commit, path: str, recursive: bool) -> list[dict[str, Any]]:
        path = path.strip("/")
        dirs = _dirs(commit.files)
        if path and path not in dirs:
            if path in commit.files:
                return [_tree_entry(path, commit.files[path])]
            raise HttpError(404, f"Entry not found: {path}", "EntryNotFound")
        prefix = f"{path}/" if path else ""
        out = []
        for d in sorted(dirs):
            if d.startswith(prefix) and (recursive or "/" not in d[len(prefix):]):
                out.append(_tree_entry(d, None))
        for p in sorted(commit.files):
            if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):]):
                out.append(_tree_entry(p, commit.files[p]))
        return out

    def _commit(self, repo: Repo, rev: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HttpError(400, "commit payload must start with a header")
        header = lines[0]["value"]
        ops: list[tuple[str, str, Entry | None]] = []
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            if key == "file":
                ops.append(("add", value["path"], Entry(base64.b64decode(value["content"]), False)))
            elif key == "lfsFile":
                data = self.hub.lfs.get(value["oid"])
                if data is None:
                    raise HttpError(422, f"LFS object {value['oid']} was not uploaded")
                ops.append(("add", value["path"], Entry(data, True)))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append((key, value["path"], None))
            else:
                raise HttpError(400, f"emulator: unsupported commit operation {key}")
        oid = self.hub._commit(repo, rev, header.get("summary") or "", header.get("parentCommit"), ops)
        url = f"{self.hub.url}/datasets/{repo.repo_id}/commit/{oid}"
        return 200, {"commitUrl": url, "commitOid": oid, "success": True, "pullRequestUrl": None}, {}

    def _lfs_batch(self, payload: dict) -> tuple[int, Any, dict[str, str]]:
        objects = []
        for obj in payload.get("objects", []):
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs:
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/_lfs/{obj['oid']}"}}
            objects.append(entry)
        headers = {"Content-Type": "application/vnd.git-lfs+json"}
        return 200, {"transfer": "basic", "objects": objects}, headers

    def _resolve(self, repo: Repo, rev: str, path: str) -> tuple[int, Any, dict[str, str]]:
        commit = self._rev(repo, rev)
        entry = commit.files.get(path)
        if entry is None:
            raise HttpError(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.oid}"', "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.oid}"', "X-Linked-Size": str(len(entry.data))})
        data, status = entry.data, 200
        rng = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", self.headers.get("Range") or "")
        if rng and (rng.group(1) or rng.group(2)):
            size = len(data)
            if rng.group(1):
                start, end = int(rng.group(1)), min(int(rng.group(2) or size - 1), size - 1)
            else:
                start, end = max(size - int(rng.group(2)), 0), size - 1
            if start >= size:
                raise HttpError(416, "Range not satisfiable")
            data, status = data[start:end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return status, data, headers


def hub_env(hub: HubEmulator, home: Path, token: str | None = None) -> dict[str, str]:
    """Environment variables for a process that should talk to `hub` (set before huggingface_hub's import):
    the endpoint, no Xet, no telemetry, caches under `home`, and the token (when given) in HF_TOKEN."""
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HOME": str(home / "hf_home"),
           "HF_DATASETS_CACHE": str(home / "hf_datasets"), "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    if token is not None:
        env["HF_TOKEN"] = token
    return env
