"""Every file under a run's OUT, written and read in one place: the names, the atomic writes, the one builder
of run.json, and the reader of a finished run.

An evolve run's OUT (`idea-mcts evolve --output_dir OUT`):

    OUT/dataset/               the training rows (`datasets` save_to_disk)          } the outputs: written at the
    OUT/trees.jsonl            every node of every tree, one tree after another     } end, each atomically
    OUT/run.json               what the run did (`RunReport`)                       }
    OUT/state.json             config fingerprint, status, times (`idea_mcts.store`)
    OUT/nodes.jsonl            the node log a resume replays
    OUT/cache/requests.jsonl   the request cache
    OUT/shards/rank-KK-of-NN/  a multi-process launch: one such run dir per rank (`idea_mcts.shards`)
    OUT/shards/rank-KK.error   the error that stopped rank K

A recipe's OUT (`recipes/*.py`, `SFTConfig.output_dir`): `data/` (the evolve run, laid out as above),
`sft/checkpoints/`, `sft/adapter/`, `sft/train.json`, `sft/run.json`, `eval/<bench>.json` and `.md`,
`stages/<stage>.json`, `report.json`, `report.md`, `plots/*.png`; compare's adds `arms/<arm>/` (each a recipe
OUT of its own: `data/`, `train/`, `eval/`), `compare.json` and `compare.md`.

This module imports nothing of the package but its errors: every module that writes or reads OUT imports it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from idea_mcts import __version__
from idea_mcts.errors import UsageError

# -- an evolve run's OUT ------------------------------------------------------------------------------------
DATASET_DIR = "dataset"
TREES_FILE = "trees.jsonl"
RUN_FILE = "run.json"
"""The run's report (`RunReport`)."""
OUTPUTS = (DATASET_DIR, TREES_FILE, RUN_FILE)
"""What a finished run leaves; written only at the end, each atomically."""
STATE_FILE = "state.json"
NODES_FILE = "nodes.jsonl"
CACHE_DIR = "cache"
CACHE_FILE = f"{CACHE_DIR}/requests.jsonl"
INDEX_NAME = ".index.sqlite"
"""The logs' index while a run has OUT open (`cache/.index.sqlite`), rebuilt from the logs at open and removed
at close."""
LOCK_FILE = ".lock"
SHARDS_DIR = "shards"
"""Under OUT of a multi-process launch: one run dir like this one per rank, `rank-KK-of-NN` (idea_mcts.shards);
removed by a one-process run's --overwrite."""
LAYOUT = {STATE_FILE: "file", NODES_FILE: "file", CACHE_DIR: "dir", CACHE_FILE: "file", LOCK_FILE: "file",
          DATASET_DIR: "dir", f".{DATASET_DIR}.tmp": "dir", f".{DATASET_DIR}.old": "dir", TREES_FILE: "file",
          RUN_FILE: "file", SHARDS_DIR: "dir", **{f"{n}.tmp": "file" for n in (STATE_FILE, TREES_FILE, RUN_FILE)}}
"""Every path a run creates under OUT (the `.tmp`/`.old` ones while it swaps a file in) and what it must be."""

# -- a recipe's OUT -----------------------------------------------------------------------------------------
EVOLVE_DIR = "data"
"""The recipe's evolve run (an evolve OUT)."""
SFT_DIR = "sft"
ADAPTER_DIR = f"{SFT_DIR}/adapter"
TRAIN_LOG = f"{SFT_DIR}/train.json"
SFT_STATE = f"{SFT_DIR}/run.json"
"""The fingerprint of the settings the checkpoints under sft/ were trained with."""
EVAL_DIR = "eval"
"""The evaluation results, `eval/<bench>.json` and `eval/<bench>.md` (`idea_mcts.evaluation.results`)."""
EVAL_WORK = f"{EVAL_DIR}/work"
MERGED_DIR = "merged"
"""A merged adapter (base + LoRA) for an engine that serves no adapter: under an arm's dir, and under
`eval/merged/<hash>` for the eval scripts."""
STAGES_DIR = "stages"
RECIPE_REPORT = "report.json"
RECIPE_REPORT_MD = "report.md"
PLOTS_DIR = "plots"
ARMS_DIR = "arms"
ARM_TRAIN_DIR = "train"
"""Under an arm's dir: its rows sampled to the compare's common size."""
COMPARE_REPORT = "compare.json"
COMPARE_REPORT_MD = "compare.md"


