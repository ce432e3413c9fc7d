"""The paper configs (configs/paper/*) end to end on the transformers engine with a tiny random Llama whose
tokenizer is a real SentencePiece model, as the DEITA scorers' and InsTagger's are: the `deita` and `instag`
prompts, the paper's search settings (3 iterations, 5 children, depth > 4), tiny weights, the real code path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from idea_mcts.config import load_config
from idea_mcts.engines.base import candidate_ids
from idea_mcts.pipeline import EvolveRun
from idea_mcts.scoring import DIGITS

ROOT = Path(__file__).resolve().parents[1]


def test_sentencepiece_digits_resolve_to_vocabulary_entries(tiny_sentencepiece_dir):
    tok = AutoTokenizer.from_pretrained(tiny_sentencepiece_dir)
    assert tok.convert_ids_to_tokens(tok.encode("1", add_special_tokens=False)) == ["▁", "1"]
    ids = candidate_ids(tok, DIGITS, "tiny-sp")
    assert tok.convert_ids_to_tokens([ids[d] for d in DIGITS]) == list(DIGITS)


@pytest.mark.parametrize("config", ["idea-mcts-vllm.yaml", "idea-mcts-serve.yaml"])
def test_paper_config_runs_with_deita_and_instag_prompts(config, tiny_sentencepiece_dir, tmp_path):
    path = ROOT / "configs" / "paper" / config
    keys = list(load_config(path).engines)
    overrides = [f"output_dir={tmp_path / 'out'}", "data.seeds=builtin:demo", "data.max_seeds=1",
                 "roles.evolver.max_new_tokens=8", "roles.responder.max_new_tokens=8",
                 "roles.tagger.max_new_tokens=16"]
    for key in keys:
        overrides += [f"engines.{key}.backend=transformers", f"engines.{key}.model={tiny_sentencepiece_dir}",
                      f"engines.{key}.dtype=float32", f"engines.{key}.max_model_len=512"]
    cfg = load_config(path, overrides)
    assert (cfg.roles.quality.prompt, cfg.roles.complexity.prompt, cfg.roles.tagger.prompt) == (
        "deita", "deita", "instag")
    assert (cfg.search.iterations, cfg.search.expand_width, cfg.search.max_depth) == (3, 5, 4)
    report = EvolveRun(cfg).execute(progress=False)
    assert report["status"] == "finished"
    # the DEITA expected score read every digit from the full distribution: no failure, a float in (1, 6)
    assert report["parse_failures"]["quality"] == report["parse_failures"]["complexity"] == 0
    assert report["scoring_method"] == {"quality": "full", "complexity": "full"}
    nodes = [json.loads(line) for line in (tmp_path / "out" / "trees.jsonl").read_text().splitlines()]
    assert all(1.0 < n["quality"] < 6.0 and 1.0 < n["complexity"] < 6.0 for n in nodes)
    assert max(n["depth"] for n in nodes) >= 2 and report["counts"]["rows"] > 0
