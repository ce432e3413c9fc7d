"""The recipes keep the project's contract (issue #32): bad input is one `error:` line on stderr and exit 2, found at
launch before anything under OUT is written (OUT stays byte-identical, its checkpoints too); nothing trained is
lost (checkpoints of other settings are set aside, an incomplete checkpoint is skipped, a run that reached its
last step is not trained further); Ctrl-C and SIGTERM exit 130 / 143 with the command that resumes; a full disk
is one line. Each case failed before its fix.

Bad input runs the scripts' `main` in this process (it fails before any model loads); training runs are
subprocesses on the tiny random model.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from idea_mcts.recipe import run_main
from tests.runs import snapshot
from tests.test_bad_input import DiskFull
from tests.test_recipes import load_script, lora_weights, run_script, write_config

RESUME = {"max_steps": 3, "save_steps": 1, "per_device_train_batch_size": 2}
"""SFT settings of the resume tests: 3 steps inside the first epoch (11 rows, batches of 2), a checkpoint per step."""


def conversation(*roles: str) -> list[dict[str, str]]:
    return [{"role": r, "content": f"{r} says something."} for r in roles]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.publish_fixtures import write_run

    base = tmp_path_factory.mktemp("data")
    write_run(base / "evolved", num_seeds=4)
    return base / "evolved" / "dataset"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, data: Path) -> dict[str, Any]:
    """A finished SFT run (recipes/sft.py): OUT/sft/{checkpoints,adapter,train.json,run.json}, stages/sft.json."""
    base = tmp_path_factory.mktemp("trained")
    cfg = write_config(base / "c.yaml", tiny_model_dir, base / "out", str(data))
    r = run_script("recipes/sft.py", "--config", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (base / "out" / "sft" / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    return {"out": base / "out", "cfg": cfg}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, data: Path) -> Path:
    """The adapter of an uninterrupted run with the RESUME settings."""
    base = tmp_path_factory.mktemp("reference")
    cfg = write_config(base / "c.yaml", tiny_model_dir, base / "out", str(data), **RESUME)
    r = run_script("recipes/sft.py", "--config", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    return base / "out" / "sft" / "adapter"


@pytest.fixture
def out(trained: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the finished run, to be left byte-identical."""
    shutil.copytree(trained["out"], tmp_path / "out")
    return tmp_path / "out"


def config(tmp_path: Path, trained: dict[str, Any], out: Path, **over: Any) -> Path:
    """The finished run's config on `out`, with `over` on top (a key set to None is removed)."""
    cfg = yaml.safe_load(trained["cfg"].read_text())
    cfg["output_dir"] = str(out)
    cfg.update(over)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if v is not None}))
    return path


def one_error_line(capfd: pytest.CaptureFixture[str], script: str, argv: list[str]) -> str:
    """Run the script's `main` in this process: exit 2, stderr (the whole fd) one `error:` line, no traceback."""
    module = load_script(script)
    capfd.readouterr()  # what the test's setup printed
    rc = run_main(module.main, argv)
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (rc, err)
    return lines[0]


def assert_same_adapter(got: Path, want: Path) -> None:
    a, b = lora_weights(got), lora_weights(want)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-5, k


# ---- 1. a relaunch with bad input deletes nothing ----------------------------------------------------------------
@pytest.mark.parametrize("state", ["finished", "interrupted"])
@pytest.mark.parametrize("bad", ["dataset", "learning_rate"])
def test_relaunch_with_bad_input_keeps_the_checkpoints(bad, state, out, trained, tmp_path, capfd):
    from datasets import Dataset

    if state == "interrupted":  # killed after its checkpoints, before the adapter
        shutil.rmtree(out / "sft" / "adapter")
        (out / "stages" / "sft.json").unlink()
    before = snapshot(out)
    assert any(k.startswith("sft/checkpoints/checkpoint-2/") for k in before)
    if bad == "dataset":
        Dataset.from_list([{"messages": conversation("user", "assistant")},
                           {"messages": conversation("user", "assistant", "user")}]).save_to_disk(str(tmp_path / "d"))
        argv = ["--config", str(config(tmp_path, trained, out, dataset_name=str(tmp_path / "d")))]
        expect = "training row 1: `messages` must end with an assistant turn"
    else:
        argv = ["--config", str(config(tmp_path, trained, out)), "--learning_rate", "-1"]
        expect = "config key 'learning_rate' must be a finite number > 0, got -1.0"
    assert one_error_line(capfd, "sft", argv).startswith(f"error: {expect}")
    assert snapshot(out) == before