def eval_file(bench: str, suffix: str = ".json") -> str:
    """`eval/<bench>.json` (or another suffix), relative to OUT."""
    return f"{EVAL_DIR}/{bench}{suffix}"


# -- shards -------------------------------------------------------------------------------------------------
def shard_dir(out: Path, rank: int, size: int) -> Path:
    return out / SHARDS_DIR / f"rank-{rank:02d}-of-{size:02d}"


def shard_dirs(out: Path, size: int | None = None) -> list[Path]:
    """The shards' run dirs under OUT (of launches of `size` processes; every count when None)."""
    d = out / SHARDS_DIR
    pattern = "rank-*-of-*" if size is None else f"rank-*-of-{size:02d}"
    return [p for p in d.glob(pattern) if p.is_dir()] if d.is_dir() else []


def shard_worlds(out: Path) -> set[int]:
    """The process counts of the multi-process launches whose shards OUT holds."""
    return {int(m.group(1)) for p in shard_dirs(out) if (m := re.fullmatch(r"rank-\d+-of-(\d+)", p.name))}


def error_file(out: Path, rank: int) -> Path:
    return out / SHARDS_DIR / f"rank-{rank:02d}.error"


def error_files(out: Path) -> list[Path]:
    """The ranks' error files under OUT, in rank order."""
    d = out / SHARDS_DIR
    return sorted(d.glob("rank-*.error")) if d.is_dir() else []


# -- writing ------------------------------------------------------------------------------------------------
def now() -> str:
    """The time, UTC, to the second (ISO 8601): every timestamp a run writes."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to a temporary file, fsync it, then rename it over `path`: `path` is either the old or the
    new content, never a mix, even when the write fails (disk full) or the process dies."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # fsync and write name no file: say which one could not be written
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary dir beside `target`; when the block succeeds, it replaces `target` (the old
    one, if any, is removed only then). On failure the temporary dir is removed and `target` is untouched."""
    tmp, old = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        target.replace(old)
    tmp.replace(target)
    shutil.rmtree(old, ignore_errors=True)


def json_default(obj: Any) -> Any:
    """How `write_json` (and the stages' fingerprints) write what JSON cannot: dataclasses as dicts, objects
    with `to_dict` through it, anything else as its str."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def write_json(path: Path, obj: Any) -> None:
    """JSON written atomically (`atomic_write`), its folder made first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False, default=json_default) + "\n")


# -- run.json -----------------------------------------------------------------------------------------------
@dataclass
class TreeCounts:
    """The counts of the trees written to trees.jsonl (run.json's `counts` and its export warnings)."""

    seeds: int = 0
    """Trees written (one per seed)."""
    nodes: int = 0
    """Their nodes, roots included."""
    evolved_nodes: int = 0
    """Their nodes below the roots."""
    terminal_nodes: int = 0
    """Nodes at the search's depth limit or marked terminal."""
    scored_nodes: int = 0
    """Non-root nodes with a reward: what the export selects from."""
    max_depth: int = 0
    """The deepest node's depth."""

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        """Count one tree (its node records)."""
        self.seeds += 1
        self.nodes += len(records)
        self.evolved_nodes += len(records) - 1
        self.terminal_nodes += sum(r["terminal"] for r in records)
        self.scored_nodes += sum(r["reward"] is not None and r["depth"] > 0 for r in records)
        self.max_depth = max(self.max_depth, *(r["depth"] for r in records))


