"""Crash-safe, resumable runs (issue #4): real `evolve` processes killed at several points and resumed give the
same dataset and trees as an uninterrupted run; finished runs are not redone; another config is refused unless
--overwrite; torn log lines are cut; Ctrl-C and SIGTERM stop cleanly with the command that resumes."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from idea_mcts.cli import main
from idea_mcts.config import EngineConfig, RoleConfig
from idea_mcts.engines import EnginePool
from idea_mcts.engines.base import GenerationRequest, SamplingParams
from idea_mcts.engines.cached import CachedEngine, engine_identity
from idea_mcts.roles import RoleClient
from idea_mcts.run_files import CACHE_FILE, NODES_FILE
from idea_mcts.store import RequestCache, RunStore, read_jsonl
from tests.runs import assert_same_run, cache_lines, evolve, evolve_argv, snapshot, state
from tests.scripted import ScriptedEngine


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert evolve(out, tiny_model_dir) == 0
    return out


@dataclass
class Stopped:
    out: Path
    signal: int
    lines: int
    """Cache lines seen before the signal was sent."""
    returncode: int
    stderr: str


@pytest.fixture(scope="module")
def stopped(reference: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stopped]:
    """Real `python -m idea_mcts.cli evolve` processes, side by side, each sent a signal as soon as its request
    cache holds k lines (one line per engine call): early (in the roots' evaluation wave), middle, late."""
    total = cache_lines(reference)
    plans = {"kill-early": (signal.SIGKILL, 2), "kill-middle": (signal.SIGKILL, total // 2),
             "kill-late": (signal.SIGKILL, total - 4), "sigint": (signal.SIGINT, total // 3)}
    base = tmp_path_factory.mktemp("stopped")
    procs = {}
    for name, (sig, k) in plans.items():
        out = base / name
        err = open(base / f"{name}.stderr", "w")  # noqa: SIM115 - closed below
        # SIGINT as a terminal gives it: a suite started in the background (`make test &`) passes SIGINT on
        # ignored, and the child Python then keeps ignoring it (the full suite run so saw a SIGINT'd run finish)
        proc = subprocess.Popen([sys.executable, "-m", "idea_mcts.cli", *evolve_argv(out, tiny_model_dir)],
                                stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        procs[name] = (proc, out, sig, k, err)
    pending, seen = set(procs), {}
    deadline = time.monotonic() + 900
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            proc, out, sig, k, _ = procs[name]
            if proc.poll() is not None:
                pending.discard(name)  # ended before its signal: the test says so
            elif (n := cache_lines(out)) >= k:
                proc.send_signal(sig)
                seen[name] = n
                pending.discard(name)
        time.sleep(0.01)
    result = {}
    for name, (proc, out, sig, _, err) in procs.items():
        if name in pending:
            proc.kill()
        proc.wait(timeout=600)
        err.close()
        result[name] = Stopped(out, sig, seen.get(name, -1), proc.returncode,
                               (base / f"{name}.stderr").read_text())
    return result


@pytest.mark.parametrize("name", ["kill-early", "kill-middle", "kill-late"])
def test_sigkill_at_any_point_then_resume_is_identical(name, stopped, reference, tiny_model_dir, caplog):
    run = stopped[name]
    assert run.returncode == -signal.SIGKILL, f"not killed (k={run.lines}): {run.stderr[-2000:]}"
    assert state(run.out)["status"] == "running" and not (run.out / "run.json").exists()
    done = cache_lines(run.out)
    assert done >= run.lines
    caplog.set_level(logging.INFO, logger="idea_mcts")
    assert evolve(run.out, tiny_model_dir) == 0
    assert "resuming the run" in caplog.text
    assert_same_run(run.out, reference)
    report = json.loads((run.out / "run.json").read_text())
    ref_report = json.loads((reference / "run.json").read_text())
    assert report["resumed"] and report["counts"]["cached_requests"] >= done
    # only the unfinished work reached the engine
    assert (report["engines"]["default"]["requests"] + report["counts"]["cached_requests"]
            == ref_report["engines"]["default"]["requests"] + ref_report["counts"]["cached_requests"])


def test_sigkill_while_overlap_root_has_roots_and_rewrites_in_flight_then_resume_is_identical(tiny_model_dir,
                                                                                                 tmp_path):
    """`search.overlap_root`: a run killed while its roots' evaluations and their first rewrites are in flight
    (3 cache lines written), then resumed, ends as the uninterrupted run did (the node log's order aside: see
    `assert_same_run`)."""
    ref, out = tmp_path / "reference", tmp_path / "killed"
    assert evolve(ref, tiny_model_dir, "search.overlap_root=true") == 0
    proc = subprocess.Popen([sys.executable, "-m", "idea_mcts.cli",
                             *evolve_argv(out, tiny_model_dir, "search.overlap_root=true")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while proc.poll() is None and cache_lines(out) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"not killed: {err[-2000:]}"
    assert state(out)["status"] == "running" and cache_lines(out) < cache_lines(ref)
    assert evolve(out, tiny_model_dir, "search.overlap_root=true") == 0
    assert_same_run(out, ref, log_order=False)


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(stopped, reference):
    run = stopped["sigint"]
    assert run.returncode == 130, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    hint = [ln for ln in run.stderr.splitlines() if "resume with: " in ln]
    assert len(hint) == 1 and str(run.out) in hint[0]
    command = shlex.split(hint[0].split("resume with: ", 1)[1])
    assert command[:2] == ["idea-mcts", "evolve"]
    assert state(run.out)["status"] == "running"
    assert main(command[1:]) == 0
    assert_same_run(run.out, reference)


def test_sigterm_stops_like_ctrl_c(reference, tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    log_nodes = RunStore.log_nodes

    def log_then_terminate(self: RunStore, nodes: list) -> None:  # SIGTERM right after the first wave
        log_nodes(self, nodes)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(RunStore, "log_nodes", log_then_terminate)
    previous = signal.getsignal(signal.SIGTERM)
    assert evolve(out, tiny_model_dir, "--overwrite") == 143
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is restored
    err = capsys.readouterr().err
    hint = err.split("resume with: ", 1)[1].strip()
    assert "--overwrite" not in hint and state(out)["status"] == "running"
    assert len(read_jsonl(out / NODES_FILE)[0]) == 2  # the roots: logged before the signal
    monkeypatch.undo()
    assert main(shlex.split(hint)[1:]) == 0
    assert_same_run(out, reference)


def test_finished_run_is_not_redone(reference, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = snapshot(out)
    assert evolve(out, tiny_model_dir, "--max_calls", "5") == 0  # max_calls is not part of the config
    assert "nothing to do" in capsys.readouterr().err
    assert snapshot(out) == before


def test_other_config_refused_then_overwrite_replaces_run_and_keeps_cache(reference, tiny_model_dir, tmp_path,
                                                                          capsys):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = snapshot(out)
    assert evolve(out, tiny_model_dir, "search.seed=7") == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "another config" in errors[0] and "--overwrite" in errors[0]
    assert snapshot(out) == before

    assert evolve(out, tiny_model_dir, "search.seed=7", "--overwrite") == 0
    assert state(out)["fingerprint"] != json.loads((reference / "run.json").read_text())["config_fingerprint"]
    assert (out / CACHE_FILE).read_bytes().startswith(before[CACHE_FILE])  # the cache was kept, appended to
    trees = [json.loads(ln) for ln in (out / "trees.jsonl").read_text().splitlines()]
    assert trees != [json.loads(ln) for ln in (reference / "trees.jsonl").read_text().splitlines()]
    logged = read_jsonl(out / NODES_FILE)[0]  # the node log holds the new run only
    assert sorted(r["node_id"] for r in logged) == sorted(t["node_id"] for t in trees)
    assert {r["node_id"]: r["instruction"] for r in logged} == {t["node_id"]: t["instruction"] for t in trees}


def test_overwrite_with_only_export_changed_reissues_nothing(reference, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    assert evolve(out, tiny_model_dir, "export.mode=best_leaf", "--overwrite") == 0
    report = json.loads((out / "run.json").read_text())
    assert report["engines"]["default"]["requests"] == 0  # every request came from the cache
    assert report["counts"]["cached_requests"] > 0
    assert (out / "trees.jsonl").read_bytes() == (reference / "trees.jsonl").read_bytes()


def test_torn_last_lines_of_both_logs_are_cut_and_resume_is_identical(reference, tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    # a crash just before the end, in the middle of writing the last line of each log
    for name in ("dataset", "trees.jsonl", "run.json"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    (out / "state.json").write_text(json.dumps({**state(out), "status": "running"}))
    for log in (out / NODES_FILE, out / CACHE_FILE):
        data = log.read_bytes()
        last = data.rstrip(b"\n").rfind(b"\n") + 1
        log.write_bytes(data[: last + (len(data) - last) // 2])
    caplog.set_level(logging.WARNING, logger="idea_mcts")
    assert evolve(out, tiny_model_dir) == 0
    assert caplog.text.count("cut a torn last line") == 2
    assert_same_run(out, reference)
    assert (out / NODES_FILE).read_bytes() == (reference / NODES_FILE).read_bytes()


# -- the request cache on its own --------------------------------------------------------------------------------
def test_cache_key_covers_everything_that_determines_a_request():
    ident = engine_identity(EngineConfig(model="m"))
    base = {"prompt": [{"role": "user", "content": "hi"}], "params": {"seed": 1, "temperature": 0.7}}
    key = RequestCache.key(ident, "generate", base)
    assert key == RequestCache.key(dict(ident), "generate", json.loads(json.dumps(base)))
    variants = [
        RequestCache.key(engine_identity(EngineConfig(model="other")), "generate", base),
        RequestCache.key(engine_identity(EngineConfig(model="m", dtype="bfloat16")), "generate", base),
        RequestCache.key(ident, "logprobs", base),
        RequestCache.key(ident, "generate", {**base, "prompt": "hi"}),
        RequestCache.key(ident, "generate", {**base, "params": {"seed": 2, "temperature": 0.7}}),
        RequestCache.key(ident, "logprobs", {"prompt": "hi", "candidates": ["1"], "top_k": 20}),
        RequestCache.key(ident, "logprobs", {"prompt": "hi", "candidates": ["1"], "top_k": 5}),
    ]
    assert len({key, *variants}) == len(variants) + 1
    # how results are fetched is not what they are
    assert engine_identity(EngineConfig(model="m", max_batch_size=3, device="cpu")) == ident


def test_cached_engine_answers_repeats_from_the_cache_and_counts_them(tmp_path):
    inner, loads = ScriptedEngine(), []

    def load() -> ScriptedEngine:
        loads.append(1)
        return inner

    engine = CachedEngine(load, RequestCache(tmp_path / "requests.jsonl"), {"model": "scripted"})
    assert not loads  # loaded on the first miss only
    client = RoleClient("responder", engine, RoleConfig(), run_seed=0)
    first = client.generate(["a", "b", "a"], ["k1", "k2", "k1"])  # the repeat goes to the engine once
    assert inner.batches == [("respond", 2)] and client.stats.cached == 1 and client.stats.requests == 3
    again = CachedEngine(load, RequestCache(tmp_path / "requests.jsonl"), {"model": "scripted"})  # reloaded
    assert again.generate([GenerationRequest("b", client.params("k2")),
                           GenerationRequest("a", client.params("k1"))]) == [first[1], first[0]]
    assert len(loads) == 1 and again.stats.cached == 2 and again.stats.completion_tokens == 0
    assert again.generate([GenerationRequest("a", SamplingParams(seed=99))])[0].text == first[0].text
    assert inner.batches[-1] == ("respond", 1) and len(loads) == 2  # another seed is another request


def test_resume_that_the_cache_answers_whole_loads_no_model(reference, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    for name in ("dataset", "trees.jsonl", "run.json"):  # finished, but its outputs are gone: rebuilt by replay
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()

    def no_model(self: EnginePool, key: str) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(EnginePool, "get", no_model)
    assert evolve(out, tiny_model_dir) == 0
    assert_same_run(out, reference)
    assert json.loads((out / "run.json").read_text())["engines"]["default"]["requests"] == 0


def test_cached_engine_knows_its_backend_traits_without_importing_the_backend(tmp_path):
    """A replay answered by the cache needs `logprob_method` and `concurrent` but must not import torch or vLLM
    (180 MiB of torch in a replay that loads no model)."""
    code = """
import sys
from pathlib import Path
from idea_mcts.engines.cached import CachedEngine
from idea_mcts.store import RequestCache
out = Path(sys.argv[1])
tf = CachedEngine(lambda: None, RequestCache(out / "a.jsonl"), {"backend": "transformers", "model": "m"})
vl = CachedEngine(lambda: None, RequestCache(out / "b.jsonl"), {"backend": "vllm", "model": "m"})
print(tf.logprob_method, tf.concurrent, vl.logprob_method, vl.concurrent, "torch" in sys.modules, "vllm" in sys.modules)
"""
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["full", "False", "top_k", "True", "False", "False"]


def test_node_log_and_request_cache_write_their_shared_index_from_two_threads(tmp_path):
    """The request cache (engines' worker threads) and the node log (the search's loop, at barriers) index into
    one SQLite connection: writes from both at once must not interleave their transactions (a demo run once
    died with "cannot start a transaction within a transaction")."""
    import threading

    from idea_mcts.store import RunStore
    from idea_mcts.tree import Node

    store = RunStore(tmp_path / "out")
    store.open("fp", overwrite=False)
    assert store.cache is not None
    errors: list[BaseException] = []

    def put_results(worker: int) -> None:
        try:
            for i in range(400):
                store.cache.put("generate", {f"k{worker}-{i}": {"text": "x" * 50}})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put_results, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(400):
            store.log_nodes([Node(node_id=f"s/{i}", seed_id="s", parent_id=None, depth=0, action=None,
                                  kind="root", instruction="x")])
    finally:
        for t in threads:
            t.join()
    assert errors == []
    assert len(store.cache) == 800 and len(store.logged) == 400
    store.close()


def test_node_log_holds_what_the_evaluation_determined_not_the_later_search_statistics(tmp_path):
    """A node is logged at the first barrier after its evaluation; whether its tree has expanded it or backed up
    through it by then depends on when the answers came (a resumed run's cached answers come at once). Seen: a
    kill -9 test's resumed log had a node with visits 0 where the uninterrupted run's had visits 1 (dataset and
    trees identical). The log leaves those statistics out: the same line either way."""
    from idea_mcts.store import SEARCH_STATISTICS
    from idea_mcts.tree import Node

    def evaluated() -> Node:
        return Node(node_id="s/1", seed_id="s", parent_id="s/0", depth=1, action="a", kind="expand",
                    instruction="x", action_path=["a"], response="y", scores={"quality": 4.0}, reward=4.0)

    early, late = evaluated(), evaluated()
    late.visits, late.value_sum, late.value_max, late.on_terminal_path = 2, 8.5, 4.5, True
    late.children = ["s/2", "s/3"]
    lines = []
    for i, node in enumerate((early, late)):
        store = RunStore(tmp_path / f"out{i}")
        store.open("fp", overwrite=False)
        store.log_nodes([node])
        store.close()
        lines.append((tmp_path / f"out{i}" / NODES_FILE).read_bytes())
    assert lines[0] == lines[1]
    (record,) = read_jsonl(tmp_path / "out0" / NODES_FILE)[0]
    assert not set(SEARCH_STATISTICS) & set(record)
    assert record["reward"] == 4.0 and record["response"] == "y" and record["quality"] == 4.0
