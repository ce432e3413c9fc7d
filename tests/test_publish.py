"""`idea-mcts push`: real `push_to_hub` / `load_dataset` round trips through huggingface_hub against the
loopback Hub emulator (tests/hub_emulator.py), the dataset card, re-push merges, a failed push, token hygiene.

huggingface_hub and datasets read HF_ENDPOINT when they are imported, so every Hub call runs in a subprocess
whose environment points at the emulator (`hub_env`); this process only writes fixtures, edits the emulator's
storage and reads it back. No network beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from datasets import load_from_disk
from huggingface_hub import DatasetCard

from idea_mcts import publish
from idea_mcts.card import (
    RunSummary,
    build_card,
    contamination_source,
    fenced,
    merge_metadata,
    redact,
    size_category,
)
from idea_mcts.scoring import score_means
from tests.hub_emulator import HubEmulator, hub_env
from tests.publish_fixtures import write_run

pytestmark = pytest.mark.hub

TOKEN = "hf_idea_mcts_test_TOKEN_0123456789abcdef"
LOAD = r"""
import json, sys
from datasets import load_dataset
repo = sys.argv[1]
print(json.dumps({"rows": load_dataset(repo, split="train").to_list(),
                  "nodes": load_dataset(repo, "trees", split="train").to_list()}))