def export_warnings(rows: int, mode: str, scored_nodes: int, missing: Sequence[str], seeds: int) -> list[str]:
    """run.json's warnings about the export: no rows at all; seeds whose trees gave no row (`missing`)."""
    out = []
    if not rows:
        out.append(f"0 rows exported (export.mode={mode}) from {scored_nodes} scored non-root nodes")
    if missing:
        out.append(f"{len(missing)} of {seeds} seeds have no row (their trees kept no scored evolution the export "
                   f"selects): {', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}")
    return out


def is_export_warning(warning: str) -> bool:
    """Whether a run.json warning is one of `export_warnings` (a shard's, replaced by the merged run's)."""
    return warning.startswith("0 rows exported") or " seeds have no row " in warning


@dataclass
class RunReport:
    """run.json: what an evolve run did. Built alike by a one-process run (`EvolveRun.report`) and by the merge
    of a multi-process launch (`ShardedEvolve`); `as_dict` gives its keys in their order."""

    command: str
    """The command line that started the run."""
    status: str
    """`finished`, or `stopped early: WHY` (a budget), or the shards' statuses joined."""
    resumed: bool
    """The run (a shard of it) resumed an interrupted one."""
    started_at: str
    config: dict[str, Any]
    """The config (`EvolveConfig.to_dict`)."""
    config_yaml: str
    config_fingerprint: str
    actions: list[dict[str, Any]]
    """The actions the search used (name, prompt)."""
    estimate: dict[str, Any]
    """Upper bounds on nodes, calls and tokens (`idea_mcts.search.estimate`)."""
    trees: TreeCounts
    rows: int
    """Rows in OUT/dataset."""
    seeds_without_rows: list[str]
    """The ids of the seeds whose trees gave no row, in the seeds' order."""
    export_mode: str
    requests: int
    """The search's engine calls."""
    cached_requests: int
    """Requests the request cache answered."""
    discarded_rewrites: int
    retried_rewrites: int
    barren_expansions: int
    usage: dict[str, Any]
    """Per role: requests and tokens."""
    engines: dict[str, Any]
    trust_remote_code: list[str]
    parse_failures: dict[str, int]
    scoring_method: dict[str, Any]
    judge_check: dict[str, Any] | None
    reward_terms: dict[str, Any]
    filtered: dict[str, int]
    """Rewrites the filters dropped, by reason."""
    seed_means: dict[str, Any]
    """The seeds' score means (`data_quality.seeds`)."""
    row_means: dict[str, Any]
    """The rows' score means (`data_quality.rows`)."""
    wall_seconds: float
    search_seconds: float
    role_requests: int
    """Requests the roles' clients sent (their usage): what `throughput.requests_per_s` counts."""
    completion_tokens: int
    prompt_tokens: int
    warnings: list[str] = field(default_factory=list)
    """Warnings other than the export's (which `as_dict` adds after them)."""
    distributed: dict[str, Any] | None = None
    """A multi-process launch: its world size, sharding and shards (no key for a one-process run)."""

    def as_dict(self) -> dict[str, Any]:
        """run.json's content; `finished_at` is now."""
        c, seconds = self.trees, max(self.search_seconds, 1e-9)
        warnings = [*self.warnings, *export_warnings(self.rows, self.export_mode, c.scored_nodes,
                                                     self.seeds_without_rows, c.seeds)]
        report = {
            "version": __version__, "command": self.command, "status": self.status, "resumed": self.resumed,
            "started_at": self.started_at, "finished_at": now(),
            "config": self.config, "config_yaml": self.config_yaml, "config_fingerprint": self.config_fingerprint,
            "actions": self.actions, "estimate": self.estimate,
            "counts": {"seeds": c.seeds, "nodes": c.nodes, "evolved_nodes": c.evolved_nodes,
                       "terminal_nodes": c.terminal_nodes, "rows": self.rows,
                       "seeds_without_rows": len(self.seeds_without_rows), "max_depth": c.max_depth,
                       "requests": self.requests, "cached_requests": self.cached_requests,
                       "discarded_rewrites": self.discarded_rewrites, "retried_rewrites": self.retried_rewrites,
                       "barren_expansions": self.barren_expansions},
            "usage": self.usage, "engines": self.engines, "trust_remote_code": self.trust_remote_code,
            "parse_failures": self.parse_failures, "scoring_method": self.scoring_method, "warnings": warnings,
            "judge_check": self.judge_check, "reward_terms": self.reward_terms, "filtered": self.filtered,
            "data_quality": {"seeds": self.seed_means, "rows": self.row_means},
            "wall_seconds": round(self.wall_seconds, 2), "search_seconds": round(self.search_seconds, 2),
            "throughput": {"nodes_per_s": round(c.nodes / seconds, 3),
                           "completion_tokens_per_s": round(self.completion_tokens / seconds, 2),
                           "requests_per_s": round(self.role_requests / seconds, 2),
                           "completion_tokens": self.completion_tokens, "prompt_tokens": self.prompt_tokens},
        }
        if self.distributed is not None:
            report["distributed"] = self.distributed
        return report


