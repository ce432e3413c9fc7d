"""Hostile input and odd states (issue #9): each is one `error:` line on stderr, exit 2, no traceback, and the
output dir byte-identical; the odd states that are not errors (a tampered cache value, a push that failed, a
model with remote code) are handled without losing anything. Each case failed before its fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from idea_mcts import publish
from idea_mcts.card import RunSummary, build_card
from idea_mcts.cli import main
from idea_mcts.config import ConfigValueError, ExportConfig, RoleConfig, SearchConfig
from idea_mcts.publish import PushError, load_output
from idea_mcts.run_files import CACHE_FILE, STATE_FILE
from idea_mcts.store import read_jsonl
from tests.runs import evolve, evolve_argv, snapshot, tiny_args

QUICK = ["data.max_seeds=1", "search.iterations=1", "search.expand_width=1", "search.max_depth=0"]
"""After `tiny_args`: the smallest complete run (one seed, one child)."""


@pytest.fixture(scope="module")
def finished(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "out"
    assert evolve(out, tiny_model_dir, *QUICK) == 0
    return out


@pytest.fixture
def out(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run, to be left byte-identical."""
    shutil.copytree(finished, tmp_path / "out")
    return tmp_path / "out"


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading any engine fails the test: the case must be refused before a model is loaded."""
    import idea_mcts.engines

    def get(self: object, key: str) -> None:
        pytest.fail("an engine was loaded before the input was checked")

    monkeypatch.setattr(idea_mcts.engines.EnginePool, "get", get)


def one_error_line(argv: list[str], capfd: pytest.CaptureFixture) -> str:
    """Run the CLI in this process: exit 2, and stderr (the whole fd) is one `error:` line, no traceback."""
    rc = main(argv)
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (rc, err)
    return lines[0]


def run_cli(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "idea_mcts.cli", *argv], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# -- 1. seed ids that collide once `/` becomes `_` ---------------------------------------------------------
def test_seed_ids_colliding_after_slash_mapping_are_refused(out, tiny_model_dir, tmp_path, capfd):
    seeds = _write(tmp_path / "s.jsonl", '{"id": "a/b", "instruction": "Say hi."}\n'
                                         '{"id": "a_b", "instruction": "Say bye."}\n')
    before = snapshot(out)
    line = one_error_line([*evolve_argv(out, tiny_model_dir), f"data.seeds={seeds}", "--overwrite"], capfd)
    assert "'a/b'" in line and "'a_b'" in line
    assert snapshot(out) == before


# -- 2. seeds that are not UTF-8 -----------------------------------------------------------------------
def test_non_utf8_seeds_evolve(out, tiny_model_dir, tmp_path, capfd):
    seeds = _write(tmp_path / "s.jsonl", b'{"id": "a", "instruction": "caf\xe9"}\n')
    before = snapshot(out)
    line = one_error_line([*evolve_argv(out, tiny_model_dir), f"data.seeds={seeds}", "--overwrite"], capfd)
    assert "not UTF-8" in line and "0xe9" in line and str(seeds) in line
    assert snapshot(out) == before


def test_non_utf8_data_score(tiny_model_dir, tmp_path, capfd):
    data = _write(tmp_path / "d.jsonl", b'{"instruction": "caf\xe9", "output": "ok"}\n')
    line = one_error_line(["score", str(data), f"engines.default.model={tiny_model_dir}"], capfd)
    assert "not UTF-8" in line and str(data) in line


# -- 3. a trailing --key without value, and an empty --output_dir --------------------------------------
def test_trailing_override_without_value_cannot_swallow_output_dir(out, tiny_model_dir, tmp_path, monkeypatch,
                                                                   capfd):
    monkeypatch.chdir(tmp_path)  # where the config's default output_dir would be
    before = snapshot(out)
    line = one_error_line([*evolve_argv(out, tiny_model_dir), "--search.task_source", "--overwrite"], capfd)
    assert "--search.task_source" in line and "no value" in line
    line = one_error_line(["evolve", "--search.task_source", "--output_dir", str(out), "--no_progress",
                           *tiny_args(tiny_model_dir)], capfd)
    assert "--search.task_source" in line
    assert snapshot(out) == before and sorted(os.listdir(tmp_path)) == ["out"]


def test_empty_output_dir_is_an_error(tiny_model_dir, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(["evolve", "--output_dir", "", "--no_progress", *tiny_args(tiny_model_dir)], capfd)
    assert "--output_dir" in line
    assert os.listdir(tmp_path) == []


# -- 4. numbers out of range, option values, in each config dataclass ----------------------------------
@pytest.mark.parametrize(("override", "allowed"), [
    ("reward.top_logprobs=-1", ">= 1"),
    ("data.max_seeds=0", ">= 1"),
    ("search.max_depth=-5", ">= 0"),
    ("roles.evolver.max_new_tokens=0", ">= 1"),
    ("roles.responder.temperature=-1", ">= 0"),
    ("roles.evolver.top_p=5", "(0, 1]"),
    ("search.exploration_constant=nan", ">= 0"),
    ("export.num_samples=-1", ">= 1"),
    ("engines.default.max_model_len=0", ">= 1"),
    ("engines.default.gpu_memory_utilization=1.5", "(0, 1]"),
    ("search.simulate_from=bset", "best, random, all"),
])
def test_out_of_range_value_names_key_and_range(override, allowed, out, tiny_model_dir, capfd):
    before = snapshot(out)
    line = one_error_line([*evolve_argv(out, tiny_model_dir), override, "--overwrite"], capfd)
    key = override.split("=")[0]
    assert f"'{key}'" in line and allowed in line
    assert snapshot(out) == before


@pytest.mark.parametrize(("build", "key"), [
    (lambda: SearchConfig(simulate_from="bset"), "simulate_from"),
    (lambda: SearchConfig(value="median"), "value"),
    (lambda: SearchConfig(expand_width=0), "expand_width"),
    (lambda: ExportConfig(mode="everything"), "mode"),
    (lambda: RoleConfig(top_p=0.0), "top_p"),
])
def test_library_configs_validate_themselves(build, key):
    with pytest.raises(ConfigValueError) as err:
        build()
    assert err.value.key == key and isinstance(err.value, ValueError)


# -- 5. OUT layout problems found before any model loads -----------------------------------------------
@pytest.mark.parametrize("case", ["under /proc", "cache is a file", "lock is a directory"])
def test_output_dir_layout_checked_before_loading(case, tiny_model_dir, tmp_path, no_engine, capfd):
    if case == "under /proc":
        out = Path("/proc/idea-mcts-test/out")
    else:
        out = tmp_path / "out"
        out.mkdir()
        if case == "cache is a file":
            _write(out / "cache", "not a directory\n")
        else:
            (out / ".lock").mkdir()
            _write(out / ".lock" / "keep", "x")
    before = snapshot(out) if out.exists() else None
    line = one_error_line(evolve_argv(out, tiny_model_dir), capfd)
    assert str(out) in line
    assert (snapshot(out) if out.exists() else None) == before


# -- 6. show on a malformed trees.jsonl -----------------------------------------------------------------
def _mid_line(data: bytes) -> int:
    """A cut point about half-way through `data` that falls inside a line (a torn write)."""
    cut = len(data) // 2
    while data[cut - 1 : cut] == b"\n":
        cut += 1
    return cut


@pytest.mark.parametrize("content", ["foreign", "binary", "partial"])
def test_show_on_malformed_trees(content, out, capfd):
    trees = (out / "trees.jsonl").read_bytes()
    _write(out / "trees.jsonl", {"foreign": b'{"foo": 1}\n', "binary": b"\x00\xff\xfe\x80 not text\n",
                                 "partial": trees[: _mid_line(trees)]}[content])
    before = snapshot(out)
    line = one_error_line(["show", str(out)], capfd)
    assert "trees.jsonl" in line and "malformed" in line
    assert snapshot(out) == before


# -- 7. score: empty data, --output_json into a missing dir, overrides after the datasets --------------
def test_score_empty_jsonl(tiny_model_dir, tmp_path, capfd):
    data = _write(tmp_path / "d.jsonl", "")
    line = one_error_line(["score", str(data), f"engines.default.model={tiny_model_dir}"], capfd)
    assert "empty" in line and str(data) in line


def test_score_output_json_checked_before_scoring(tiny_model_dir, tmp_path, no_engine, capfd):
    data = _write(tmp_path / "d.jsonl", '{"instruction": "Say hi.", "output": "Hi!"}\n')
    target = tmp_path / "missing" / "t.json"
    line = one_error_line(["score", str(data), "--output_json", str(target),
                           f"engines.default.model={tiny_model_dir}"], capfd)
    assert "--output_json" in line and "does not exist" in line
    assert sorted(os.listdir(tmp_path)) == ["d.jsonl"]


def test_score_overrides_right_after_the_datasets_are_overrides(tiny_model_dir, tmp_path, capfd):
    data = _write(tmp_path / "d.jsonl", '{"instruction": "Say hi.", "output": "Hi!"}\n')
    rc = main(["score", str(data), f"engines.default.model={tiny_model_dir}", "roles.tagger.max_new_tokens=4",
               "reward.top_logprobs=1000"])
    cap = capfd.readouterr()
    assert rc == 0, cap.err
    rows = [ln for ln in cap.out.splitlines() if ln.startswith("| ") and not ln.startswith("| data")]
    assert len(rows) == 1 and rows[0].startswith(f"| {data} | 1 |")


# -- 8. a tampered cache value of the wrong type --------------------------------------------------------
def test_tampered_cache_value_is_dropped_and_reissued(out, tiny_model_dir, caplog):
    lines = (out / CACHE_FILE).read_text().splitlines()
    first = json.loads(lines[0])
    key = next(iter(first["results"]))
    first["results"][key] = ["not", "a", "result"]
    (out / CACHE_FILE).write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    state = json.loads((out / STATE_FILE).read_text())
    (out / STATE_FILE).write_text(json.dumps({**state, "status": "running"}))  # resume: replay from the cache
    assert evolve(out, tiny_model_dir, *QUICK) == 0
    assert any("malformed" in r.getMessage() and key[:12] in r.getMessage() for r in caplog.records
               if r.levelname == "WARNING")
    records = read_jsonl(out / CACHE_FILE)[0]
    assert len(records) == len(lines) + 1 and key in records[-1]["results"]
    assert isinstance(records[-1]["results"][key], dict)
    assert json.loads((out / STATE_FILE).read_text())["status"] == "finished"


# -- 9. a configured push that failed is retried by the same command ----------------------------------
def test_failed_push_is_retried_by_rerunning_evolve(out, tiny_model_dir, monkeypatch, capfd):
    calls: list[str] = []

    def push(output_dir: str, cfg: object) -> str:
        calls.append(output_dir)
        if len(calls) == 1:
            raise PushError("push to org/x failed: 503")
        return "https://hub.example/datasets/org/x"

    monkeypatch.setattr(publish, "push_from_config", push)
    argv = [*evolve_argv(out, tiny_model_dir, *QUICK), "push_to_hub.repo_id=org/x"]
    assert main(argv) == 1  # the finished run is pushed; the push fails
    assert calls == [str(out)] and "retry" in capfd.readouterr().err
    before = snapshot(out)
    assert main(argv) == 0  # the same command pushes again
    assert len(calls) == 2 and "pushed: https://hub.example/datasets/org/x" in capfd.readouterr().err
    assert {k for k, v in snapshot(out).items() if before.get(k) != v} == {STATE_FILE}
    assert main(argv) == 0 and len(calls) == 2  # pushed: nothing to do
    assert "nothing to do" in capfd.readouterr().err
    assert main([*argv, "push_to_hub.repo_id=org/y"]) == 0 and len(calls) == 3  # another repo: pushed there


# -- 10. one line: no library bars, logs or retries ------------------------------------------------------
def test_seed_content_error_is_one_line_in_a_real_process(tiny_model_dir, tmp_path):
    seeds = _write(tmp_path / "s.jsonl", '{"instruction": "ok"}\n{"instruction":\n')
    r = run_cli(evolve_argv(tmp_path / "o", tiny_model_dir, f"data.seeds={seeds}"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: cannot load seeds"), r.stderr
    assert not (tmp_path / "o").exists()


def test_unreachable_hub_dataset_fails_fast_with_one_line(tiny_model_dir, tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf")}
    r = run_cli(evolve_argv(tmp_path / "o", tiny_model_dir, "data.seeds=someorg/no-such-seeds"), env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "someorg/no-such-seeds" in lines[0] and "cannot be reached" in lines[0], r.stderr
    r = run_cli(evolve_argv(tmp_path / "o", tiny_model_dir, "data.seeds=someorg/no-such-seeds"),
                {**env, "HF_HUB_OFFLINE": "1"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "someorg/no-such-seeds" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("offline", [False, True])
def test_unreachable_hub_model_fails_fast_with_one_line(offline, out, tiny_model_dir, tmp_path, monkeypatch,
                                                        no_engine, capfd):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    before = snapshot(out)
    line = one_error_line([*evolve_argv(out, tiny_model_dir), "engines.default.model=someorg/no-such-model",
                           "--overwrite"], capfd)
    assert "someorg/no-such-model" in line and ("HF_HUB_OFFLINE" in line if offline else "cannot be reached" in line)
    assert snapshot(out) == before
    data = _write(tmp_path / "d.jsonl", '{"instruction": "Say hi.", "output": "Hi!"}\n')
    line = one_error_line(["score", str(data), "engines.default.model=someorg/no-such-model"], capfd)
    assert "someorg/no-such-model" in line


# -- 11. --overwrite only replaces an idea-mcts run -----------------------------------------------------
def test_overwrite_refuses_a_dir_that_holds_no_run(tiny_model_dir, tmp_path, capfd):
    out = tmp_path / "mine"
    (out / "dataset").mkdir(parents=True)
    _write(out / "dataset" / "data.arrow", b"my own data")
    _write(out / "trees.jsonl", "{}\n")
    before = snapshot(out)
    line = one_error_line(evolve_argv(out, tiny_model_dir, "--overwrite"), capfd)
    assert "no idea-mcts run" in line and "state.json" in line
    assert snapshot(out) == before


# -- 12. trust_remote_code: allowed, said once, recorded --------------------------------------------------
def test_trust_remote_code_is_warned_and_recorded(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "out"
    assert evolve(out, tiny_model_dir, *QUICK, "engines.default.engine_kwargs.trust_remote_code=true") == 0
    warnings = [r.getMessage() for r in caplog.records if "trust_remote_code" in r.getMessage()]
    assert len(warnings) == 1 and str(tiny_model_dir) in warnings[0]
    assert [r.levelname for r in caplog.records if "trust_remote_code" in r.getMessage()] == ["WARNING"]
    rows, nodes, run = load_output(out)
    assert run["trust_remote_code"] == [str(tiny_model_dir)]
    card = build_card(RunSummary(run=run, nodes=nodes, rows=rows.to_list()), "org/x").text
    assert f"| evolver | default | transformers, trust_remote_code | `{tiny_model_dir}` |" in card


# -- 13. a finished run on a read-only filesystem (issue #32) --------------------------------------------------
class ReadOnly:
    """What a read-only filesystem does under `root`: access() says no writing, and opening a file there to write
    (or create) fails with EROFS; reading works."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        import errno

        root_s = str(root.resolve())
        real_access, real_open = os.access, os.open

        def under(path: object) -> bool:
            return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(root_s)

        def access(path: object, mode: int, *args: object, **kw: object) -> bool:
            return False if under(path) and mode & os.W_OK else real_access(path, mode, *args, **kw)

        def open_(path: object, flags: int, *args: object, **kw: object) -> int:
            if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
            return real_open(path, flags, *args, **kw)

        monkeypatch.setattr(os, "access", access)
        monkeypatch.setattr(os, "open", open_)


