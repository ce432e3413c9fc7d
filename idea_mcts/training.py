"""The SFT stage over TRL: the trainer built from TRL's own configs, the QLoRA gate, and adapter checks.

    trainer = build_trainer(model_args, sft_args, to_prompt_completion(rows))
    trainer.train(resume_from_checkpoint=last_checkpoint(sft_args.output_dir))
    save_adapter(trainer, "OUT/sft/adapter")
    lora_b_norm("OUT/sft/adapter") > 0   # a trained adapter; a fresh LoRA has B = 0 and changes nothing

It follows TRL's own `trl/scripts/sft.py` (`SFTTrainer(model=name, peft_config=get_peft_config(model_args),
quantization_config=get_quantization_config(model_args))`). The loss is on the assistant turn only: the
`messages` rows become conversational prompt-completion rows (prompt = the turns before the last assistant
turn, completion = that turn), for which TRL masks the prompt (`completion_only_loss`); this works with any
chat template, unlike `assistant_only_loss`, which needs `{% generation %}` markers in the template.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from idea_mcts.errors import UsageError

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINER_STATE = "trainer_state.json"
"""What the Trainer writes last in a checkpoint (transformers' TRAINER_STATE_NAME)."""
CHECKPOINTS = "checkpoints"
"""OUT/sft/checkpoints: the trainer's checkpoints of the current SFT settings."""
PREVIOUS = "previous"
"""OUT/sft/previous/FINGERPRINT: checkpoints of other SFT settings, set aside when the settings changed."""


def check_quantization(model_args: Any) -> None:
    """QLoRA (4-bit) and 8-bit loading need bitsandbytes on a CUDA device: refuse otherwise, never fall back."""
    import torch

    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return
    bits = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
    if not torch.cuda.is_available():
        raise UsageError(f"{bits} (QLoRA) needs a CUDA GPU and none is available: drop {bits} to train LoRA in "
                         "full precision")
    if not model_args.use_peft:
        raise UsageError(f"{bits} trains through a LoRA adapter: set use_peft: true")
    if model_args.dtype in (None, "auto"):
        raise UsageError(f"{bits} needs an explicit compute dtype: set dtype: bfloat16")


def check_messages(rows: Any) -> None:
    """UsageError naming the first row whose `messages` the SFT stage cannot train on: not a list of
    {role, content} string turns, no user turn before the last turn, or a last turn that is not the assistant's;
    also a dataset without rows or without the column. Reads the column in batches (memory stays flat)."""
    if "messages" not in rows.column_names:
        raise UsageError(f"the dataset has no `messages` column (columns: {', '.join(rows.column_names)})")
    if len(rows) == 0:
        raise UsageError("the training dataset has no rows")
    i = 0
    for batch in rows.select_columns(["messages"]).iter(batch_size=1024):
        for msgs in batch["messages"]:
            if (problem := conversation_problem(msgs)) is not None:
                raise UsageError(f"training row {i}: `messages` {problem}")
            i += 1


def conversation_problem(msgs: Any) -> str | None:
    """What keeps one row's `messages` from being a conversation to train on (None: nothing)."""
    if not isinstance(msgs, list) or not msgs:
        return f"must be a non-empty list of {{role, content}} turns, got {_short(msgs)}"
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"turn {j} must be a {{role, content}} mapping of strings, got {_short(m)}"
    if msgs[-1]["role"] != "assistant":
        return f"must end with an assistant turn (the last is {msgs[-1]['role']!r})"
    if not any(m["role"] == "user" for m in msgs[:-1]):
        return "needs a user turn before its last (assistant) turn"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def to_prompt_completion(rows: Any) -> Any:
    """`messages` rows (`check_messages`) -> conversational prompt-completion rows: prompt = every turn before
    the last one, completion = the last turn, the assistant's (so the loss covers only that turn)."""
    check_messages(rows)

    def split(row: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}

    return rows.map(split, remove_columns=rows.column_names, keep_in_memory=True)  # no cache files by the data


def build_trainer(model_args: Any, sft_args: Any, train_dataset: Any, callbacks: list[Any] | None = None) -> Any:
    """TRL's `SFTTrainer` on `model_args.model_name_or_path` with the LoRA and quantization configs that TRL
    derives from `model_args` (its `get_peft_config`, `get_quantization_config`)."""
    from trl import SFTTrainer, get_peft_config, get_quantization_config

    check_quantization(model_args)
    init_kwargs = {"revision": model_args.model_revision, "trust_remote_code": sft_args.trust_remote_code,
                   "attn_implementation": model_args.attn_implementation, "dtype": model_args.dtype}
    sft_args.model_init_kwargs = {**init_kwargs, **(sft_args.model_init_kwargs or {})}
    return SFTTrainer(model=model_args.model_name_or_path, args=sft_args, train_dataset=train_dataset,
                      peft_config=get_peft_config(model_args),
                      quantization_config=get_quantization_config(model_args), callbacks=callbacks)


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The trainer's newest complete checkpoint under `output_dir`, or None; each newer, incomplete one (a crash
    or a full disk while it was written) is skipped with a warning. The Trainer writes `trainer_state.json` last,
    after the weights, optimizer, scheduler and RNG states: a checkpoint is complete when that file parses."""
    from transformers.trainer_utils import sort_checkpoints

    d = Path(output_dir)
    if not d.is_dir():
        return None
    for path in reversed(sort_checkpoints(str(d))):  # newest first, by step
        if checkpoint_state(path) is not None:
            return path
        logger.warning("skipping the incomplete checkpoint %s (no readable %s: its save was cut short)", path,
                       TRAINER_STATE)
    return None


def checkpoint_state(checkpoint: str | Path) -> dict[str, Any] | None:
    """The checkpoint's trainer state (global_step, max_steps, log_history...), None when missing or torn."""
    try:
        state = json.loads((Path(checkpoint) / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("global_step"), int) else None


def finish_from_checkpoint(trainer: Any, checkpoint: str) -> bool:
    """When `checkpoint` was saved at the run's last step (a crash before the adapter was saved), load its
    weights and state into `trainer` and return True: training is complete. `Trainer.train` resumed from there
    takes one optimizer step more when the last step falls inside an epoch (max_steps 3 ends at step 4). False
    otherwise, and under DeepSpeed or FSDP, whose weights load only inside `train`."""
    from transformers import TrainerState

    state = checkpoint_state(checkpoint)
    if state is None or not state.get("max_steps") or state["global_step"] < state["max_steps"]:
        return False
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        return False
    trainer._load_from_checkpoint(checkpoint)  # the Trainer's own loader (adapter or full weights), as on resume
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))
    return True


