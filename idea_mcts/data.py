"""Seed instructions: from a JSONL/JSON/CSV/Parquet file, a `save_to_disk` directory or a Hub dataset."""

from __future__ import annotations

import codecs
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idea_mcts.config import DataConfig
from idea_mcts.errors import UsageError
from idea_mcts.hub import check_reachable

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TEXT_SUFFIXES = (".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class Seed:
    seed_id: str
    instruction: str


def shard_of(seed_id: str, num_shards: int) -> int:
    """The shard (0 .. num_shards-1) a seed belongs to under a multi-process launch: a stable hash of its id
    (sha256, the same in every process, run and machine; not Python's salted `hash`, not arrival order)."""
    return int.from_bytes(hashlib.sha256(seed_id.encode()).digest()[:8], "big") % num_shards


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bars and no log lines from datasets and huggingface_hub while loading: a problem is the
    caller's one-line error, not the libraries' bars, ERROR logs and retry warnings."""
    import datasets
    import huggingface_hub.utils as hf_utils
    from datasets.utils import logging as ds_logging
    from huggingface_hub.utils import logging as hf_logging

    levels = ds_logging.get_verbosity(), hf_logging.get_verbosity()
    bars = datasets.utils.are_progress_bars_disabled(), hf_utils.are_progress_bars_disabled()
    ds_logging.set_verbosity(logging.CRITICAL + 1)
    hf_logging.set_verbosity(logging.CRITICAL + 1)
    datasets.disable_progress_bars()
    hf_utils.disable_progress_bars()
    try:
        yield
    finally:
        ds_logging.set_verbosity(levels[0])
        hf_logging.set_verbosity(levels[1])
        if not bars[0]:
            datasets.enable_progress_bars()
        if not bars[1]:
            hf_utils.enable_progress_bars()


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def check_utf8(path: Path, what: str) -> None:
    """A text data file must be UTF-8: datasets would fail on the first bad byte only while rows are read."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as f:
        while True:
            chunk = f.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                pos = offset + exc.start
                raise UsageError(f"{what} {path} is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset "
                                 f"{pos} (re-encode it as UTF-8)") from None
            if not chunk:
                return
            offset += len(chunk)


def open_dataset(spec: str, split: str, what: str, file_what: str):  # noqa: ANN201 - datasets.Dataset
    """A dataset from a `save_to_disk` directory, a JSONL/JSON/CSV/Parquet file or a Hub dataset name, loaded
    quietly; any problem is a one-line UsageError naming `what` (`seeds`), or `file_what` (`seed file`)."""
    import datasets

    path = Path(spec)
    with quiet_datasets():
        try:
            if path.is_dir():
                ds = datasets.load_from_disk(str(path))
                if isinstance(ds, datasets.DatasetDict):
                    if split not in ds:
                        raise UsageError(f"{what} {path} has no split {split!r} (splits: {', '.join(ds)})")
                    ds = ds[split]
                return ds
            if path.suffix in FILE_BUILDERS:
                if not path.is_file():
                    raise UsageError(f"{file_what} not found: {path}")
                if path.stat().st_size == 0:
                    raise UsageError(f"{file_what} is empty: {path}")
                if path.suffix in TEXT_SUFFIXES:
                    check_utf8(path, file_what)
                return datasets.load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
            if path.exists() or spec.startswith((".", "/", "~")):
                raise UsageError(f"cannot read {what} {path}: use .jsonl, .json, .csv, .parquet or a dataset dir")
            check_reachable(spec, "dataset", what)
            return datasets.load_dataset(spec, split=split)
        except UsageError:
            raise
        except Exception as exc:  # datasets raises many types for malformed files and missing repos
            raise UsageError(f"cannot load {what} {spec}: {_one_line(exc)}") from None


def _rows(ds: Any, what: str) -> Iterator[dict[str, Any]]:
    """The rows of `ds`; a value that cannot be decoded while reading is a one-line UsageError."""
    it = iter(ds)
    i = 0
    while True:
        try:
            with quiet_datasets():
                row = next(it)
        except StopIteration:
            return
        except Exception as exc:  # pyarrow decoding errors surface only while rows are read
            raise UsageError(f"{what}: cannot read row {i}: {_one_line(exc)}") from None
        yield row
        i += 1


def _load(cfg: DataConfig):  # noqa: ANN202 - datasets.Dataset
    spec = cfg.seeds
    if spec.startswith("builtin:"):
        path = Path(__file__).parent / "data" / f"{spec.split(':', 1)[1]}_seeds.jsonl"
        if not path.is_file():
            raise UsageError(f"unknown builtin seed set {spec!r} (known: builtin:demo)")
        spec = str(path)
    return open_dataset(spec, cfg.split, "seeds", "seed file")


def load_seeds(cfg: DataConfig) -> list[Seed]:
    """Seeds with ids; the input column (Alpaca style) is appended to the instruction when present."""
    ds = _load(cfg)
    cols = ds.column_names
    if cfg.instruction_column not in cols:
        raise UsageError(f"seeds {cfg.seeds} have no column {cfg.instruction_column!r} (columns: "
                         f"{', '.join(cols)}); set data.instruction_column")
    has_input = cfg.input_column is not None and cfg.input_column in cols
    has_id = cfg.id_column is not None and cfg.id_column in cols
    seeds: list[Seed] = []
    for i, row in enumerate(_rows(ds, f"seeds {cfg.seeds}")):
        text = row[cfg.instruction_column]
        if not isinstance(text, str) or not text.strip():
            raise UsageError(f"seeds {cfg.seeds}: row {i} has an empty or non-text {cfg.instruction_column!r}")
        extra = row[cfg.input_column] if has_input else None
        if isinstance(extra, str) and extra.strip():
            text = f"{text.strip()}\n\n{extra.strip()}"
        seeds.append(Seed(str(row[cfg.id_column]) if has_id else str(i), text.strip()))
        if cfg.max_seeds is not None and len(seeds) >= cfg.max_seeds:
            break
    if not seeds:
        raise UsageError(f"seeds {cfg.seeds} hold no rows")
    return _unique_ids(seeds, f"seeds {cfg.seeds}: ids in {cfg.id_column!r}")


def _unique_ids(seeds: list[Seed], where: str) -> list[Seed]:
    """Seeds with the ids the trees use (`/` separates node ids, so it becomes `_`), which must be unique and
    non-empty: two seeds sharing a tree would silently merge."""
    used: dict[str, str] = {}
    out = []
    for s in seeds:
        node_id = s.seed_id.replace("/", "_")
        if not node_id.strip():
            raise UsageError(f"{where}: a seed has an empty id")
        if node_id in used:
            first = used[node_id]
            same = first == s.seed_id
            raise UsageError(f"{where} are not unique: {first!r} " + ("appears twice" if same else
                             f"and {s.seed_id!r} both become the tree id {node_id!r} ('/' is replaced by '_')"))
        used[node_id] = s.seed_id
        out.append(Seed(node_id, s.instruction))
    return out


def load_pairs(path: str) -> tuple[list[str], list[str | None]]:
    """(instruction, response) pairs to score: a run's output dir (its `dataset/`), a `save_to_disk` dir or a
    JSONL/JSON/CSV/Parquet file; rows in TRL `messages` form or with `instruction`/`prompt` (+ `input`) and
    `output`/`response` columns. A missing response is None (the caller generates one)."""
    spec = str(Path(path) / "dataset") if (Path(path) / "dataset").is_dir() else path
    if not Path(spec).exists():
        raise UsageError(f"no such dataset: {path}")
    ds = open_dataset(spec, "train", "dataset", "dataset file")
    instructions: list[str] = []
    responses: list[str | None] = []
    for row in _rows(ds, path):
        if "messages" in row and row["messages"]:
            user = next((m["content"] for m in row["messages"] if m["role"] == "user"), None)
            bot = next((m["content"] for m in row["messages"] if m["role"] == "assistant"), None)
        else:
            user = row.get("instruction") or row.get("prompt")
            bot = row.get("output") or row.get("response")
            if user and row.get("input"):
                user = f"{user}\n\n{row['input']}"
        if not isinstance(user, str):
            raise UsageError(f"{path}: rows need `messages` or an `instruction`/`prompt` column")
        instructions.append(user)
        responses.append(bot if isinstance(bot, str) else None)
    if not instructions:
        raise UsageError(f"{path} holds no rows")
    return instructions, responses
