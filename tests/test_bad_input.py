"""Bad input never destroys output (issue #4): each bad input is one `error:` line, exit 2, no traceback, and
the output dir's files stay byte-identical, even with --overwrite (everything is validated, and every model
loaded, before OUT is touched). Disk full while writing: the same, and the run resumes once there is room."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import datasets
import pytest

from idea_mcts.cli import main
from idea_mcts.run_files import CACHE_FILE
from idea_mcts.store import read_jsonl
from tests.runs import assert_same_run, cache_lines, evolve, evolve_argv, snapshot, state


@pytest.fixture(scope="module")
def finished(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "out"
    assert evolve(out, tiny_model_dir) == 0
    return out


@pytest.fixture(scope="module")
def stopped(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run cut short by --max_calls: it has outputs, and re-running it without the budget goes on."""
    out = tmp_path_factory.mktemp("stopped") / "out"
    assert evolve(out, tiny_model_dir, "--max_calls", "30") == 0
    assert state(out)["status"] == "stopped"
    return out


def _file(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _corrupt_model(tmp: Path, model: Path) -> Path:
    shutil.copytree(model, tmp / "corrupt")
    (tmp / "corrupt" / "model.safetensors").write_bytes(b"not safetensors")
    return tmp / "corrupt"


def _seeds(tmp: Path, text: str) -> list[str]:
    return [f"data.seeds={_file(tmp, 'seeds.jsonl', text)}"]


def _actions(tmp: Path, text: str) -> list[str]:
    return [f"search.actions={_file(tmp, 'actions.yaml', text)}"]


CASES: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    "missing seed file": (lambda t, m: [f"data.seeds={t / 'none.jsonl'}"], "seed file not found"),
    "empty seed file": (lambda t, m: _seeds(t, ""), "empty"),
    "malformed seed file": (lambda t, m: _seeds(t, "{not json"), "cannot load seeds"),
    "wrong column": (lambda t, m: ["data.instruction_column=prompt"], "column"),
    "wrong columns in file": (lambda t, m: _seeds(t, '{"text": "hi"}'), "no column 'instruction'"),
    "blank instruction": (lambda t, m: _seeds(t, '{"instruction": " "}'), "empty"),
    "unknown action set": (lambda t, m: ["search.actions=not_a_set"], "action set"),
    "action without prompt": (lambda t, m: _actions(t, "- name: x"), "needs 'prompt' or 'method'"),
    "malformed actions file": (lambda t, m: _actions(t, "- [unclosed"), "cannot parse actions"),
    "missing task examples": (lambda t, m: [f"search.task_actions={t / 'none.jsonl'}"], "task examples"),
    "missing model dir": (lambda t, m: ["engines.default.model=/nonexistent/model"], "model"),
    "model dir without config": (lambda t, m: [f"engines.default.model={t}"], "not a readable model directory"),
    "unloadable model weights": (lambda t, m: [f"engines.default.model={_corrupt_model(t, m)}"], "cannot load"),
    "unknown engine backend": (lambda t, m: ["engines.default.backend=nope"], "backend"),
    "unknown config key": (lambda t, m: ["search.iteratons=3"], "iteratons"),
    "missing config file": (lambda t, m: ["--config", str(t / "none.yaml")], "config file not found"),
}


def run_one_line_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run the CLI in this process; it must exit 2 with exactly one `error:` line and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exit_2_one_line_outputs_intact(case, finished, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (tmp_path / "inputs").mkdir()
    make_args, needle = CASES[case]
    extra = make_args(tmp_path / "inputs", tiny_model_dir)
    before = snapshot(out)
    line = run_one_line_error([*evolve_argv(out, tiny_model_dir), *extra, "--overwrite"], capsys)
    assert needle in line
    assert snapshot(out) == before


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_output_dir_that_is_a_file(where, tiny_model_dir, tmp_path, capsys):
    path = _file(tmp_path, "notes.txt", "keep me\n")
    out = path if where == "a file" else path / "run"
    line = run_one_line_error(evolve_argv(out, tiny_model_dir, "--overwrite"), capsys)
    assert "not a directory" in line
    assert path.read_text() == "keep me\n"


def test_bad_input_in_a_real_process_prints_no_traceback(tiny_model_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "idea_mcts.cli",
                           *evolve_argv(tmp_path / "o", tiny_model_dir, "data.seeds=/nonexistent/seeds.jsonl")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [
        "error: seed file not found: /nonexistent/seeds.jsonl"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


# -- disk full -------------------------------------------------------------------------------------------------
class DiskFull:
    """Once `cache_writes` appends to the request cache have gone through (written and fsynced), writes to files
    under `root` fail with ENOSPC: `os.write` after writing half, `os.fsync` (where a full disk shows up for
    buffered writes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path, cache_writes: int = 0) -> None:
        self.root, self.left = str(root.resolve()), cache_writes
        real_write, real_fsync = os.write, os.fsync

        def target(fd: int) -> str:
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return ""

        def write(fd: int, data: bytes) -> int:
            if self.left <= 0 and target(fd).startswith(self.root):
                real_write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            path = target(fd)
            if self.left <= 0 and path.startswith(self.root):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)
            self.left -= path.endswith(CACHE_FILE)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)


def test_disk_full_from_the_start_keeps_every_file(stopped, tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    shutil.copytree(stopped, out)
    before = snapshot(out)
    DiskFull(monkeypatch, out)
    line = run_one_line_error(evolve_argv(out, tiny_model_dir), capsys)
    assert "No space left on device" in line and "resume" in line
    assert snapshot(out) == before


def test_disk_full_mid_run_rolls_back_the_write_then_resumes(finished, tiny_model_dir, tmp_path, monkeypatch,
                                                             capsys):
    out = tmp_path / "out"
    DiskFull(monkeypatch, out, cache_writes=5)
    line = run_one_line_error(evolve_argv(out, tiny_model_dir), capsys)
    assert "No space left on device" in line and str(out) in line
    data = (out / CACHE_FILE).read_bytes()
    assert cache_lines(out) == 5 and data.endswith(b"\n") and len(read_jsonl(out / CACHE_FILE)[0]) == 5
    monkeypatch.undo()  # room again
    assert evolve(out, tiny_model_dir) == 0
    # the full disk fell between the cache writes of two trees' root responses of one decode batch: on resume one
    # is answered by the cache at once and the other by the engine, so the two trees' nodes complete (and are
    # logged) in another order than the uninterrupted run's; what they hold is the same
    assert_same_run(out, finished, log_order=False)


def test_disk_full_writing_the_dataset_keeps_the_old_outputs(stopped, finished, tiny_model_dir, tmp_path,
                                                             monkeypatch, capsys):
    out = tmp_path / "out"
    shutil.copytree(stopped, out)
    before = snapshot(out)

    def save_to_disk(self: datasets.Dataset, path: str, **kw: object) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save_to_disk)
    line = run_one_line_error(evolve_argv(out, tiny_model_dir), capsys)
    assert "No space left on device" in line
    after = snapshot(out)
    grown = (CACHE_FILE, "nodes.jsonl", "state.json")  # the continued run's work is kept
    assert {k: v for k, v in after.items() if k not in grown} == {k: v for k, v in before.items() if k not in grown}
    assert after[CACHE_FILE].startswith(before[CACHE_FILE]) and after["nodes.jsonl"].startswith(before["nodes.jsonl"])
    assert not (out / ".dataset.tmp").exists() and state(out)["status"] == "running"
    monkeypatch.undo()
    assert evolve(out, tiny_model_dir) == 0
    assert_same_run(out, finished)
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
