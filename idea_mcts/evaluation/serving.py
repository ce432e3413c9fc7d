"""Serving a tuned model (base + LoRA adapter) to the evaluations through any engine.

The evaluations take engines, and every engine loads a plain model directory, so the simplest way to serve an
adapter everywhere is to merge it once into its base and point the engine's `model` at the merged directory:

    merged = merge_adapter("OUT/adapter", "OUT/merged")           # base from adapter_config.json
    engine = build_engine(EngineConfig(backend="transformers", model=str(merged)))

The same directory serves `backend: vllm` in process and `vllm serve OUT/merged` behind `backend: openai`.
(vLLM can also serve the adapter unmerged: `vllm serve BASE --enable-lora --lora-modules tuned=OUT/adapter`,
then `backend: openai` with `model: tuned`; docs/evaluation.md.)

    cfg = engine_config({"backend": "vllm"}, "answer_engine", model=served_model(base, adapter, OUT / "merged"))
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from idea_mcts.errors import UsageError
from idea_mcts.models import resolve_model

logger = logging.getLogger(__name__)

MARKER = "merged_from.json"
"""Written into a merged directory: which adapter (and its weights' hash) and which base it holds."""


def _fingerprint(adapter_dir: Path) -> str:
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        path = adapter_dir / name
        if path.is_file():
            h.update(name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base_model: str | None = None) -> Path:
    """Merge the LoRA adapter in `adapter_dir` into its base model and save the result (weights + tokenizer) in
    `out_dir`, atomically. The base is `base_model` or the adapter's `base_model_name_or_path`; the tokenizer is
    the adapter's when it saved one (a tuned chat template), else the base's. An `out_dir` already holding this
    merge is reused; one holding anything else is refused, never overwritten."""
    adapter, out = Path(adapter_dir), Path(out_dir)
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise UsageError(f"{adapter} is not a PEFT adapter directory (no adapter_config.json)")
    try:
        adapter_cfg = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{config_file}: not valid JSON ({exc.msg})") from None
    base = base_model or adapter_cfg.get("base_model_name_or_path")
    if not base:
        raise UsageError(f"{config_file} names no base model: pass base_model")
    marker = {"adapter": str(adapter.resolve()), "adapter_sha256": _fingerprint(adapter), "base": base}
    if out.exists():
        try:
            existing = json.loads((out / MARKER).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            existing = None
        if existing == marker:
            logger.info("reusing merged model %s", out)
            return out
        raise UsageError(f"{out} exists and does not hold this merge of {adapter}: choose another directory")

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = resolve_model(base)
    try:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        has_tokenizer = any((adapter / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(str(adapter) if has_tokenizer else base_path)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UsageError(f"cannot merge adapter {adapter} into {base!r}: {str(exc).splitlines()[0]}") from None
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    tmp.rename(out)
    logger.info("merged adapter %s into %s -> %s", adapter, base, out)
    return out


def merged_dir(adapter_dir: str | Path, base_model: str, root: Path) -> Path:
    """The directory under `root` that holds the merge of this adapter (its path and weights) into `base_model`:
    one per merge, so that merges of other adapters or bases never meet."""
    adapter = Path(adapter_dir)
    key = json.dumps({"adapter": str(adapter.resolve()), "adapter_sha256": _fingerprint(adapter), "base": base_model})
    return root / hashlib.sha256(key.encode()).hexdigest()[:16]


def served_model(model: str, adapter: str | Path | None, merged_root: Path) -> str:
    """What an engine's `model` must be to serve `model` (a resolved path or Hub id) with `adapter`: the model
    itself without one, else its merge (made once under `merged_root`, then reused)."""
    if adapter is None:
        return model
    return str(merge_adapter(adapter, merged_dir(adapter, model, merged_root), base_model=model))


def engine_config(base: dict[str, Any] | None, what: str, **over: Any) -> Any:
    """An `EngineConfig` from the keys of a config section (`base`) with `over` on top; a bad key or value ->
    UsageError naming the section `what`."""
    from idea_mcts.config import EngineConfig

    if base is not None and not isinstance(base, dict):
        raise UsageError(f"{what} must be a mapping of engine settings, got {type(base).__name__}")
    try:
        return EngineConfig(**{**(base or {}), **over})
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what}: {str(exc).splitlines()[0]}") from None
