"""The recipes (recipes/full.py, sft.py, evaluate.py) end to end on the tiny random model: data -> LoRA SFT ->
IFEval (lm-eval, the shipped prompts) base vs tuned -> report; stage skipping and re-running on a changed
setting; SFT resume after kill -9; the Hub round trip through the loopback emulator; bad input; and one real
SmolLM2 run.

Recipe runs are subprocesses (HF_HUB_OFFLINE is read at import); bad-input checks call the scripts' `main`
in process (they fail before any model loads).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

from idea_mcts.recipe import run_main
from tests.hub_emulator import HubEmulator, hub_env
from tests.publish_fixtures import write_run

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_idea_mcts_recipe_TOKEN_0123456789"


def recipe_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "ACCELERATE_"))}
    return {**base, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **(extra or {})}


def run_script(script: str, *argv: str, env: dict[str, str] | None = None, kill_at: int | str | None = None,
               timeout: int = 900) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(ROOT / script), *argv]
    if kill_at is not None:
        cmd = [sys.executable, str(ROOT / "tests" / "kill_at_step.py"), str(ROOT / script), str(kill_at), *argv]
    return subprocess.run(cmd, env=env or recipe_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def write_config(path: Path, model: Path, out: Path, dataset: str | None, **over: Any) -> Path:
    cfg: dict[str, Any] = {
        "model_name_or_path": str(model), "dtype": "float32", "use_peft": True, "lora_r": 4, "lora_alpha": 8,
        "lora_dropout": 0.0, "lora_target_modules": "all-linear", "output_dir": str(out), "use_cpu": True,
        "bf16": False, "gradient_checkpointing": False, "max_steps": 2, "per_device_train_batch_size": 4,
        "learning_rate": 0.05, "logging_steps": 1, "save_steps": 1, "report_to": "none", "seed": 3,
        "ifeval_data": "builtin", "ifeval_limit": 3, "ifeval_max_gen_toks": 12, "ifeval_batch_size": 3}
    if dataset is not None:
        cfg["dataset_name"] = dataset
    cfg.update(over)
    path.write_text(yaml.safe_dump(cfg))
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def lora_weights(adapter: Path) -> dict[str, Any]:
    return load_file(str(adapter / "adapter_model.safetensors"))


def load_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- one full run on the tiny model, shared ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("recipe")
    fixture = write_run(base / "evolved", num_seeds=4)
    out = base / "out"
    cfg = write_config(base / "tiny.yaml", tiny_model_dir, out, str(base / "evolved" / "dataset"))
    result = run_script("recipes/full.py", "--config", str(cfg))
    return {"base": base, "out": out, "cfg": cfg, "result": result, "fixture": fixture, "model": tiny_model_dir}


def test_full_pipeline_on_tiny_model(tiny_run: dict[str, Any]) -> None:
    r, out = tiny_run["result"], tiny_run["out"]
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"report: {out / 'report.md'}" in r.stdout and "| prompt-level strict |" in r.stdout
    report = json.loads((out / "report.json").read_text())
    # data: the rows of the loaded dataset, their means beside the seeds' (run.json beside the dataset dir)
    rows = tiny_run["fixture"]["rows"]
    assert report["data"]["rows"] == len(rows)
    q = [x["quality"] for x in rows if x["quality"] is not None]
    assert report["data"]["means"]["rows"]["quality"] == pytest.approx(sum(q) / len(q))
    # sft: 2 steps, a loss per step, the adapter and tokenizer saved, LoRA B trained
    train = json.loads((out / "sft" / "train.json").read_text())
    assert train["global_step"] == 2
    assert [h["step"] for h in train["log_history"] if "loss" in h] == [1, 2]
    adapter = out / "sft" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "tokenizer_config.json").is_file()
    b = [t for k, t in lora_weights(adapter).items() if "lora_B" in k]
    assert b and any(float(t.abs().sum()) > 0 for t in b)
    # eval: 3 prompts each, the tuned model (base + adapter) answers differently from the base model
    base, tuned = (json.loads((out / "eval" / f"{n}.json").read_text()) for n in ("base", "tuned"))
    assert base["num_prompts"] == tuned["num_prompts"] == 3
    assert tuned["adapter"] == str(adapter) and base["adapter"] is None
    assert [s["key"] for s in base["samples"]] == [1000, 1001, 1005]  # the first 3 shipped IFEval rows
    assert any(b["response"] != t["response"] for b, t in zip(base["samples"], tuned["samples"], strict=True))
    for m in ("prompt_level_strict_acc", "inst_level_loose_acc"):
        assert 0.0 <= tuned["metrics"][m] <= 1.0 and tuned["metrics"][f"{m}_stderr"] is not None
    # report: tables, plots, command, stage times
    md = (out / "report.md").read_text()
    assert "| prompt-level strict |" in md and "| quality |" in md and str(tiny_run["cfg"]) in md
    for png in ("data.png", "loss.png", "ifeval.png"):
        assert (out / "plots" / png).read_bytes().startswith(b"\x89PNG")
    assert {k: v["status"] for k, v in report["stages"].items()} == {
        "data": "ran", "sft": "ran", "eval_base": "ran", "eval_tuned": "ran"}
    assert report["eval"]["checks"]["lora_b_norm"] > 0


def test_assistant_turn_only_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import ModelConfig, SFTConfig

    from idea_mcts.training import build_trainer, to_prompt_completion

    rows = Dataset.from_list([{"messages": [{"role": "user", "content": "Explain why the sky is blue."},
                                            {"role": "assistant", "content": "Rate the quality of the response."}]}])
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_steps=1)
    model_args = ModelConfig(model_name_or_path=str(tiny_model_dir), use_peft=True, lora_r=2,
                             lora_target_modules=["q_proj", "v_proj"], dtype="float32")
    trainer = build_trainer(model_args, args, to_prompt_completion(rows))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    supervised = trainer.processing_class.decode(ids[labels != -100])
    assert supervised.startswith("Rate the quality of the response.")
    assert "sky" not in supervised and "user" not in supervised


def test_relaunch_skips_then_changed_setting_reruns(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    assert tiny_run["result"].returncode == 0
    out = tmp_path / "out"
    shutil.copytree(tiny_run["out"], out)
    cfg = write_config(tmp_path / "c.yaml", tiny_run["model"], out, str(tiny_run["base"] / "evolved" / "dataset"))
    adapter = out / "sft" / "adapter" / "adapter_model.safetensors"
    before = adapter.read_bytes()
    r = run_script("recipes/full.py", "--config", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("sft", "eval_base", "eval_tuned"):
        assert f"{stage}: skipped" in r.stderr
    assert adapter.read_bytes() == before
    # a changed training setting (flag over the file) re-runs sft and the tuned eval, not the base eval
    r = run_script("recipes/full.py", "--config", str(cfg), "--learning_rate", "0.02")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "eval_base: skipped" in r.stderr
    assert "sft: skipped" not in r.stderr and "eval_tuned: skipped" not in r.stderr
    assert adapter.read_bytes() != before
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["sft"]["learning_rate"] == 0.02
    assert {k: v["status"] for k, v in report["stages"].items()} == {
        "data": "ran", "sft": "ran", "eval_base": "skipped", "eval_tuned": "ran"}


def test_sft_resumes_after_kill_9(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    data = str(tiny_run["base"] / "evolved" / "dataset")
    over = {"max_steps": 4, "save_steps": 2, "lora_dropout": 0.1, "per_device_train_batch_size": 2}
    full = write_config(tmp_path / "a.yaml", tiny_run["model"], tmp_path / "uninterrupted", data, **over)
    r = run_script("recipes/sft.py", "--config", str(full))
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = write_config(tmp_path / "b.yaml", tiny_run["model"], tmp_path / "killed", data, **over)
    r = run_script("recipes/sft.py", "--config", str(cfg), kill_at=2)
    assert r.returncode == -9, r.stderr[-3000:]
    sft = tmp_path / "killed" / "sft"
    assert (sft / "checkpoints" / "checkpoint-2").is_dir() and not (sft / "adapter").exists()
    r = run_script("recipes/sft.py", "--config", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from checkpoint {sft / 'checkpoints' / 'checkpoint-2'}" in r.stderr
    train = json.loads((sft / "train.json").read_text())
    assert train["global_step"] == 4 and train["resumed_from"].endswith("checkpoint-2")
    ref, got = lora_weights(tmp_path / "uninterrupted" / "sft" / "adapter"), lora_weights(sft / "adapter")
    assert ref.keys() == got.keys()
    for k in ref:
        assert (ref[k] - got[k]).abs().max() < 1e-5, k


# ---- bad input: one line, exit 2, nothing under OUT changed ----------------------------------------------
def _bad(capsys: pytest.CaptureFixture[str], script: str, argv: list[str]) -> str:
    module = load_script(script)
    capsys.readouterr()  # drop what the test's own setup printed
    rc = run_main(module.main, argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("case", ["unknown_key", "missing_dataset", "no_messages", "load_in_4bit_no_cuda",
                                  "missing_config", "bad_ifeval_data"])
def test_bad_input(case: str, tiny_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from datasets import Dataset

    out = tiny_run["out"]
    before = snapshot(out)
    cfg = yaml.safe_load(tiny_run["cfg"].read_text())
    argv: list[str] = []
    expect = ""
    if case == "unknown_key":
        cfg["lora_rank"] = 8
        expect = "lora_rank"
    elif case == "missing_dataset":
        cfg["dataset_name"] = str(tmp_path / "nowhere")
        expect = "dataset not found"
    elif case == "no_messages":
        Dataset.from_list([{"text": "hello"}]).save_to_disk(str(tmp_path / "plain"))
        cfg["dataset_name"] = str(tmp_path / "plain")
        expect = "no `messages` column"
    elif case == "load_in_4bit_no_cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        cfg.update(load_in_4bit=True, dtype="bfloat16")
        expect = "needs a CUDA GPU"
    elif case == "missing_config":
        argv = ["--config", str(tmp_path / "none.yaml")]
        expect = "config file not found"
    elif case == "bad_ifeval_data":
        (tmp_path / "x.jsonl").write_text('{"prompt": "hi"}\n')
        cfg["ifeval_data"] = str(tmp_path / "x.jsonl")
        expect = "not an IFEval row"
    if not argv:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
        argv = ["--config", str(tmp_path / "bad.yaml")]
    err = _bad(capsys, "full", argv)
    assert expect in err
    assert snapshot(out) == before


def test_adapter_from_another_base_model(tiny_run: dict[str, Any], smollm2_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert tiny_run["result"].returncode == 0
    before = snapshot(tiny_run["out"])
    err = _bad(capsys, "evaluate", ["--config", str(tiny_run["cfg"]), "--model_name_or_path", str(smollm2_dir),
                                    "--adapter_path", str(tiny_run["out"] / "sft" / "adapter")])
    assert "does not fit base model" in err
    assert snapshot(tiny_run["out"]) == before


# ---- the shipped configs work from any directory: `evolve.config` is relative to the config file ------------
@pytest.mark.parametrize("name", ["recipes/demo.yaml", "compare-demo.yaml", "recipes/paper-qlora.yaml",
                                  "paper/sft-llama3-8b.yaml"])
def test_shipped_recipe_configs_work_from_any_directory(name, tmp_path, monkeypatch):
    from idea_mcts.compare import CompareArguments
    from idea_mcts.recipe import parse_recipe

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("transformers.training_args.is_torch_bf16_gpu_available", lambda: True)  # GPU configs
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM"):  # the configs' `env:` sets them
        monkeypatch.delenv(key, raising=False)
    extra = (CompareArguments,) if "compare" in name else ()
    args = parse_recipe(["--config", str(ROOT / "configs" / name)], extra=extra)
    cfg = args[3].evolve_config
    assert cfg is not None and cfg.search.iterations >= 1
    assert os.listdir(tmp_path) == []


# ---- Hub round trip ---------------------------------------------------------------------------------------
@pytest.mark.hub
def test_train_on_dataset_pulled_from_hub(tiny_model_dir: Path, tmp_path: Path) -> None:
    fixture = write_run(tmp_path / "evolved", num_seeds=3, variant=1)
    with HubEmulator(token=TOKEN) as hub:
        env = recipe_env(hub_env(hub, tmp_path, TOKEN))
        push = subprocess.run([sys.executable, "-m", "idea_mcts.cli", "push", str(tmp_path / "evolved"), "--repo_id",
                               "org/evolved"], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert push.returncode == 0, push.stderr[-3000:]
        shutil.rmtree(tmp_path / "evolved")  # the recipe can only get the rows from the Hub
        cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "out", "org/evolved",
                           ifeval_limit=1, ifeval_max_gen_toks=4)
        r = run_script("recipes/full.py", "--config", str(cfg), env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        missing = run_script("recipes/full.py", "--config", str(cfg), "--dataset_name", "org/does-not-exist",
                             "--output_dir", str(tmp_path / "out2"), env=env)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["kind"] == "dataset" and report["data"]["dataset_name"] == "org/evolved"
    assert report["data"]["rows"] == len(fixture["rows"])
    seeds = [n for n in fixture["nodes"] if n["depth"] == 0]  # seed means from the repo's `trees` config
    assert report["data"]["means"]["seeds"]["complexity"] == pytest.approx(
        sum(n["complexity"] for n in seeds) / len(seeds))
    assert json.loads((tmp_path / "out" / "sft" / "train.json").read_text())["global_step"] == 2
    assert missing.returncode == 2, missing.stderr[-2000:]
    err = missing.stderr.strip().splitlines()
    assert err[-1].startswith("error: dataset_name org/does-not-exist: no such Hub dataset")
    assert "Traceback" not in missing.stderr
    assert not (tmp_path / "out2").exists()


@pytest.mark.hub
def test_evolve_push_train_on_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The data stage that evolves (EvolveRun with the recipe's `evolve:` section) and the push stage."""
    from datasets import load_from_disk

    evolve = {"engines": {"default": {"backend": "transformers", "model": str(tiny_model_dir), "max_model_len": 512}},
              "data": {"max_seeds": 2}, "search": {"iterations": 1, "expand_width": 2, "max_depth": 1},
              "roles": {r: {"max_new_tokens": 8} for r in ("evolver", "responder", "tagger")},
              "export": {"mode": "all"}, "reward": {"top_logprobs": 1000}, "push_to_hub": {"repo_id": "org/evo"}}
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, out, None, evolve=evolve, ifeval_limit=1,
                       ifeval_max_gen_toks=4)
    with HubEmulator(token=TOKEN) as hub:
        env = recipe_env(hub_env(hub, tmp_path, TOKEN))
        r = run_script("recipes/full.py", "--config", str(cfg), env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        files = hub.files("org/evo")
        again = run_script("recipes/full.py", "--config", str(cfg), env=env)
    assert "data/train-00000-of-00001.parquet" in files and "README.md" in files
    run = json.loads((out / "data" / "run.json").read_text())
    assert run["status"] == "finished" and run["counts"]["seeds"] == 2
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["kind"] == "evolve"
    assert report["data"]["rows"] == len(load_from_disk(str(out / "data" / "dataset"))) == run["counts"]["rows"]
    assert report["data"]["means"]["seeds"] == run["data_quality"]["seeds"]
    assert report["push"]["url"].endswith("/datasets/org/evo")
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("data", "push", "sft", "eval_base", "eval_tuned"):
        assert f"{stage}: skipped" in again.stderr


# ---- one real run: SmolLM2-135M-Instruct SFT (a few steps) + IFEval on a slice ------------------------------
@pytest.mark.smollm2
@pytest.mark.lmeval
@pytest.mark.slow
def test_smollm2_sft_and_ifeval(smollm2_dir: Path, tmp_path: Path) -> None:
    write_run(tmp_path / "evolved", num_seeds=5)
    cfg = write_config(tmp_path / "c.yaml", smollm2_dir, tmp_path / "out", str(tmp_path / "evolved" / "dataset"),
                       max_steps=3, lora_r=8, lora_alpha=16, learning_rate=1e-3, ifeval_limit=3,
                       ifeval_max_gen_toks=32, ifeval_batch_size=3, lora_target_modules="all-linear")
    r = run_script("recipes/full.py", "--config", str(cfg), timeout=2400)  # a hang guard, not a timing
    assert r.returncode == 0, r.stderr[-4000:]
    out = tmp_path / "out"
    base, tuned = (json.loads((out / "eval" / f"{n}.json").read_text()) for n in ("base", "tuned"))
    assert base["num_prompts"] == tuned["num_prompts"] == 3
    assert all(s["response"].strip() for s in base["samples"])  # a real model answers
    assert any(b["response"] != t["response"] for b, t in zip(base["samples"], tuned["samples"], strict=True))
    b = [t for k, t in lora_weights(out / "sft" / "adapter").items() if "lora_B" in k]
    assert any(float(t.abs().sum()) > 0 for t in b)
    for res in (base, tuned):
        for m in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                  "inst_level_loose_acc"):
            assert 0.0 <= res["metrics"][m] <= 1.0