def test_checkpoints_of_other_settings_are_set_aside_and_come_back(out, trained, tmp_path):
    """Other settings move the finished run's checkpoints to sft/previous/FP (kept byte for byte); going back to
    the first settings brings them back, and the run, complete at its last checkpoint, trains no further step."""
    before = snapshot(out / "sft" / "checkpoints")
    first = json.loads((out / "sft" / "run.json").read_text())["fingerprint"]
    adapter = (out / "sft" / "adapter" / "adapter_model.safetensors").read_bytes()
    cfg = config(tmp_path, trained, out)
    r = run_script("recipes/sft.py", "--config", str(cfg), "--learning_rate", "0.02")
    assert r.returncode == 0, r.stderr[-3000:]
    assert snapshot(out / "sft" / "previous" / first) == before
    assert f"are kept in {out / 'sft' / 'previous' / first}" in r.stderr
    assert (out / "sft" / "adapter" / "adapter_model.safetensors").read_bytes() != adapter
    r = run_script("recipes/sft.py", "--config", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from checkpoint {out / 'sft' / 'checkpoints' / 'checkpoint-2'}" in r.stderr
    assert not (out / "sft" / "previous" / first).exists()
    assert snapshot(out / "sft" / "checkpoints") == before
    assert_same_adapter(out / "sft" / "adapter", trained["out"] / "sft" / "adapter")
    train = json.loads((out / "sft" / "train.json").read_text())
    assert train["global_step"] == 2 and [h["step"] for h in train["log_history"] if "loss" in h] == [1, 2]


# ---- 2. an incomplete checkpoint, and the last one ------------------------------------------------------------
def test_last_checkpoint_skips_incomplete_ones(tmp_path, caplog):
    from idea_mcts.training import last_checkpoint

    for step, state in ((1, '{"global_step": 1}'), (2, '{"global_step": 2, "log_hist'), (10, None)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"weights")
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-1")
    skipped = [r.getMessage() for r in caplog.records if "incomplete checkpoint" in r.getMessage()]
    assert len(skipped) == 2 and "checkpoint-10" in skipped[0] and "checkpoint-2" in skipped[1]
    assert last_checkpoint(tmp_path / "none") is None


def test_resume_skips_a_checkpoint_cut_short(tiny_model_dir, data, reference, tmp_path):
    """A crash (or a full disk) while checkpoint-2 was written: the Trainer writes trainer_state.json last."""
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "out", str(data), **RESUME)
    r = run_script("recipes/sft.py", "--config", str(cfg), kill_at=2)
    assert r.returncode == -9, r.stderr[-3000:]
    ckpts = tmp_path / "out" / "sft" / "checkpoints"
    (ckpts / "checkpoint-2" / "trainer_state.json").unlink()
    r = run_script("recipes/sft.py", "--config", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"skipping the incomplete checkpoint {ckpts / 'checkpoint-2'}" in r.stderr
    assert f"resuming from checkpoint {ckpts / 'checkpoint-1'}" in r.stderr
    train = json.loads((tmp_path / "out" / "sft" / "train.json").read_text())
    assert train["global_step"] == 3 and train["resumed_from"] == str(ckpts / "checkpoint-1")
    assert_same_adapter(tmp_path / "out" / "sft" / "adapter", reference)


def test_resume_from_the_last_checkpoint_trains_no_further(tiny_model_dir, data, reference, tmp_path):
    """Killed after the checkpoint of the last step, before the adapter was saved: Trainer.train resumed from
    there took a 4th step for max_steps 3."""
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "out", str(data), **RESUME)
    r = run_script("recipes/sft.py", "--config", str(cfg), kill_at=3)
    assert r.returncode == -9, r.stderr[-3000:]
    r = run_script("recipes/sft.py", "--config", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    train = json.loads((tmp_path / "out" / "sft" / "train.json").read_text())
    assert train["global_step"] == 3 and [h["step"] for h in train["log_history"] if "loss" in h] == [1, 2, 3]
    assert_same_adapter(tmp_path / "out" / "sft" / "adapter", reference)


# ---- 3. SFT settings ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "yaml_over", "expect"), [
    (["--lora_r", "0"], {}, "config key 'lora_r' must be an integer >= 1, got 0"),
    (["--per_device_train_batch_size", "0"], {}, "config key 'per_device_train_batch_size' must be an integer >= 1"),
    (["--num_train_epochs", "-1", "--max_steps", "-1"], {},
     "config key 'num_train_epochs' must be a finite number >= 0"),
    (["--num_train_epochs", "0", "--max_steps", "-1"], {}, "no training step would run"),
    (["--lora_dropout", "1.5"], {}, "config key 'lora_dropout' must be a finite number in [0, 1)"),
    ([], {"lora_r": [1, 2]}, "config key 'lora_r' must be an integer, got [1, 2]"),
    ([], {"max_steps": 2.5}, "config key 'max_steps' must be an integer, got 2.5"),
    ([], {"use_peft": 1}, "config key 'use_peft' must be true or false, got 1"),
    ([], {"lora_target_modules": 5}, "config key 'lora_target_modules' must be a list of strings or null, got 5"),
], ids=["lora_r", "batch_size", "epochs", "no_step", "dropout", "lora_r_list", "max_steps_float", "use_peft_int",
        "target_modules"])
