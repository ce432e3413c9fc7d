"""`idea_mcts.run_files`: the reader of a finished run, the atomic writes, and run.json built by one builder for
the one-process run and the merge of a multi-process launch."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from idea_mcts.errors import UsageError
from idea_mcts.run_files import (
    DATASET_DIR,
    NODES_FILE,
    RUN_FILE,
    STATE_FILE,
    TREES_FILE,
    FinishedRun,
    atomic_write,
    shard_dir,
)
from tests.runs import evolve


@pytest.mark.parametrize("layout", ["missing", "empty", "unfinished", "no_dataset"])
def test_the_reader_refuses_an_out_without_a_finished_run_in_one_line(tmp_path, layout):
    out = tmp_path / "out"
    if layout != "missing":
        out.mkdir()
    if layout == "unfinished":  # an interrupted run: its state and node log, no outputs yet
        (out / STATE_FILE).write_text('{"fingerprint": "x", "status": "running"}\n')
        (out / NODES_FILE).write_text("{}\n")
    if layout == "no_dataset":
        (out / TREES_FILE).write_text("")
        (out / RUN_FILE).write_text("{}\n")
    with pytest.raises(UsageError) as err:
        FinishedRun(out)
    msg = str(err.value)
    assert "\n" not in msg and str(out) in msg and "not an idea-mcts evolve output directory" in msg
    if layout == "no_dataset":
        assert f"missing {DATASET_DIR})" in msg


def test_the_reader_says_which_line_of_trees_jsonl_is_not_json(tmp_path):
    for name in (DATASET_DIR,):
        (tmp_path / name).mkdir()
    (tmp_path / RUN_FILE).write_text('{"status": "finished"}\n')
    (tmp_path / TREES_FILE).write_text('{"seed_id": "a"}\n{"seed_id": \n')
    run = FinishedRun(tmp_path)
    assert run.report == {"status": "finished"}
    with pytest.raises(UsageError, match=r"trees.jsonl line 2 is not JSON"):
        list(run.trees())


def test_atomic_write_keeps_the_old_content_and_no_partial_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    path.write_text("old\n")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError) as err:
        atomic_write(path, "new\n" * 1000)
    assert err.value.filename == str(path)  # the error names the file it could not write
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no .tmp left behind


def test_the_merge_and_a_one_process_run_write_the_same_run_json(tiny_model_dir, tmp_path):
    """A run with zero rows in one process, then the merge of a 1-process launch whose only shard is that run:
    both run.json carry the same keys in the same order (the merge adds `distributed`), the same counts and the
    same zero-rows warning, once."""
    from idea_mcts.config import load_config
    from idea_mcts.data import load_seeds
    from idea_mcts.distributed import World
    from idea_mcts.shards import ShardedEvolve

    single_out = tmp_path / "single"
    assert evolve(single_out, tiny_model_dir, "search.iterations=0", "export.mode=paper") == 0
    single = json.loads((single_out / RUN_FILE).read_text())
    assert single["counts"]["rows"] == 0

    merged_out = tmp_path / "merged"
    shutil.copytree(single_out, shard_dir(merged_out, 0, 1))
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(single["config_yaml"])
    cfg = load_config(cfg_file, [f"output_dir={merged_out}"])
    merge = ShardedEvolve.__new__(ShardedEvolve)  # the merge alone: no process group, no shard to run
    merge.cfg, merge.world, merge.command, merge.out = cfg, World(0, 1), single["command"], merged_out
    merge.seeds, merge.fingerprint, merge.estimate = load_seeds(cfg.data), single["config_fingerprint"], \
        single["estimate"]
    merge._merge([single], single["started_at"], single["wall_seconds"])
    merged = json.loads((merged_out / RUN_FILE).read_text())

    assert list(merged) == [*single, "distributed"]
    assert merged["counts"] == single["counts"] and merged["data_quality"] == single["data_quality"]
    assert merged["warnings"] == single["warnings"]
    assert sum(w.startswith("0 rows exported") for w in merged["warnings"]) == 1  # the shard's replaced, not added
    assert (merged_out / TREES_FILE).read_bytes() == (single_out / TREES_FILE).read_bytes()
    assert len(FinishedRun(merged_out).dataset()) == 0 and Path(merged_out / DATASET_DIR).is_dir()