"""


def _push_argv() -> list[str]:
    return [sys.executable, "-m", "idea_mcts.cli", "--log_level", "DEBUG", "push"]


def _env(hub: HubEmulator, home: Path, token: str | None = TOKEN) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    return {**base, **hub_env(hub, home, token), "HF_DEBUG": "1", "PYTHONUNBUFFERED": "1"}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180,
                          cwd=Path(__file__).parent)


def push(hub: HubEmulator, home: Path, out: Path, repo: str, *extra: str,
         token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    return _run([*_push_argv(), str(out), "--repo_id", repo, *extra], _env(hub, home, token))


def load(hub: HubEmulator, home: Path, repo: str) -> dict[str, list[dict[str, Any]]]:
    r = _run([sys.executable, "-c", LOAD, repo], _env(hub, home))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def card_of(hub: HubEmulator, repo: str) -> DatasetCard:
    return DatasetCard(hub.files(repo)["README.md"].decode())


# ---- one published run shared by the round-trip, card and token tests ------------------------------------
@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("published")
    out = base / "out"
    fixture = write_run(out, task_actions="data/alpaca_eval_examples.jsonl", task_source="alpaca_eval")
    before = snapshot(out)
    with HubEmulator(token=TOKEN) as hub:
        result = push(hub, base, out, "org/evolved")
        loaded = load(hub, base, "org/evolved") if result.returncode == 0 else None
        yield {"hub": hub, "base": base, "out": out, "fixture": fixture, "before": before, "result": result,
               "loaded": loaded}


def test_push_and_load_both_configs(published: dict[str, Any]) -> None:
    r, fixture, loaded = published["result"], published["fixture"], published["loaded"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == f"{published['hub'].url}/datasets/org/evolved"
    assert loaded["rows"] == fixture["rows"]  # every column, every value, in order
    assert loaded["nodes"] == fixture["nodes"]
    files = published["hub"].files("org/evolved")
    assert {"data/train-00000-of-00001.parquet", "trees/train-00000-of-00001.parquet"} <= set(files)
    assert snapshot(published["out"]) == published["before"]  # nothing written under OUT


def test_card(published: dict[str, Any]) -> None:
    hub, fixture = published["hub"], published["fixture"]
    files = hub.files("org/evolved")
    card = card_of(hub, "org/evolved")
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0"
    assert meta["task_categories"] == ["text-generation"]
    assert {"synthetic", "idea-mcts"} <= set(meta["tags"])
    assert meta["size_categories"] == [size_category(len(fixture["rows"]))] == ["n<1K"]
    assert {c["config_name"]: c["data_files"] for c in meta["configs"]} == {
        "default": [{"split": "train", "path": "data/train-*"}],
        "trees": [{"split": "train", "path": "trees/train-*"}]}
    assert {i["config_name"] for i in meta["dataset_info"]} == {"default", "trees"}

    # the data-quality table, recomputed here from the fixture
    text = card.text
    seeds = [n for n in fixture["nodes"] if n["depth"] == 0]
    seed_means, row_means = [], []
    for name, key in (("quality", "quality"), ("diversity", "diversity"), ("complexity", "complexity")):
        s = sum(n[key] for n in seeds if n[key] is not None) / len([n for n in seeds if n[key] is not None])
        rows = [r[key] for r in fixture["rows"] if r[key] is not None]
        assert f"| {name} | {s:.2f} | {sum(rows) / len(rows):.2f} |" in text
        seed_means.append(s)
        row_means.append(sum(rows) / len(rows))
    # the paper's "mean of (Q, D, C)": the mean of the three means, by hand
    seed_mean, row_mean = sum(seed_means) / 3, sum(row_means) / 3
    assert f"| **mean of (Q, D, C)** | {seed_mean:.2f} | {row_mean:.2f} | 2.19 | 3.81 |" in text
    assert "| 1.40 | 3.62 |" in text
    assert "not comparable" in text  # the fixture's judge is the embedded CPU default

    for png in ("assets/score_histograms.png", "assets/depth_distribution.png"):
        assert files[png].startswith(b"\x89PNG\r\n\x1a\n")
        assert f"]({png})" in text
    assert "## Example tree" in text and "[seed]" in text
    assert "arXiv" in text and "2410.10392" in text and "@inproceedings{li2024optimizing" in text
    assert fixture["run"]["command"] in text
    assert fixture["run"]["config_yaml"].strip() in text
    assert "Contamination risk" in text and "alpaca_eval" in text
    assert "`embedded:qwen2.5-coder-0.5b-instruct`" in text  # models per role (the default engine)
    assert "`general` + 4 task-specific actions" in text  # action set


def test_no_token_outside_authorization(published: dict[str, Any]) -> None:
    hub, base = published["hub"], published["base"]
    authorized = 0
    for req in hub.requests:
        assert TOKEN not in req.path
        assert TOKEN.encode() not in req.body, f"token in the body of {req.method} {req.path}"
        for name, value in req.headers.items():
            if name.lower() == "authorization":
                assert value in (f"Bearer {TOKEN}",)
                authorized += 1
            else:
                assert TOKEN not in value, f"token in header {name} of {req.method} {req.path}"
    assert authorized > 0  # the check above is not vacuous
    for label, data in hub.stored_blobs():
        assert TOKEN.encode() not in data, label
    for path in base.rglob("*"):  # OUT, the hub and datasets caches of the subprocesses
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    result = published["result"]
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    assert "DEBUG" in result.stderr  # the logs were really captured at debug level


# ---- push twice: user edits to the card metadata survive, the data updates -------------------------------
def test_push_twice_merges_card_and_updates_data(tmp_path: Path) -> None:
    out1, out2 = tmp_path / "run1", tmp_path / "run2"
    write_run(out1, variant=0)
    second = write_run(out2, variant=1, num_seeds=4)
    with HubEmulator(token=TOKEN) as hub:
        assert push(hub, tmp_path, out1, "org/twice").returncode == 0
        card = card_of(hub, "org/twice")  # a user edits the card on the website
        card.data.license = "mit"
        card.data.language = ["en"]
        card.data.tags = [*card.data.tags, "math"]
        card.data["annotations_creators"] = ["machine-generated"]
        end = "<!-- /idea-mcts:user -->"
        card.text = card.text.replace(end, f"Checked by a human.\n{end}")  # a note kept across pushes
        hub.put_file("org/twice", "README.md", str(card).encode(), title="user edit")

        r = push(hub, tmp_path, out2, "org/twice")
        assert r.returncode == 0, r.stderr[-3000:]
        loaded = load(hub, tmp_path, "org/twice")
        card = card_of(hub, "org/twice")
    assert loaded["rows"] == second["rows"] and loaded["nodes"] == second["nodes"]
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0"  # a key the tool owns: regenerated from the push's license
    assert meta["language"] == ["en"] and meta["annotations_creators"] == ["machine-generated"]  # kept
    assert meta["tags"] == ["synthetic", "idea-mcts", "math"]  # the user's tag kept, ours present
    info = {i["config_name"]: i["splits"][0]["num_examples"] for i in meta["dataset_info"]}
    assert info == {"default": len(second["rows"]), "trees": len(second["nodes"])}
    assert f"rows (ours, n={len(second['rows'])})" in card.text
    assert "Checked by a human." in card.text


# ---- failures ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["all", "writes", "commit"])
def test_failed_push_keeps_output_and_says_how_to_retry(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out"
    write_run(out)
    before = snapshot(out)
    with HubEmulator(token=TOKEN) as hub:
        hub.fail = mode
        r = push(hub, tmp_path, out, "org/fail", "--revision", "v1")
        if mode == "commit":  # the shards went up, the commit died: a push that fails at the very end
            assert any(q.method == "PUT" and q.status == 200 for q in hub.requests)
    assert r.returncode == 1, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1
    assert "push to org/fail failed" in errors[0] and "500" in errors[0]
    assert errors[0].endswith(f"retry with: idea-mcts push {out} --repo_id org/fail --revision v1")
    assert snapshot(out) == before  # byte-identical, no new files
    assert TOKEN not in r.stderr and TOKEN not in r.stdout


def test_private_branch_and_license(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_run(out)
    with HubEmulator(token=TOKEN) as hub:
        r = push(hub, tmp_path, out, "org/priv", "--private", "--revision", "dev", "--license", "cc-by-4.0")
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.strip().splitlines()[-1] == f"{hub.url}/datasets/org/priv/tree/dev"
        assert hub.repos["org/priv"].private
        assert set(hub.files("org/priv", "main")) == {".gitattributes"}  # main untouched
        dev = hub.files("org/priv", "dev")
    assert {"README.md", "assets/score_histograms.png", "data/train-00000-of-00001.parquet"} <= set(dev)
    assert DatasetCard(dev["README.md"].decode()).data.license == "cc-by-4.0"


def test_no_token_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_run(out)
    with HubEmulator(token=TOKEN) as hub:
        r = push(hub, tmp_path, out, "org/none", token=None)
        assert hub.requests == []
    assert r.returncode == 1
    assert "no Hugging Face token" in r.stderr and "retry with: idea-mcts push" in r.stderr


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="idea-mcts")
    publish.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["push", *argv])
    return args.func(args)


@pytest.mark.parametrize("case", ["missing_out", "not_a_run", "unfinished", "bad_repo", "no_namespace"])
def test_bad_input_exits_2(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    out, repo = tmp_path / "out", "org/name"
    if case != "missing_out":
        write_run(out)
    if case == "not_a_run":
        (out / "trees.jsonl").unlink()
    if case == "unfinished":
        run = json.loads((out / "run.json").read_text())
        (out / "run.json").write_text(json.dumps({**run, "status": "running"}))
    repo = {"bad_repo": "org/bad--name!", "no_namespace": "name"}.get(case, repo)
    capsys.readouterr()
    assert _cli([str(out), "--repo_id", repo]) == 2  # fails before any network call
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


# ---- card pieces without the Hub ---------------------------------------------------------------------------
def _summary(out: Path) -> RunSummary:
    rows, nodes, run = publish.load_output(out)
    return RunSummary(run=run, nodes=nodes, rows=rows.to_list())


@pytest.mark.parametrize(("task_actions", "task_source", "warned"), [
    (None, None, False), ("data/my_tasks.jsonl", "internal support tickets", False),
    ("data/tasks.jsonl", "alpaca_eval", True), ("data/mt_bench_prompts.jsonl", None, True),
    ("data/x.jsonl", "IFEval", True)])
def test_contamination_note(tmp_path: Path, task_actions: str | None, task_source: str | None,
                            warned: bool) -> None:
    write_run(tmp_path, task_actions=task_actions, task_source=task_source)
    summary = _summary(tmp_path)
    assert (contamination_source(summary.config) is not None) is warned
    text = build_card(summary, "org/x").text
    assert ("Contamination risk" in text) is warned


def test_merge_metadata_regenerates_owned_keys_and_keeps_the_rest() -> None:
    ours = {"license": "apache-2.0", "size_categories": ["1K<n<10K"], "pretty_name": "P"}
    hub = {"license": "mit", "tags": ["math"], "size_categories": ["n<1K"], "language": ["en"],
           "pretty_name": "edited"}
    merged = merge_metadata(hub, ours)
    assert merged == {"license": "apache-2.0", "size_categories": ["1K<n<10K"], "pretty_name": "P",
                      "language": ["en"], "tags": ["math", "synthetic", "idea-mcts"]}
    assert merge_metadata({}, ours)["tags"] == ["synthetic", "idea-mcts"]


def test_stopped_early_run_is_publishable(tmp_path: Path) -> None:
    write_run(tmp_path)
    run = json.loads((tmp_path / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps({**run, "status": "stopped early: max_calls"}))
    assert "The search stopped early: max_calls." in build_card(_summary(tmp_path), "org/x").text


def test_rebuilt_card_keeps_other_keys_and_user_notes(tmp_path: Path) -> None:
    write_run(tmp_path)
    summary = _summary(tmp_path)
    card = build_card(summary, "org/x")
    card.data.pretty_name = "mine --> yours"  # an owned key edited on the Hub
    card.data.language = ["en"]  # a key the tool does not own
    marker = "<!-- /idea-mcts:user -->"
    card = DatasetCard(str(card).replace(marker, "Reviewed by hand.\n" + marker))
    for _ in range(2):  # kept by every later push, not just the next one
        card = build_card(summary, "org/x", existing=DatasetCard(str(card)))
        assert card.data.language == ["en"] and card.data.pretty_name == "IDEA-MCTS instructions: x"
        assert "Reviewed by hand.\n" + marker in card.text
        assert card.text.count(marker) == 1
        assert "idea-mcts:managed" not in card.text
    card = build_card(summary, "org/x", existing=card, license="cc-by-4.0")  # the push's license is written
    assert card.data.license == "cc-by-4.0" and card.data.language == ["en"]


def test_card_helpers() -> None:
    assert [size_category(n) for n in (0, 999, 1000, 54_321, 2_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M"]
    assert fenced("a ```b``` c", "yaml").startswith("````yaml\n") and fenced("x").endswith("\n```")
    secret = "--token hf_" + "a" * 34 + " and s3cret"
    assert redact(secret, ("s3cret",)) == "--token <redacted> and <redacted>"
    means = score_means([{"quality": 2.0, "diversity": 3.0, "complexity": None},
                         {"quality": 4.0, "diversity": 5.0, "complexity": 1.0}])
    assert means == {"quality": 3.0, "diversity": 4.0, "complexity": 1.0, "mean": pytest.approx(8 / 3)}
    assert score_means([{"quality": 2.0, "diversity": 4.0}])["mean"] == 3.0  # complexity scorer off
    # the same scores in another order (trees finish in another order in a sharded run): the same bits
    scores = [{"quality": q} for q in (1e16, 1.0, -1e16, 0.1, 0.2, 0.3)]
    assert score_means(scores) == score_means(scores[::-1]) == score_means(scores[1:] + scores[:1])
    assert score_means(scores)["quality"] == pytest.approx(1.6 / 6)
    assert re.fullmatch(r"n<1K", size_category(10))


def test_evolve_pushes_when_the_config_says_so(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`push_to_hub: {repo_id}` in the evolve config publishes the finished run; a failed push keeps it."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "idea_mcts.cli", "evolve", "--output_dir", str(out), "--no_progress",
            f"engines.default.model={tiny_model_dir}", "data.max_seeds=2", "search.iterations=1",
            "search.expand_width=2", "search.max_depth=1", "roles.evolver.max_new_tokens=8",
            "roles.responder.max_new_tokens=8", "roles.tagger.max_new_tokens=8", "export.mode=all",
            "push_to_hub.repo_id=org/auto", "push_to_hub.license=mit"]
    with HubEmulator(token=TOKEN) as hub:
        r = _run(argv, _env(hub, tmp_path))
        assert r.returncode == 0, r.stderr[-3000:]
        loaded = load(hub, tmp_path, "org/auto")
        assert len(loaded["rows"]) == len(load_from_disk(str(out / "dataset")))
        assert len(loaded["nodes"]) == len((out / "trees.jsonl").read_text().splitlines())
        assert card_of(hub, "org/auto").data.license == "mit"
        hub.fail = "all"
        r = _run([*argv[:5], str(tmp_path / "out2"), *argv[6:]], _env(hub, tmp_path))
    assert r.returncode == 1
    assert "retry with: idea-mcts push" in r.stderr and (tmp_path / "out2" / "dataset").is_dir()
    assert TOKEN not in r.stderr