def write_run_file(out: Path, report: dict[str, Any]) -> Path:
    """OUT/run.json, atomically."""
    path = out / RUN_FILE
    atomic_write(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path


# -- reading ------------------------------------------------------------------------------------------------
Record = dict[str, Any]
"""A node as one line of trees.jsonl (`Node.to_record`)."""


def group_trees(records: Iterable[Record]) -> Iterator[list[Record]]:
    """Node records grouped into trees (a tree's records are contiguous), streamed."""
    tree: list[Record] = []
    for rec in records:
        if tree and rec["seed_id"] != tree[0]["seed_id"]:
            yield tree
            tree = []
        tree.append(rec)
    if tree:
        yield tree


def iter_tree_records(path: Path) -> Iterator[list[Record]]:
    """The records of a trees.jsonl, one tree at a time, streamed."""
    def records() -> Iterator[Record]:
        with open(path, encoding="utf-8") as f:
            yield from (json.loads(line) for line in f if line.strip())

    return group_trees(records())


def read_run_file(out: Path) -> dict[str, Any]:
    """OUT/run.json; UsageError (one line) when it cannot be read or is not a JSON object."""
    path = out / RUN_FILE
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if not isinstance(run, dict):
        raise UsageError(f"{path} is not a JSON object")
    return run


class FinishedRun:
    """A finished evolve run's outputs under OUT, read back: `report` (run.json), `dataset()` (the rows),
    `nodes()` and `trees()` (trees.jsonl). Construction checks that OUT holds them: else UsageError, one line."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        missing = [n for n in OUTPUTS if not (self.out / n).exists()]
        if missing:
            why = "no such directory" if not self.out.is_dir() else f"missing {', '.join(missing)}"
            raise UsageError(f"{self.out} is not an idea-mcts evolve output directory ({why}): no finished run")
        self._report: dict[str, Any] | None = None

    @property
    def report(self) -> dict[str, Any]:
        """run.json (read once)."""
        if self._report is None:
            self._report = read_run_file(self.out)
        return self._report

    def dataset(self) -> Any:  # datasets.Dataset
        """OUT/dataset (its `train` split when saved as a DatasetDict)."""
        import datasets

        path = self.out / DATASET_DIR
        try:
            rows = datasets.load_from_disk(str(path))
        except Exception as exc:  # datasets raises FileNotFoundError, ValueError, pyarrow errors...
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"cannot load {path}: {first}") from None
        if isinstance(rows, datasets.DatasetDict):
            if "train" not in rows:
                raise UsageError(f"{path} has no train split")
            rows = rows["train"]
        return rows

    def nodes(self) -> Iterator[Record]:
        """Every node of trees.jsonl, in file order, streamed; UsageError on a line that is not JSON."""
        path = self.out / TREES_FILE
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        raise UsageError(f"{path} line {i} is not JSON") from None

    def trees(self) -> Iterator[list[Record]]:
        """The nodes one tree at a time, streamed."""
        return group_trees(self.nodes())
