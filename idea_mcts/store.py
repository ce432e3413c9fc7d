"""A run's durable state under OUT: resume after any crash, lose nothing completed.

    OUT/state.json             config fingerprint, status (running / stopped / finished), started_at
    OUT/nodes.jsonl            every evaluated node as its evaluation left it, appended as its wave completes
    OUT/cache/requests.jsonl   engine results by request key (content-addressed), one line per engine call
    OUT/.lock                  flock-ed while a run writes OUT: two runs never share an output dir

Resume is a replay: the search runs again from the start and every request whose key is in the cache is answered
from it, so the trees are rebuilt exactly and only unfinished work reaches an engine. A cache line holds the
fresh results of one whole engine call and is written with one `write`, then fsynced; a crash loses at most the
call in flight, whole, which the replay re-issues with the same batch (a batch-invariant engine then gives the
same bits). A torn last line (a crash mid-write) is cut on reload. A write that fails (disk full) is rolled back,
so the files stay as they were.

The key hashes everything that determines a result (engine identity, kind of call, prompt, sampling parameters
with the seed, candidates, top-k), like Curator's: the cache is safe to keep across configs, and a run with an
edited prompt re-issues only the requests that changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from idea_mcts import __version__
from idea_mcts.errors import UsageError
from idea_mcts.run_files import (
    CACHE_DIR,
    CACHE_FILE,
    INDEX_NAME,
    LAYOUT,
    LOCK_FILE,
    NODES_FILE,
    OUTPUTS,
    RUN_FILE,
    SHARDS_DIR,
    STATE_FILE,
    atomic_write,
    now,
)
from idea_mcts.tree import Node

logger = logging.getLogger(__name__)

SEARCH_STATISTICS = ("children", "visits", "value_sum", "value_max", "value", "on_terminal_path")
"""A node's fields that the search changes after its evaluation (expansion, backpropagation): left out of the
node log. A node is logged at the first barrier after its evaluation, and whether its tree has expanded or backed
up through it by then depends on when the answers came (a resumed run's cached answers come at once), so these
values would differ between a resumed run's log and an uninterrupted run's. trees.jsonl holds their final values."""


def check_layout(out: Path) -> None:
    """UsageError unless every path a run will create under `out` is absent or of the right kind, and files
    can be created in `out` (or, when it does not exist yet, in its nearest existing ancestor) and in
    `out/cache`. Touches nothing (a probe file is created and removed at once)."""
    for name, kind in LAYOUT.items():
        path = out / name
        if path.exists() and path.is_dir() != (kind == "dir"):
            raise UsageError(f"output_dir {out}: {name} is not a {'directory' if kind == 'dir' else 'regular file'}"
                             "; move it away or use another --output_dir")
    base = out.absolute()
    while not base.exists():
        base = base.parent
    for where in (base, out / CACHE_DIR):
        if not where.is_dir():
            continue
        try:
            fd, probe = tempfile.mkstemp(dir=where, prefix=".idea-mcts-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise UsageError(f"output_dir {out}: cannot create files in {where} ({exc.strerror})") from None


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of a JSONL log and the byte length of its complete lines. A last line without its newline
    (torn by a crash) is left out; a malformed complete line is skipped with a warning."""
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    good = data.rfind(b"\n") + 1
    records = []
    for i, line in enumerate(data[:good].splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            records.append(rec)
        elif line.strip():
            logger.warning("%s: line %d is not a JSON object: skipped", path, i)
    return records, good


class JsonlLog:
    """An append-only JSONL file: each `append` is one write, then fsync; a failed append is rolled back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def open(self) -> None:
        """Cut a torn last line (a crash mid-write) and open the file for appending. Reads only the file's tail:
        memory stays flat however long the log."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        size = good = os.fstat(self.fd).st_size
        while good > 0:  # back to the last newline
            start = max(0, good - 65536)
            nl = os.pread(self.fd, good - start, start).rfind(b"\n")
            if nl >= 0:
                good = start + nl + 1
                break
            good = start
        if size > good:
            logger.warning("%s: cut a torn last line (%d bytes)", self.path, size - good)
            os.ftruncate(self.fd, good)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        self.append_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    def append_text(self, text: str) -> None:
        """Append whole lines in one write, then fsync; a failed append is rolled back."""
        assert self.fd is not None, "open() first"
        data = memoryview(text.encode())
        size = os.fstat(self.fd).st_size
        try:
            while data:
                data = data[os.write(self.fd, data):]
            os.fsync(self.fd)
        except OSError as exc:
            with suppress(OSError):
                os.ftruncate(self.fd, size)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class LogIndex:
    """An index on disk (a SQLite table: key -> offset and length of its line) of an append-only JSONL log, so
    that memory stays flat however long the log. Built by streaming the log when opened; each `append` writes
    its lines (one write, fsync) and then indexes them in one transaction. The index is scratch: the log is the
    record, so a crash at any point (mid-transaction included) loses nothing the next open does not rebuild."""

    def __init__(self, db: sqlite3.Connection, table: str, log: JsonlLog,
                 keys_of: Callable[[dict[str, Any]], list[str] | None], lock: threading.RLock) -> None:
        self.db, self.table, self.log, self.keys_of = db, table, log, keys_of
        self.lock = lock
        """Held around every use of `db`: the indexes sharing one connection (the request cache's, written from
        engine threads, and the node log's, written from the search's loop) must not interleave transactions."""
        with lock:
            self._build()

    def _build(self) -> None:
        """Create the table and index the log as it is on disk, streaming it."""
        table, log, db = self.table, self.log, self.db
        db.execute(f"CREATE TABLE {table} (key TEXT PRIMARY KEY, offset INTEGER, length INTEGER)")
        self.db.execute("BEGIN")
        offset, rows = 0, []
        with open(self.log.path, "rb") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                keys = self.keys_of(rec) if isinstance(rec, dict) else None
                if keys is None and line.strip():
                    logger.warning("%s: the line at byte %d is not a record of this log: skipped", log.path, offset)
                rows += [(k, offset, len(line)) for k in keys or ()]
                offset += len(line)
                if len(rows) >= 10_000:
                    self._insert(rows)
                    rows = []
        self._insert(rows)
        self.db.execute("COMMIT")

    def _insert(self, rows: list[tuple[str, int, int]]) -> None:
        self.db.executemany(f"INSERT OR REPLACE INTO {self.table} VALUES (?, ?, ?)", rows)

    def append(self, lines: Sequence[tuple[str, list[str]]]) -> None:
        """Append lines (text, the keys it holds) to the log in one write, then index them in one transaction."""
        assert self.log.fd is not None
        offset = os.fstat(self.log.fd).st_size
        self.log.append_text("".join(text for text, _ in lines))
        rows = []
        for text, keys in lines:
            length = len(text.encode())
            rows += [(k, offset, length) for k in keys]
            offset += length
        with self.lock:
            self.db.execute("BEGIN")
            self._insert(rows)
            self.db.execute("COMMIT")

    def find(self, key: str) -> tuple[int, int] | None:
        with self.lock:
            return self.db.execute(f"SELECT offset, length FROM {self.table} WHERE key = ?", (key,)).fetchone()

    def __len__(self) -> int:
        with self.lock:
            return self.db.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0]

    def drop(self, key: str) -> None:
        with self.lock:
            self.db.execute(f"DELETE FROM {self.table} WHERE key = ?", (key,))


def open_index_db(path: Path) -> sqlite3.Connection:
    """A fresh index database at `path` (WAL: a commit is one append; SQLite removes its -wal/-shm files when the
    last connection closes). A file left there by a killed run is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # scratch: rebuilt from the logs on every open
    return db


MISSING: Any = object()
"""What `RequestCache.lookup` returns for a key it does not hold."""


class RequestCache:
    """Engine results by request key: the append-only log (one line per engine call, the durable record) and
    its index on disk (`LogIndex`), so memory stays flat however long the run."""

    def __init__(self, path: Path, db: sqlite3.Connection | None = None) -> None:
        self.log = JsonlLog(path)
        self.log.open()
        self._lock = threading.RLock()
        """The index database's lock (an index sharing `db` takes it too: `RunStore`'s node log)."""
        self._read_fd = os.open(path, os.O_RDONLY)
        self.db = db or open_index_db(path.with_name(INDEX_NAME))
        self.index = LogIndex(self.db, "results", self.log,
                              lambda rec: list(r) if isinstance(r := rec.get("results"), dict) else None,
                              self._lock)
        self._line: tuple[int, dict[str, Any]] | None = None  # the last line read (a batch is read in a row)

    @staticmethod
    def key(identity: dict[str, Any], kind: str, payload: dict[str, Any]) -> str:
        """sha256 of the engine identity, the kind of call and the request payload."""
        blob = json.dumps({"engine": identity, "kind": kind, **payload}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self.index.find(key) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self.index)

    def get(self, key: str) -> Any:
        result = self.lookup(key)
        if result is MISSING:
            raise KeyError(key)
        return result

    def lookup(self, key: str) -> Any:
        """The stored result of `key`, or `MISSING` (one index query, for the hot path: no `in` before `get`)."""
        with self._lock:
            where = self.index.find(key)
            if where is None:
                return MISSING
            if self._line is None or self._line[0] != where[0]:
                self._line = (where[0], json.loads(os.pread(self._read_fd, where[1], where[0]))["results"])
            return self._line[1][key]

    def drop(self, key: str) -> None:
        """Forget a result found malformed; the line stays in the log, and the re-issued request's fresh line,
        written later, wins on every reload."""
        with self._lock:
            self.index.drop(key)

    def put(self, kind: str, results: dict[str, Any]) -> dict[str, Any]:
        """Store the fresh results of one engine call durably (one line), then index them in one transaction;
        return them as a later `get` reads them back (decoded from the line written, without reading it).
        Thread-safe: the pipelined search runs engines in worker threads."""
        line = json.dumps({"kind": kind, "results": results}, ensure_ascii=False) + "\n"
        with self._lock:
            self.index.append([(line, list(results))])
        return json.loads(line)["results"]

    def close(self) -> None:
        self.log.close()
        with suppress(OSError):
            os.close(self._read_fd)


def _evaluated(node: Node) -> dict[str, Any]:
    """The node's record without its `SEARCH_STATISTICS`: what its evaluation determined."""
    record = node.to_record()
    for name in SEARCH_STATISTICS:
        del record[name]
    return record


