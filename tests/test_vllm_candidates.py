"""Candidate token resolution of the vLLM engine, without vLLM: a SentencePiece-style tokenizer (like the
LLaMA ones of the DEITA scorers) encodes "1" as "▁" + "1", yet "1" is the token scored after "Score: "."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from idea_mcts.engines.vllm import VLLMEngine
from idea_mcts.errors import UsageError


def sentencepiece_like() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "▁": 1, **{d: 2 + i for i, d in enumerate("123456")}, "▁Score": 8}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


def engine_with(tokenizer: PreTrainedTokenizerFast) -> VLLMEngine:
    eng = object.__new__(VLLMEngine)  # no vLLM: only the tokenizer is needed
    eng.model_id = "sp-like"
    eng.tokenizer = tokenizer
    eng._candidate_ids = {}
    return eng


def test_digits_resolve_to_their_vocabulary_entries() -> None:
    tok = sentencepiece_like()
    assert len(tok.encode("1", add_special_tokens=False)) == 2  # "▁", "1"
    ids = engine_with(tok).candidate_token_ids(list("123456"))
    assert ids == {d: 2 + i for i, d in enumerate("123456")}


def test_multi_token_candidate_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no single token for '12' \\(it encodes to 3 tokens\\)"):
        engine_with(sentencepiece_like()).candidate_token_ids(["1", "12"])