def set_aside_checkpoints(sft_dir: Path, old: str | None, new: str) -> None:
    """Before a run of SFT settings `new` (fingerprint) starts in `sft_dir`: the checkpoints of settings `old`
    move to `sft_dir/previous/OLD` (kept, never deleted), and checkpoints set aside earlier for `new` come back
    to `sft_dir/checkpoints`, so that returning to earlier settings resumes their training."""
    current, previous = sft_dir / CHECKPOINTS, sft_dir / PREVIOUS
    if current.exists():
        target = previous / (old or f"unknown-{int(current.stat().st_mtime)}")
        if target.exists():  # the same settings set aside twice: keep both
            target = target.with_name(f"{target.name}-{int(current.stat().st_mtime)}")
        previous.mkdir(parents=True, exist_ok=True)
        current.rename(target)
        logger.info("the checkpoints of other SFT settings (%s) are kept in %s", old or "unknown", target)
    if (previous / new).is_dir():
        (previous / new).rename(current)
        logger.info("checkpoints of these SFT settings, set aside earlier, are back in %s", current)


def save_adapter(trainer: Any, target: Path) -> None:
    """The adapter (or full model without peft) and the tokenizer into `target`."""
    trainer.save_model(str(target))
    trainer.processing_class.save_pretrained(str(target))


def lora_b_norm(adapter_dir: str | Path) -> float:
    """Frobenius norm of all LoRA B matrices of a saved adapter: 0 for an untrained LoRA (B starts at zero)."""
    from safetensors import safe_open

    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise UsageError(f"{adapter_dir} holds no LoRA adapter ({ADAPTER_WEIGHTS} is missing)")
    total, found = 0.0, 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            if "lora_B" in key:
                found += 1
                total += float(f.get_tensor(key).float().pow(2).sum())
    if not found:
        raise UsageError(f"{path} holds no lora_B weights")
    return total ** 0.5


def check_adapter_fits(adapter_dir: str | Path, base_model: str) -> None:
    """An adapter trained on another base model -> UsageError: every LoRA A/B shape must match the base
    model's layer it adapts (checked on a meta-device copy of the model, no weights loaded)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    adapter = Path(adapter_dir)
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.is_file():
        raise UsageError(f"{adapter} is not a PEFT adapter directory (no adapter_config.json)")
    trained_on = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    try:
        config = AutoConfig.from_pretrained(base_model)
    except Exception as exc:  # missing dir, unknown Hub id offline, ...
        raise UsageError(f"cannot read the base model {base_model}: {str(exc).splitlines()[0]}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    modules = dict(model.named_modules())
    weights = adapter / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise UsageError(f"{adapter} holds no LoRA adapter ({ADAPTER_WEIGHTS} is missing)")
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            name = key.removeprefix("base_model.model.").split(".lora_")[0]
            layer = modules.get(name)
            shape = f.get_slice(key).get_shape()
            ok = layer is not None and hasattr(layer, "in_features") and (
                shape[1] == layer.in_features if ".lora_A." in key else shape[0] == layer.out_features)
            if not ok:
                raise UsageError(f"adapter {adapter} does not fit base model {base_model} (layer {name}); it was "
                                 f"trained on {trained_on}")
