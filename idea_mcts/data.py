"""Seed instructions: from a JSONL/JSON/CSV/Parquet file, a `save_to_disk` directory or a Hub dataset."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from idea_mcts.config import DataConfig
from idea_mcts.errors import UsageError

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Seed:
    seed_id: str
    instruction: str


def _load(cfg: DataConfig):  # noqa: ANN202 - datasets.Dataset
    import datasets

    path = Path(cfg.seeds)
    if cfg.seeds.startswith("builtin:"):
        path = Path(__file__).parent / "data" / f"{cfg.seeds.split(':', 1)[1]}_seeds.jsonl"
        if not path.is_file():
            raise UsageError(f"unknown builtin seed set {cfg.seeds!r} (known: builtin:demo)")
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            return ds[cfg.split] if isinstance(ds, datasets.DatasetDict) else ds
        if path.suffix in FILE_BUILDERS:
            if not path.is_file():
                raise UsageError(f"seed file not found: {path}")
            if path.stat().st_size == 0:
                raise UsageError(f"seed file is empty: {path}")
            return datasets.load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
        if path.exists() or cfg.seeds.startswith((".", "/", "~")):
            raise UsageError(f"cannot read seeds {path}: use .jsonl, .json, .csv, .parquet or a dataset dir")
        return datasets.load_dataset(cfg.seeds, split=cfg.split)
    except UsageError:
        raise
    except Exception as exc:  # datasets raises many types for malformed files and missing repos
        raise UsageError(f"cannot load seeds {cfg.seeds}: {str(exc).splitlines()[0][:200]}") from None


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
    for i, row in enumerate(ds):
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
    ids = [s.seed_id for s in seeds]
    if len(set(ids)) != len(ids):
        raise UsageError(f"seeds {cfg.seeds}: ids in {cfg.id_column!r} are not unique")
    if any("/" in s for s in ids):
        seeds = [Seed(s.seed_id.replace("/", "_"), s.instruction) for s in seeds]
    return seeds