def test_sft_settings_are_checked_at_launch(flags, yaml_over, expect, out, trained, tmp_path, capfd):
    before = snapshot(out)
    line = one_error_line(capfd, "full", ["--config", str(config(tmp_path, trained, out, **yaml_over)), *flags])
    assert line.startswith(f"error: {expect}"), line
    assert snapshot(out) == before


# ---- 4. malformed `messages` rows -----------------------------------------------------------------------------
@pytest.mark.parametrize(("rows", "expect"), [
    ([{"messages": ["hello", "hi"]}], "training row 0: `messages` turn 0 must be a {role, content} mapping"),
    ([{"messages": "hello"}], "training row 0: `messages` must be a non-empty list of {role, content} turns"),
    ([{"messages": conversation("user", "assistant")}, {"messages": conversation("assistant", "assistant")}],
     "training row 1: `messages` needs a user turn before its last (assistant) turn"),
    ([{"messages": conversation("user", "assistant", "user")}],
     "training row 0: `messages` must end with an assistant turn (the last is 'user')"),
    ([{"messages": conversation("user", "assistant")}] * 0, "has no rows"),
    ("filtered", "has no rows"),
], ids=["strings", "string", "no_user", "last_user", "empty_no_shard", "empty"])
def test_malformed_messages_are_refused_at_launch(rows, expect, out, trained, tmp_path, capfd):
    from datasets import Dataset

    if rows == "filtered":  # a dataset of 0 rows with a data file
        ds = Dataset.from_list([{"messages": conversation("user", "assistant")}]).filter(lambda r: False)
    else:
        ds = Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "d"))
    before = snapshot(out)
    line = one_error_line(capfd, "sft", ["--config", str(config(tmp_path, trained, out,
                                                                   dataset_name=str(tmp_path / "d")))])
    assert expect in line
    assert snapshot(out) == before


# ---- 5, 8. evaluation settings, IFEval data --------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "expect"), [
    (["--ifeval_limit", "0"], "config key 'ifeval_limit' must be an integer >= 1 or null, got 0"),
    (["--ifeval_backend", "vllm", "--ifeval_batch_size", "-1"], "config key 'ifeval_batch_size' must be an integer"),
    (["--ifeval_max_gen_toks", "0"], "config key 'ifeval_max_gen_toks' must be an integer >= 1 or null, got 0"),
    (["--ifeval_backend", "vlm"], "config key 'ifeval_backend' must be one of hf, vllm, got 'vlm'"),
])
def test_eval_settings_are_checked_at_launch(flags, expect, out, trained, tmp_path, capfd):
    before = snapshot(out)
    line = one_error_line(capfd, "full", ["--config", str(config(tmp_path, trained, out)), *flags])
    assert line == f"error: {expect}" or line.startswith(f"error: {expect}"), line
    assert snapshot(out) == before