def test_finished_run_on_a_read_only_filesystem_does_nothing(out, tiny_model_dir, monkeypatch, capfd):
    before = snapshot(out)
    ReadOnly(monkeypatch, out)
    assert main(evolve_argv(out, tiny_model_dir, *QUICK)) == 0
    assert "nothing to do" in capfd.readouterr().err
    assert snapshot(out) == before


# -- 14. validate-judge checks its inputs before it scores (issue #32) ------------------------------------------
@pytest.mark.parametrize("case", ["output_json", "judge_model"])
def test_validate_judge_checks_its_inputs_before_scoring(case, tiny_model_dir, tmp_path, no_engine, capfd):
    argv = ["validate-judge", "--quick", f"engines.default.model={tiny_model_dir}"]
    if case == "output_json":  # it scored for minutes, then failed writing and saved nothing
        target = tmp_path / "missing" / "report.json"
        argv += ["--output_json", str(target)]
        expect = f"--output_json {target}: directory {target.parent} does not exist"
    else:  # it loaded the default model first
        argv += ["engines.judge.model=/nonexistent/judge", "roles.quality.engine=judge"]
        expect = "model path /nonexistent/judge is not a readable model directory (no config.json)"
    assert one_error_line(argv, capfd) == f"error: {expect}"
    assert os.listdir(tmp_path) == []