class RunStore:
    """OUT's state, node log, request cache and lock. `check` reads only; `open` is the first write to OUT."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.nodes = JsonlLog(out / NODES_FILE)
        self.cache: RequestCache | None = None
        self.logged: LogIndex | None = None
        """Which nodes the node log holds (an index on disk)."""
        self._replaying = False
        self._lock_fd: int | None = None

    # -- reading -------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any] | None:
        path = self.out / STATE_FILE
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {path} ({exc}); pass --overwrite to start over") from None
        if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str):
            raise UsageError(f"{path} is not a run state; pass --overwrite to start over")
        return state

    def check(self, fingerprint: str, overwrite: bool = False) -> str:
        """What a run of config `fingerprint` does with OUT, touching nothing: `new`, `resume` or `finished`.
        Raises UsageError when OUT is a file, in use by another run, or holds a run of another config (unless
        `overwrite`)."""
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"output_dir {self.out} exists and is not a directory")
        lock = self.out / LOCK_FILE
        if lock.is_file():
            fd = os.open(lock, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"{self.out} is in use by another idea-mcts run") from None
            finally:
                os.close(fd)
        return self._decide(fingerprint, overwrite)

    def _decide(self, fingerprint: str, overwrite: bool) -> str:
        if overwrite and self.out.is_dir() and not any((self.out / n).exists() for n in (STATE_FILE, RUN_FILE)):
            doomed = [n for n in (*OUTPUTS, NODES_FILE) if (self.out / n).exists()]
            if doomed:
                raise UsageError(f"{self.out} holds {', '.join(doomed)} but no idea-mcts run ({STATE_FILE} or "
                                 f"{RUN_FILE}): --overwrite deletes only a run's files; use another --output_dir")
        if overwrite or not self.out.is_dir():
            return "new"
        state = self.state()
        if state is None:
            found = [n for n in (*OUTPUTS, NODES_FILE) if (self.out / n).exists()]
            if found:
                raise UsageError(f"{self.out} holds {', '.join(found)} but no {STATE_FILE}: not a resumable run; "
                                 "pass --overwrite to replace it, or use another --output_dir")
            return "new"
        if state["fingerprint"] != fingerprint:
            raise UsageError(f"{self.out} holds a run of another config ({state['fingerprint']}, this one is "
                             f"{fingerprint}): use another --output_dir, or --overwrite to replace its outputs "
                             "(the request cache is kept)")
        if state.get("status") == "finished" and all((self.out / n).exists() for n in OUTPUTS):
            return "finished"
        return "resume"

    # -- writing -------------------------------------------------------------------------------------------
    def open(self, fingerprint: str, overwrite: bool = False) -> str:
        """Lock OUT, clear an old run's outputs when `overwrite` (the cache stays), mark the run `running` and
        load the logs. Returns `new` or `resume`."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise UsageError(f"{self.out} is in use by another idea-mcts run") from None
        mode = self._decide(fingerprint, overwrite)
        if overwrite:
            for name in (*OUTPUTS, NODES_FILE, STATE_FILE, SHARDS_DIR):
                path = self.out / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        state = self.state() or {"version": __version__, "fingerprint": fingerprint, "started_at": now()}
        if state.get("status") != "running" or "pushed" in state:  # outputs to come: not pushed yet
            self._write_state({**{k: v for k, v in state.items() if k not in ("finished_at", "pushed")},
                               "status": "running"})
        self.nodes.open()
        self.cache = RequestCache(self.out / CACHE_FILE)
        self.logged = LogIndex(self.cache.db, "nodes", self.nodes,  # the cache's connection, and so its lock
                               lambda rec: [rec["node_id"]] if isinstance(rec.get("node_id"), str) else None,
                               self.cache.index.lock)
        self._replaying = len(self.logged) > 0
        return mode

    def log_nodes(self, nodes: Sequence[Node]) -> None:
        """Append the nodes of a completed wave (a replayed node already in the log is not written again)."""
        assert self.logged is not None
        # only a resume replays nodes that the log holds: a run that started with an empty log skips the check
        fresh = [n for n in nodes if self.logged.find(n.node_id) is None] if self._replaying else list(nodes)
        if fresh:
            self.logged.append([(json.dumps(_evaluated(n), ensure_ascii=False) + "\n", [n.node_id]) for n in fresh])

    def finish(self, status: str) -> None:
        """Mark the run `finished` (or `stopped`: a budget cut it short, a re-run goes on from there)."""
        state = self.state()
        assert state is not None
        self._write_state({**state, "status": status, "finished_at": now()})

    def pushed(self, target: dict[str, Any]) -> bool:
        """Whether the run's current outputs were pushed to `target` (repo_id, revision, ...) by `evolve`."""
        state = self.state() or {}
        pushed = state.get("pushed")
        return isinstance(pushed, dict) and all(pushed.get(k) == v for k, v in target.items())

    def record_push(self, target: dict[str, Any], url: str) -> None:
        """Note in the state that the outputs were pushed to `target`: a re-run then has nothing to do, while a
        push that failed is retried by re-running the same command."""
        fd = os.open(self.out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("%s is in use by another run: the push is not recorded", self.out)
            os.close(fd)
            return
        try:
            state = self.state()
            if state is not None:
                self._write_state({**state, "pushed": {**target, "url": url, "at": now()}})
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the logs and release OUT (idempotent)."""
        self.nodes.close()
        if self.cache is not None:
            self.cache.close()
            self.cache.db.close()
            for suffix in ("", "-wal", "-shm"):
                (self.out / CACHE_DIR / (INDEX_NAME + suffix)).unlink(missing_ok=True)
            self.cache, self.logged = None, None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _write_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.out / STATE_FILE, json.dumps(state, indent=2) + "\n")