def test_compare_checks_eval_settings_before_evolving(tiny_model_dir, tmp_path, capfd):
    from tests.test_compare import compare_config

    cfg = compare_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "out")
    line = one_error_line(capfd, "compare", ["--config", str(cfg), "--ifeval_limit", "0"])
    assert "ifeval_limit" in line
    assert not (tmp_path / "out").exists()


@pytest.fixture
def hub_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


@pytest.fixture
def hub_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """HF_HUB_OFFLINE with empty caches."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")


@pytest.mark.parametrize("hub", ["hub_unreachable", "hub_off"])
def test_ifeval_hub_data_is_checked_at_launch(hub, out, trained, tmp_path, capfd, request):
    request.getfixturevalue(hub)
    before = snapshot(out)
    line = one_error_line(capfd, "full", ["--config", str(config(tmp_path, trained, out)), "--ifeval_data", "hub"])
    assert "ifeval_data=hub reads google/IFEval" in line
    assert ("cannot be reached" if hub == "hub_unreachable" else "HF_HUB_OFFLINE") in line
    assert snapshot(out) == before


def test_sft_alone_does_not_need_the_ifeval_data(tiny_model_dir, data, tmp_path):
    """recipes/sft.py never evaluates: a config naming the Hub's IFEval (as the paper configs do) trains offline."""
    from tests.test_recipes import recipe_env

    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "out", str(data), ifeval_data="hub")
    r = run_script("recipes/sft.py", "--config", str(cfg), env=recipe_env({"HF_HOME": str(tmp_path / "hf")}))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "out" / "sft" / "adapter" / "adapter_model.safetensors").is_file()


# ---- 7. a Hub model id ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hub", ["hub_unreachable", "hub_off"])
def test_hub_model_id_is_checked_at_launch(hub, out, trained, tmp_path, capfd, request):
    request.getfixturevalue(hub)
    before = snapshot(out)
    line = one_error_line(capfd, "full", ["--config", str(config(tmp_path, trained, out)),
                                          "--model_name_or_path", "someorg/no-such-model"])
    assert "model_name_or_path someorg/no-such-model" in line
    assert ("cannot be reached" if hub == "hub_unreachable" else "HF_HUB_OFFLINE") in line
    assert snapshot(out) == before


# ---- 6. Ctrl-C and SIGTERM ------------------------------------------------------------------------------------
def test_ctrl_c_and_sigterm_exit_130_and_143_with_the_resume_command(tiny_model_dir, data, reference, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "out", str(data), **RESUME)
    ckpts = tmp_path / "out" / "sft" / "checkpoints"
    for at, code in (("1:INT", 130), ("2:TERM", 143)):
        r = run_script("recipes/sft.py", "--config", str(cfg), kill_at=at)
        assert r.returncode == code, r.stderr[-3000:]
        assert "Traceback" not in r.stderr
        said = [ln for ln in r.stderr.splitlines() if ln.startswith("interrupted:")]  # the trainer's bar may follow
        assert len(said) == 1, r.stderr[-3000:]
        assert said[0].startswith("interrupted: finished stages and SFT checkpoints are kept; resume with: python ")
        assert said[0].endswith(f"recipes/sft.py {at} --config {cfg}")
    assert f"resuming from checkpoint {ckpts / 'checkpoint-1'}" in r.stderr
    r = run_script("recipes/sft.py", "--config", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from checkpoint {ckpts / 'checkpoint-2'}" in r.stderr
    assert_same_adapter(tmp_path / "out" / "sft" / "adapter", reference)


# ---- 9. a full disk --------------------------------------------------------------------------------------------
def test_full_disk_is_one_line(trained, tmp_path, monkeypatch, capfd):
    """The stage's work has begun (progress bars): one `error:` line, no traceback, nothing half-written."""
    out = tmp_path / "out"
    cfg = config(tmp_path, trained, out)
    DiskFull(monkeypatch, tmp_path)
    capfd.readouterr()
    assert run_main(load_script("sft").main, ["--config", str(cfg)]) == 2
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: cannot write {out / 'sft' / 'run.json'}: {os.strerror(errno.ENOSPC)}")
    assert "re-run the same command" in lines[0]
    assert snapshot(out) == {}
