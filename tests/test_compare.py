"""recipes/compare.py end to end on the tiny random model: every arm built (the evolver and the judge scripted, the
responder and scorers the tiny model), tuned (LoRA SFT), evaluated (IFEval slice, win rate vs base), every table
and chart written; the budget checked from each arm's run.json; a relaunch skips every stage; bad input; the
paper configs parse; the idea-mcts+ cleanliness check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from datasets import load_from_disk

from idea_mcts.evaluation.ifeval import BUILTIN_DATA
from idea_mcts.recipe import run_main
from tests.test_recipes import load_script, recipe_env

ROOT = Path(__file__).resolve().parents[1]
BUDGET_ROLES = ("evolver", "responder", "quality", "complexity", "tagger", "embedder", "reward_model")
ARMS = ("seed", "evol-instruct", "idea-mcts", "idea-mcts+")
SECTIONS = ("## Budget", "## Data quality", "## IFEval", "## Judge win rate", "## Difference to the seed arm",
            "## idea-mcts+ task-specific actions")


def compare_config(path: Path, model: Path, out: Path, **over: Any) -> Path:
    scripted = path.parent / "scripted-evolver"
    if not scripted.exists():
        scripted.symlink_to(model)
    cfg: dict[str, Any] = {
        "model_name_or_path": str(model), "dtype": "float32", "use_peft": True, "lora_r": 4, "lora_alpha": 8,
        "lora_dropout": 0.0, "lora_target_modules": "all-linear", "output_dir": str(out), "use_cpu": True,
        "bf16": False, "gradient_checkpointing": False, "max_steps": 2, "per_device_train_batch_size": 4,
        "learning_rate": 0.05, "logging_steps": 1, "save_steps": 1, "report_to": "none", "seed": 3,
        "ifeval_data": "builtin", "ifeval_limit": 3, "ifeval_max_gen_toks": 12, "ifeval_batch_size": 3,
        "evolve": {"engines": {"default": {"model": str(model), "max_model_len": 512},
                               "evolver": {"model": str(scripted)}},
                   "data": {"max_seeds": 3}, "search": {"iterations": 1, "expand_width": 2, "max_depth": 1},
                   "roles": {"evolver": {"engine": "evolver", "max_new_tokens": 8},
                             "responder": {"max_new_tokens": 8}, "tagger": {"max_new_tokens": 8}},
                   "export": {"mode": "all"}, "reward": {"top_logprobs": 1000}},
        "sample_size": 4, "evol_rounds": 2, "winrate_limit": 3, "winrate_max_new_tokens": 8,
        "judge_max_new_tokens": 8, "judge": {"model": str(path.parent / "scripted-judge")}}
    cfg.update(over)
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_compare(cfg: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "tests" / "compare_scripted.py"), "--config", str(cfg), *argv],
                          env=recipe_env(), capture_output=True, text=True, timeout=900, cwd=ROOT)


def requests_in(run_dir: Path) -> int:
    usage = json.loads((run_dir / "run.json").read_text())["usage"]
    return sum(usage[r]["requests"] for r in BUDGET_ROLES if r in usage)


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("compare")
    out = base / "out"
    cfg = compare_config(base / "cmp.yaml", tiny_model_dir, out)
    first = run_compare(cfg)
    snap = (out / "compare.json").read_text() if (out / "compare.json").exists() else None
    again = run_compare(cfg)
    return {"out": out, "cfg": cfg, "first": first, "again": again, "first_json": snap}


@pytest.mark.lmeval
def test_compare_writes_every_table_and_chart(compared):
    r, out = compared["first"], compared["out"]
    assert r.returncode == 0, r.stderr[-4000:]
    md = (out / "compare.md").read_text()
    for section in SECTIONS:
        assert section in md
    for arm in ARMS:  # a row per arm in the budget, data, IFEval and win-rate tables
        assert md.count(f"\n| {arm} |") >= (4 if arm == "seed" else 5), arm
    assert "**Clean**" in md
    for name in ("budget.png", "data_quality.png", "ifeval.png", "winrate.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "compare.json").read_text())
    assert report["arms"] == list(ARMS)
    for arm in ARMS:
        assert report["ifeval"]["arms"][arm]["prompt_level_strict_acc"] is not None
        w = report["winrate"]["arms"][arm]
        assert w["n"] + w["failed"] == 3 and w["ties"] == 3  # the scripted judge always says [[A]]: both orders tie
        assert report["sft"][arm]["global_step"] == 2 and report["sft"][arm]["lora_b_norm"] > 0
    for arm in ARMS[1:]:
        d = report["vs_seed"][arm]
        assert d["ifeval"]["prompt_level_strict_acc"]["n"] == 3 and d["winrate"]["n"] == 3


@pytest.mark.lmeval
def test_compare_budget_is_equal_across_arms(compared):
    out = compared["out"]
    assert compared["first"].returncode == 0, compared["first"].stderr[-4000:]
    spent = {arm: requests_in(out / "arms" / arm / "data") for arm in ARMS[1:]}
    b = spent["idea-mcts"]
    assert b - 5 < spent["evol-instruct"] <= b  # within one node's requests (1 + 1 + 3 scorers) below B
    assert spent["idea-mcts+"] <= b  # its meta-prompt is paid from B: the search is cut at B - 1
    plus = json.loads((out / "arms" / "idea-mcts+" / "data" / "run.json").read_text())
    assert plus["baseline"]["budget"] == b and plus["status"] == "finished"
    report = json.loads((out / "compare.json").read_text())
    assert report["budget_requests"] == b
    assert {arm: report["budget"][arm]["requests"] for arm in ARMS[1:]} == spent
    table = (out / "compare.md").read_text().split("## Budget")[1].split("##")[0]
    for arm in ARMS[1:]:
        assert f"| {arm} | {spent[arm]} |" in table
    # every arm trained on the same number of rows
    sizes = {arm: len(load_from_disk(str(out / "arms" / arm / "train"))) for arm in ARMS}
    pools = report["sample"]["pool_sizes"]
    assert set(sizes.values()) == {min(4, *pools.values())}
    assert pools["seed"] == 3


@pytest.mark.lmeval
def test_compare_relaunch_skips_every_stage(compared):
    again = compared["again"]
    assert again.returncode == 0, again.stderr[-4000:]
    for arm in ARMS:
        assert f"ifeval_{arm}: skipped" in again.stderr and f"winrate_{arm}: skipped" in again.stderr
    assert again.stderr.count("sft: skipped") == 4
    for stage in ("evolve_idea-mcts", "evolve_idea-mcts+", "evolve_evol-instruct", "ifeval_base", "winrate_base"):
        assert f"{stage}: skipped" in again.stderr
    first, now = json.loads(compared["first_json"]), json.loads((compared["out"] / "compare.json").read_text())
    for key in ("budget", "data_quality", "ifeval", "winrate", "vs_seed"):
        assert first[key] == now[key]


def test_compare_bad_input_is_one_line_and_touches_nothing(tmp_path, tiny_model_dir, capsys):
    main = load_script("compare").main
    out = tmp_path / "out"
    cfg = compare_config(tmp_path / "c.yaml", tiny_model_dir, out)
    for argv, msg in ((["--arms", "seed"], "add idea-mcts"), (["--arms", "seed", "bogus"], "arms must be among"),
                      (["--task_examples", str(tmp_path / "missing.jsonl")], "task examples file not found"),
                      (["--winrate_source", str(tmp_path / "nope.jsonl")], "alpaca_eval source"),
                      (["--sample_size", "0"], "sample_size must be >= 1")):
        assert run_main(main, ["--config", str(cfg), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err
    assert not out.exists()


def test_compare_refuses_a_multi_process_launch(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = compare_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "out")
    assert run_main(load_script("compare").main, ["--config", str(cfg)]) == 2
    assert "one process" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_task_examples_from_the_evaluation_set_are_reported_as_contaminated(tmp_path, tiny_model_dir):
    from idea_mcts.compare import Comparison, parse_compare

    prompt = json.loads(BUILTIN_DATA.read_text().splitlines()[0])["prompt"]
    examples = tmp_path / "ex.jsonl"
    examples.write_text(json.dumps({"instruction": prompt}) + "\n" + json.dumps({"instruction": "Say hi."}) + "\n")
    cfg = compare_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "out")
    cmp = Comparison(*parse_compare(["--config", str(cfg), "--task_examples", str(examples)]))
    assert cmp.clean is not None and (cmp.clean["clean"], cmp.clean["in_evaluation_sets"]) == (False, 1)
    clean = Comparison(*parse_compare(["--config", str(cfg)]))
    assert clean.clean is not None and clean.clean["clean"] is True
    assert not (tmp_path / "out").exists()


PAPER = {"sft-llama2-7b.yaml": "meta-llama/Llama-2-7b-chat-hf",
         "sft-llama3-8b.yaml": "meta-llama/Meta-Llama-3-8B-Instruct",
         "sft-phi3-mini.yaml": "microsoft/Phi-3-mini-4k-instruct",
         "sft-mistral-7b.yaml": "mistralai/Mistral-7B-Instruct-v0.2",
         "compare-llama3-8b.yaml": "meta-llama/Meta-Llama-3-8B-Instruct"}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_training_configs_parse(name, monkeypatch):
    """TrlParser + the evolve section, no model loaded (bf16 is allowed as on the GPU these configs are for)."""
    from idea_mcts.compare import parse_compare

    monkeypatch.setattr("transformers.training_args.is_torch_bf16_gpu_available", lambda: True)
    script, sft, model, evolve, evals, cmp = parse_compare(["--config", str(ROOT / "configs" / "paper" / name)])
    assert model.model_name_or_path == PAPER[name]
    assert (model.use_peft, model.load_in_4bit, model.bnb_4bit_quant_type) == (True, True, "nf4")
    assert sft.bf16 and not sft.use_cpu
    cfg = evolve.evolve_config
    assert (cfg.search.iterations, cfg.search.expand_width, cfg.search.max_depth) == (3, 5, 4)
    assert cfg.export.num_samples == 1000 and cmp.sample_size == 1000
    assert (cfg.roles.quality.prompt, cfg.roles.complexity.prompt, cfg.roles.tagger.prompt) == (
        "deita", "deita", "instag")
    assert evals.ifeval_data == "hub" and evals.ifeval_limit is None
