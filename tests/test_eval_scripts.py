"""The eval/ scripts end to end on the tiny random model (transformers engines, lm-eval for IFEval, the offline
MT-Bench package): each writes OUT/eval/<bench>.json in the one schema and the table beside it, touches nothing
else in OUT, and refuses bad input in one stderr line (exit 2) before anything is written.

The scripts run in process through `run_main`, as `python eval/<bench>.py` does; the judged benchmarks run once
with the tiny model as the judge (its verdicts never parse: every judgment is counted as failed, none defaulted)
and once with a scripted judge whose verdicts are known, so that the figures can be checked.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from idea_mcts.engines.base import Engine, Generation, GenerationRequest, Messages
from idea_mcts.recipe import run_main
from tests.publish_fixtures import write_run

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"bench", "model", "adapter", "settings", "metrics", "counts", "date", "details"}


def load_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"eval_{name}", ROOT / "eval" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class ScriptedJudge(Engine):
    """A judge whose every answer is `respond(messages)`."""

    backend = "scripted"

    def __init__(self, respond: Callable[[Messages], str]) -> None:
        super().__init__("scripted-judge")
        self.respond = respond

    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        return [Generation(text=self.respond(r.prompt), completion_tokens=3) for r in requests]  # type: ignore[arg-type]


JUDGE_MARK = 7
"""`max_batch_size` of the judge engine in these configs: how `scripted_judge` tells the judge from the answers."""


def scripted_judge(monkeypatch: pytest.MonkeyPatch, module: Any, verdict: str) -> None:
    """The script's judge engine becomes a ScriptedJudge answering `verdict`; its answer engines stay real."""
    real = module.build_engine

    def build(cfg: Any) -> Engine:
        return ScriptedJudge(lambda m: f"Fine. {verdict}") if cfg.max_batch_size == JUDGE_MARK else real(cfg)

    monkeypatch.setattr(module, "build_engine", build)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """The tiny model, a trained-looking LoRA adapter on it (B != 0), an evolve run, and configs per bench."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = tmp_path_factory.mktemp("eval")
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(base / "adapter")
    write_run(base / "run", num_seeds=4)
    tiny = str(tiny_model_dir)
    judged = {"judge": {"max_new_tokens": 8, "retry_max_new_tokens": 4},
              "judge_engine": {"model": tiny, "device": "cpu", "max_batch_size": JUDGE_MARK},
              "answer_engine": {"device": "cpu"}}
    configs = {
        "ifeval": {"data": "builtin", "limit": 3, "max_gen_toks": 8, "batch_size": 3},
        "mtbench": {"limit": 2, "answer_max_new_tokens": 8, **judged},
        "alpaca": {"source": "builtin", "limit": 3, "max_new_tokens": 8, "reference_model": tiny, **judged},
        "judge": {"quick": True, "overrides": ["reward.top_logprobs=1000"]},
        "data_quality": {"dataset_dir": str(base / "run"), "bootstrap": 100, "sample_rows": 3,
                         "engine": {"device": "cpu"}},
    }
    paths = {"base": base, "adapter": base / "adapter", "run": base / "run", "model": tiny_model_dir}
    for name, cfg in configs.items():
        paths[name] = base / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({"model_name_or_path": tiny, "output_dir": str(base / "out"), **cfg}))
    return paths


def run(capsys: pytest.CaptureFixture[str], name: str, *argv: str) -> tuple[int, str, str]:
    module = load_script(name)
    capsys.readouterr()
    rc = run_main(module.main, list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def read(out: Path, bench: str) -> dict[str, Any]:
    result = json.loads((out / "eval" / f"{bench}.json").read_text())
    assert set(result) >= SCHEMA and result["bench"] == bench
    md = (out / "eval" / f"{bench}.md").read_text()
    assert md.startswith(f"# {bench}\n") and "|---|" in md and "counts: " in md
    return result


# -- each script end to end ----------------------------------------------------------------------------------
def test_ifeval_on_base_plus_adapter_leaves_the_rest_of_out_alone(setup, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "eval").mkdir(parents=True)
    (out / "eval" / "base.json").write_text('{"recipe": "keeps this"}\n')
    (out / "report.md").write_text("# a recipe's report\n")
    (out / "eval" / "ifeval.json").write_text("{}")  # the bench's own file: replaced
    before = snapshot(out)
    rc, printed, _ = run(capsys, "ifeval", "--config", str(setup["ifeval"]), "--output_dir", str(out),
                         "--adapter_path", str(setup["adapter"]))
    assert rc == 0
    result = read(out, "ifeval")
    assert result["model"] == str(setup["model"]) and result["adapter"] == str(setup["adapter"])
    assert result["settings"]["limit"] == 3 and result["counts"] == {"prompts": 3}
    assert [s["key"] for s in result["details"]["samples"]] == [1000, 1001, 1005]  # the first 3 shipped rows
    for m in ("prompt_level_strict_acc", "inst_level_loose_acc"):
        entry = result["metrics"][m]
        assert 0.0 <= entry["value"] <= 1.0 and entry["stderr"] is not None and len(entry["ci95"]) == 2
    assert result["metrics"]["prompt_level_strict_acc"]["n"] == 3
    assert "| prompt-level strict |" in printed and str(out / "eval" / "ifeval.json") in printed
    after = snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith("eval/ifeval.")} == \
        {k: v for k, v in before.items() if not k.startswith("eval/ifeval.")}


@pytest.mark.parametrize("mode", ["single", "pairwise"])
def test_mtbench_with_the_tiny_judge_counts_every_failure(mode, setup, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--config", str(setup["mtbench"]), "--output_dir", str(out), "--mode", mode]
    if mode == "pairwise":
        argv += ["--baseline_model", str(setup["model"])]
    else:
        argv += ["--adapter_path", str(setup["adapter"])]
    rc, _, _ = run(capsys, "mtbench", *argv)
    assert rc == 0
    result = read(out, f"mtbench-{mode}")
    assert result["counts"]["questions"] == 2
    assert result["counts"]["judgments"] == (4 if mode == "single" else 8)  # 2 questions x 2 turns (x 2 orders)
    assert result["counts"]["failed"] == 4  # every item unparsable: counted, never defaulted
    key = "score" if mode == "single" else "win_rate"
    assert result["metrics"][key] == {"value": None, "ci95": None, "n": 0}
    assert result["settings"]["mode"] == mode and result["settings"]["source"] == "package"
    if mode == "single":
        assert result["adapter"] == str(setup["adapter"])
        assert len(list((out / "eval" / "merged").iterdir())) == 1  # the adapter served merged, once
    else:
        assert result["settings"]["baseline"] == f"{setup['model']} (baseline)"


def test_mtbench_single_figures_with_a_scripted_judge(setup, tmp_path, capsys, monkeypatch):
    module = load_script("mtbench")
    scripted_judge(monkeypatch, module, "Rating: [[7]]")
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_main(module.main, ["--config", str(setup["mtbench"]), "--output_dir", str(out)]) == 0
    result = read(out, "mtbench-single")
    assert result["metrics"]["score"] == {"value": 7.0, "ci95": [7.0, 7.0], "n": 4}
    assert result["metrics"]["score_turn2"]["n"] == 2 and result["counts"]["failed"] == 0
    assert "| score | 7.000 | [7.000, 7.000] | 4 |" in (out / "eval" / "mtbench-single.md").read_text()


def test_alpaca_against_a_reference_model(setup, tmp_path, capsys, monkeypatch):
    """A judge that always names the first output: position bias, which the two orders cancel into ties."""
    module = load_script("alpaca")
    scripted_judge(monkeypatch, module, "[[A]]")
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_main(module.main, ["--config", str(setup["alpaca"]), "--output_dir", str(out)]) == 0
    result = read(out, "alpaca")
    assert result["counts"]["instructions"] == 3 and result["counts"]["judgments"] == 6
    assert result["counts"]["ties"] == 3 and result["counts"]["inconsistent"] == 3
    assert result["metrics"]["win_rate"]["value"] == 0.5 and result["metrics"]["consistency"]["value"] == 0.0
    assert result["settings"]["reference_generators"] == [str(setup["model"])]
    assert result["settings"]["source"] == "builtin"


def test_alpaca_with_the_tiny_judge(setup, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, _ = run(capsys, "alpaca", "--config", str(setup["alpaca"]), "--output_dir", str(out), "--limit", "2")
    assert rc == 0
    result = read(out, "alpaca")
    assert result["counts"]["failed"] == 2 and result["metrics"]["win_rate"]["value"] is None


def test_judge_validation_writes_its_checks_and_exits_3_on_a_failing_judge(setup, tmp_path, capsys):
    out = tmp_path / "out"
    rc, printed, _ = run(capsys, "judge", "--config", str(setup["judge"]), "--output_dir", str(out))
    result = read(out, "judge")
    assert rc == (0 if result["passed"] else 3)  # a random model: it fails (validate-judge's exit code)
    assert "complexity.rho_vs_tiers" in result["metrics"] and "quality.pairs_right (held_out)" in result["metrics"]
    assert result["metrics"]["complexity.rho_vs_tiers"]["threshold"] == 0.8
    assert result["settings"]["quick"] is True and result["counts"]["unparsed"] == 0
    assert "| complexity | rho_vs_tiers | tuned |" in printed


def test_data_quality_is_bench_data_qualitys_figures(setup, tmp_path, capsys):
    """eval/data_quality.py and bench/data_quality.py run the same library function: the same figures."""
    out = tmp_path / "out"
    rc, printed, _ = run(capsys, "data_quality", "--config", str(setup["data_quality"]), "--output_dir", str(out))
    assert rc == 0
    result = read(out, "data_quality")
    assert result["counts"]["seeds"] == 4 and result["counts"]["rows"] == 11
    assert result["metrics"]["complexity_diff"]["n"] == 4 and len(result["metrics"]["complexity_diff"]["ci95"]) == 2
    assert "| complexity | " in printed
    spec = importlib.util.spec_from_file_location("bench_data_quality", ROOT / "bench" / "data_quality.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (tmp_path / "judge.yaml").write_text(yaml.safe_dump({"engines": {"default": {
        "backend": "transformers", "model": str(setup["model"]), "device": "cpu"}}}))
    capsys.readouterr()
    assert bench.main([str(setup["run"]), "--config", str(tmp_path / "judge.yaml"), "--bootstrap", "100",
                       "--rows", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == result["details"]


# -- bad input: one line, exit 2, nothing written -------------------------------------------------------------
@pytest.mark.parametrize(("script", "case", "expect"), [
    ("ifeval", "missing_model", "not a readable model directory"),
    ("mtbench", "missing_model", "not a readable model directory"),
    ("alpaca", "unknown_field", "judge_modle"),
    ("ifeval", "unknown_field", "batchsize"),
    ("mtbench", "wrong_type", "'answer_max_new_tokens' must be an integer, got [1, 2]"),
    ("data_quality", "wrong_type", "bootstrap"),
    ("ifeval", "missing_adapter", "adapter_path"),
    ("judge", "missing_adapter", "adapter_path"),
    ("alpaca", "output_is_a_file", "exists and is not a directory"),
    ("data_quality", "output_is_a_file", "exists and is not a directory"),
    ("mtbench", "bad_mode", "mode must be 'single' or 'pairwise'"),
    ("alpaca", "no_reference", "set reference_model"),
    ("data_quality", "not_a_run", "not an idea-mcts evolve output directory"),
])
def test_bad_input_is_one_line_and_writes_nothing(script, case, expect, setup, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    cfg = yaml.safe_load(setup[script].read_text())
    cfg["output_dir"] = str(out)
    if case == "missing_model":
        cfg["model_name_or_path"] = str(tmp_path / "no-model")
    elif case == "unknown_field":
        cfg["judge_modle" if script == "alpaca" else "batchsize"] = 3
    elif case == "wrong_type":
        cfg["answer_max_new_tokens" if script == "mtbench" else "bootstrap"] = [1, 2] if script == "mtbench" else "many"
    elif case == "missing_adapter":
        cfg["adapter_path"] = str(tmp_path / "no-adapter")
    elif case == "output_is_a_file":
        cfg["output_dir"] = str(out / "keep.txt")
    elif case == "bad_mode":
        cfg["mode"] = "triple"
    elif case == "no_reference":
        cfg["reference_model"] = None
    elif case == "not_a_run":
        cfg["dataset_dir"] = str(tmp_path)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    before = snapshot(out)
    rc, _, err = run(capsys, script, "--config", str(tmp_path / "bad.yaml"))
    err = err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert expect in err
    assert snapshot(out) == before


def test_a_flag_of_the_wrong_type_is_one_line(setup, capsys):
    rc, _, err = run(capsys, "ifeval", "--config", str(setup["ifeval"]), "--limit", "three")
    assert rc == 2 and err.startswith("error: ") and "--limit" in err and err.count("\n") == 1


@pytest.mark.parametrize("name", ["ifeval", "mtbench-single", "mtbench-pairwise", "alpaca", "judge", "data_quality"])
def test_shipped_eval_configs_parse(name, monkeypatch):
    """Every configs/eval/*.yaml parses into its script's dataclasses and says in its header how to run it."""
    text = (ROOT / "configs" / "eval" / f"{name}.yaml").read_text()
    script = name.split("-")[0]
    assert f"python eval/{script}.py --config configs/eval/{name}.yaml" in text and "# Writes " in text
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM"):  # the configs' `env:` sets them
        monkeypatch.delenv(key, raising=False)
    module = load_script(script)
    names = {"ifeval": ("IFEvalSettings",), "judge": ("JudgeCheckArguments",),
             "data_quality": ("DataQualityArguments",), "mtbench": ("EngineArguments", "MTBenchArguments",
                                                                     "MTBenchConfig"),
             "alpaca": ("EngineArguments", "AlpacaArguments", "AlpacaEvalConfig")}[script]
    sections = tuple(getattr(module, n) for n in names)
    args = module.parse_eval_args(["--config", str(ROOT / "configs" / "eval" / f"{name}.yaml")], sections)
    assert args[0].model_name_or_path.startswith("embedded:")
    if script in ("mtbench", "alpaca"):
        assert args[1].judge_engine["model"] == "embedded:qwen2.5-coder-0.5b-instruct"


def test_a_script_runs_as_a_file(setup, tmp_path):
    """`python eval/mtbench.py ...` as a user runs it (eval/ first on sys.path, HF offline): the same result."""
    import os
    import subprocess

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HF_")}, "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "eval" / "mtbench.py"), "--config", str(setup["mtbench"]),
                           "--output_dir", str(out), "--limit", "1"], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read(out, "mtbench-single")["counts"]["judgments"] == 2
    assert f"results: {out / 'eval' / 'mtbench-single.json'}" in proc.stdout
