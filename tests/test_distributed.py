"""Scale-out (issue #14) with real processes: `idea-mcts evolve` under `torchrun --nproc_per_node 2` (gloo on the
CPU) gives the one-process result and pushes it once; a rank killed mid-run or failing with an error stops the
job, named, and a relaunch resumes every shard to the identical result; another process count is refused while
the run is unfinished; the recipe (sharded evolve -> DDP SFT -> one evaluation, one report) under `accelerate
launch --config_file configs/accelerate/cpu-2proc.yaml`.

Faults are injected into one rank by tests/rank_faults/sitecustomize.py (IDEA_MCTS_RANK_FAULT=RANK:KIND:N).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from datasets import load_from_disk

from idea_mcts.config import load_config
from idea_mcts.distributed import World, place_engines
from idea_mcts.errors import UsageError
from tests.hub_emulator import HubEmulator, hub_env
from tests.runs import evolve, evolve_argv, snapshot, state

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_idea_mcts_distributed_TOKEN_0123456789"
SEEDS = "data.max_seeds=6"
"""Six demo seeds: sha256 puts demo-00, 01, 02, 05 on rank 0 and demo-03, 04 on rank 1 (interleaved)."""


def launch_env(fault: str | None = None, hub: dict[str, str] | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGING_FACE", "ACCELERATE_", "IDEA_MCTS_RANK_"))}
    path = [str(ROOT)] + ([str(ROOT / "tests" / "rank_faults")] if fault else [])
    env = {**base, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(path),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **(hub or {})}
    if fault:
        env["IDEA_MCTS_RANK_FAULT"] = fault
    return env


def torchrun(n: int, out: Path, model: Path, *extra: str, fault: str | None = None,
             hub: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`idea-mcts evolve` in `n` real processes started by torchrun (a free port on the loopback)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "idea_mcts.cli", *evolve_argv(out, model, SEEDS, *extra)]
    return subprocess.run(cmd, env=launch_env(fault, hub), capture_output=True, text=True, timeout=600, cwd=ROOT)


def rank_of(seed_id: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(seed_id.encode()).digest()[:8], "big") % n


def tree_seeds(path: Path) -> list[str]:
    return list(dict.fromkeys(json.loads(line)["seed_id"] for line in path.read_text().splitlines()))


def assert_same_result(out: Path, ref: Path) -> None:
    """The merged dataset and trees are the one-process run's, byte for byte."""
    got, want = load_from_disk(str(out / "dataset")), load_from_disk(str(ref / "dataset"))
    assert got.features == want.features
    assert got.to_list() == want.to_list()
    assert (out / "trees.jsonl").read_bytes() == (ref / "trees.jsonl").read_bytes()
    run, ref_run = (json.loads((d / "run.json").read_text()) for d in (out, ref))
    assert run["counts"] | {"requests": 0, "cached_requests": 0} == ref_run["counts"] | {"requests": 0,
                                                                                          "cached_requests": 0}
    assert run["data_quality"] == ref_run["data_quality"]
    assert state(out)["status"] == "finished" and state(out)["world_size"] == 2


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-process run."""
    out = tmp_path_factory.mktemp("one") / "out"
    assert evolve(out, tiny_model_dir, SEEDS) == 0
    return out


@pytest.fixture(scope="module")
def two(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> tuple[Path, subprocess.CompletedProcess, HubEmulator]:
    """Two processes, pushing to the loopback Hub emulator (`push_to_hub` is not part of the config's
    fingerprint: the run is the reference's)."""
    base = tmp_path_factory.mktemp("two")
    out = base / "out"
    with HubEmulator(token=TOKEN) as hub:
        r = torchrun(2, out, tiny_model_dir, "push_to_hub.repo_id=org/two", hub=hub_env(hub, base, TOKEN))
    return out, r, hub


def test_two_processes_give_the_one_process_result(two, reference):
    out, r, hub = two
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_result(out, reference)
    seeds = tree_seeds(reference / "trees.jsonl")
    assert len(seeds) == 6 and tree_seeds(out / "trees.jsonl") == seeds  # no duplicate, none missing, in order
    shards = [out / "shards" / f"rank-0{k}-of-02" for k in (0, 1)]
    got = [tree_seeds(d / "trees.jsonl") for d in shards]
    assert got == [[s for s in seeds if rank_of(s, 2) == k] for k in (0, 1)]  # by hash, not arrival order
    assert got[0] and got[1] and sorted(got[0] + got[1]) == sorted(seeds)
    assert sorted(got[0] + got[1]) != got[0] + got[1]  # interleaved: the merge really reorders
    for d in shards:  # each shard is a one-process run dir of its own
        assert state(d)["status"] == "finished" and (d / "cache" / "requests.jsonl").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["distributed"]["world_size"] == 2
    assert [s["seeds"] for s in run["distributed"]["shards"]] == [len(g) for g in got]
    assert "rank 0 merges" in r.stderr
    # pushed once, by rank 0, the merged rows
    creates = [q for q in hub.requests if q.method == "POST" and q.path.endswith("/repos/create")]
    assert len(creates) == 1 and state(out)["pushed"]["repo_id"] == "org/two"
    rows = pq.read_table(io.BytesIO(hub.files("org/two")["data/train-00000-of-00001.parquet"]))
    assert rows.column("node_id").to_pylist() == load_from_disk(str(reference / "dataset"))["node_id"]


def test_one_process_relaunch_of_a_finished_run_does_nothing(two, tiny_model_dir, capsys):
    out, r, _ = two
    assert r.returncode == 0, r.stderr[-3000:]
    before = snapshot(out)
    assert evolve(out, tiny_model_dir, SEEDS) == 0  # the outputs are the same at any process count
    assert "nothing to do" in capsys.readouterr().err
    assert snapshot(out) == before


def test_one_process_overwrite_replaces_a_sharded_run(two, reference, tiny_model_dir, tmp_path):
    src, r, _ = two
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    shutil.copytree(src, out)
    assert evolve(out, tiny_model_dir, SEEDS, "--overwrite") == 0
    assert not (out / "shards").exists()  # the shards go with the run they belonged to
    assert (out / "trees.jsonl").read_bytes() == (reference / "trees.jsonl").read_bytes()
    assert "world_size" not in state(out)


@pytest.fixture
def killed(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """Rank 1 killed with SIGKILL after its second evaluation wave is logged."""
    out = tmp_path_factory.mktemp("killed") / "out"
    return out, torchrun(2, out, tiny_model_dir, fault="1:kill:2")


def test_killed_rank_stops_the_job_and_relaunch_is_identical(killed, reference, tiny_model_dir, capsys):
    out, r = killed
    assert r.returncode != 0
    assert "exitcode  : -9" in r.stderr and "rank      : 1" in r.stderr, r.stderr[-3000:]  # torchrun names it
    assert not (out / "run.json").exists()
    rank1 = out / "shards" / "rank-01-of-02"
    assert state(rank1)["status"] == "running" and not (rank1 / "run.json").exists()
    ref_nodes = [json.loads(ln) for ln in (reference / "trees.jsonl").read_text().splitlines()]
    logged = (rank1 / "nodes.jsonl").read_text().count("\n")  # the two waves logged before the kill
    assert 0 < logged < sum(rank_of(n["seed_id"], 2) == 1 for n in ref_nodes)
    # another process count is refused while the run is unfinished: one process, and three
    before = snapshot(out)
    capsys.readouterr()
    assert evolve(out, tiny_model_dir, SEEDS) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "unfinished run of a 2-process launch" in err[0] and "--overwrite" in err[0]
    from idea_mcts.shards import ShardedEvolve

    cfg = load_config(None, [f"output_dir={out}", *evolve_argv(out, tiny_model_dir, SEEDS)[4:]])
    with pytest.raises(UsageError, match="unfinished run of a 2-process launch; relaunch it with 2 processes"):
        ShardedEvolve(cfg, World(rank=0, size=3))  # the checks every rank makes before any rank writes
    assert snapshot(out) == before
    # the same launch resumes every shard
    again = torchrun(2, out, tiny_model_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_result(out, reference)
    shards = json.loads((out / "run.json").read_text())["distributed"]["shards"]
    assert shards[1]["resumed"]
    rank1_run = json.loads((rank1 / "run.json").read_text())
    assert rank1_run["resumed"] and rank1_run["counts"]["cached_requests"] > 0  # from its own cache


def test_a_rank_that_fails_is_named_with_its_error(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    r = torchrun(2, out, tiny_model_dir, fault="1:enospc:1")
    assert r.returncode != 0
    lines = r.stderr.splitlines()
    assert any(ln.startswith("error: rank 1 of 2 failed: cannot write") and "No space left on device" in ln
               for ln in lines), r.stderr[-3000:]
    assert "No space left on device" in (out / "shards" / "rank-01.error").read_text()
    # rank 0, stopped by torchrun (SIGTERM) or finding rank 1 gone at the meeting point, says why
    stopped = [ln for ln in lines if "stopped because rank 1 failed" in ln]
    assert stopped and "No space left on device" in stopped[0]
    assert r.stderr.count("Traceback") == 1 and "ChildFailedError" in r.stderr  # torchrun's own, no rank's


def test_bad_input_on_one_rank_stops_every_rank_at_once(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    (out / "shards" / "rank-01-of-02").mkdir(parents=True)
    (out / "shards" / "rank-01-of-02" / "cache").write_text("")  # rank 1's shard cannot hold a run
    r = torchrun(2, out, tiny_model_dir)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: rank 1 of 2 failed: output_dir {out}/shards/rank-01-of-02: cache is not a "
                      "directory; move it away or use another --output_dir"], r.stderr[-3000:]
    assert "exitcode  : 2" in r.stderr
    assert sorted(p.name for p in out.rglob("*")) == ["cache", "rank-01-of-02", "shards"]  # nothing written


def test_max_calls_is_refused_under_several_processes(tiny_model_dir, tmp_path):
    from idea_mcts.shards import ShardedEvolve

    cfg = load_config(None, [f"output_dir={tmp_path / 'o'}", "max_calls=5"])
    with pytest.raises(UsageError, match="budget for one process"):
        ShardedEvolve(cfg, World(rank=1, size=2))
    assert not (tmp_path / "o").exists()


def test_engine_placement_per_rank():
    from idea_mcts.config import EngineConfig

    engines = {"gen": EngineConfig(model="m"), "pinned": EngineConfig(model="m", device="cpu"),
               "pool": EngineConfig(backend="openai", model="m", base_urls=["http://a/v1", "http://b/v1"])}
    placed = place_engines(engines, World(rank=3, size=4, local_rank=1), cuda_devices=2)
    assert placed["gen"].device == "cuda:1" and placed["pinned"].device == "cpu"
    assert placed["pool"].base_url == "http://b/v1"
    assert place_engines(engines, World(rank=2, size=4, local_rank=0), cuda_devices=0)["pool"].base_url == "http://a/v1"
    assert place_engines(engines, World(rank=2, size=4, local_rank=0), cuda_devices=0)["gen"].device == "auto"
    assert engines["gen"].device == "auto"  # the config itself is untouched (its fingerprint too)


@pytest.mark.parametrize("value", ["[]", "['']"])
def test_bad_base_urls_is_one_line(value, tmp_path, capsys):
    from idea_mcts.cli import main

    assert main(["evolve", "--output_dir", str(tmp_path / "o"), f"engines.default.base_urls={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: config key 'engines.default.base_urls' must be a non-empty list") and "\n" not in err
    assert not (tmp_path / "o").exists()


# ---- the recipe under accelerate launch: sharded evolve -> DDP SFT -> one evaluation, one report ------------
def test_recipe_on_two_processes(tiny_model_dir, reference, tmp_path):
    from tests.test_recipes import write_config

    evolve_section = {
        "engines": {"default": {"backend": "transformers", "model": str(tiny_model_dir), "max_model_len": 512}},
        "data": {"max_seeds": 6}, "search": {"iterations": 2, "expand_width": 2, "max_depth": 1},
        "roles": {r: {"max_new_tokens": 8} for r in ("evolver", "responder", "tagger")},
        "export": {"mode": "all"}, "reward": {"top_logprobs": 1000}}
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, out, None, evolve=evolve_section, ifeval_limit=2,
                       ifeval_max_gen_toks=4, per_device_train_batch_size=2)
    assert yaml.safe_load(cfg.read_text())["max_steps"] == 2
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "cpu-2proc.yaml"), str(ROOT / "recipes" / "full.py"),
           "--config", str(cfg)]
    r = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("report: ") == 1  # one report, from rank 0
    # data: the sharded evolve, the one-process result
    data = out / "data"
    assert sorted(p.name for p in (data / "shards").iterdir()) == ["rank-00-of-02", "rank-01-of-02"]
    assert load_from_disk(str(data / "dataset")).to_list() == load_from_disk(str(reference / "dataset")).to_list()
    assert (data / "trees.jsonl").read_bytes() == (reference / "trees.jsonl").read_bytes()
    # sft: DDP over 2 processes, 2 steps
    train = json.loads((out / "sft" / "train.json").read_text())
    assert train["world_size"] == 2 and train["global_step"] == 2
    assert not (out / "sft" / ".adapter.tmp").exists() and (out / "sft" / "adapter" / "adapter_config.json").is_file()
    # eval once (rank 0), one report
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2 and report["eval"]["num_prompts"] == 2
    assert {k: v["status"] for k, v in report["stages"].items()} == {
        "data": "ran", "sft": "ran", "eval_base": "ran", "eval_tuned": "ran"}
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["eval_base.json", "eval_tuned.json", "sft.json"]
    shutil.rmtree(out / "eval" / "work", ignore_errors=True)


@pytest.mark.parametrize(("flags", "expect"), [
    (["--lora_rank", "8"],
     "error: Some specified arguments are not used by the HfArgumentParser: ['--lora_rank', '8']"),
    (["--ifeval_limit", "0"], "error: config key 'ifeval_limit' must be an integer >= 1 or null, got 0"),
], ids=["parse", "settings"])
def test_recipe_bad_input_on_two_processes_is_said_once(flags, expect, tiny_model_dir, tmp_path):
    """Every rank reads the same input: rank 0 says what is wrong, once, before any rank writes (issue #32)."""
    from tests.publish_fixtures import write_run
    from tests.test_recipes import write_config

    write_run(tmp_path / "evolved", num_seeds=2)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, out, str(tmp_path / "evolved" / "dataset"))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "cpu-2proc.yaml"), str(ROOT / "recipes" / "full.py"),
           "--config", str(cfg), *flags]
    r = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode != 0
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [expect], r.stderr[-3000:]
    assert "exitcode  : 2" in r.stderr
    assert not out.exists()
