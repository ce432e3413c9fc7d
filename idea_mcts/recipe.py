"""The recipe behind `recipes/full.py`, `recipes/sft.py` and `recipes/evaluate.py`: configuration through
TRL's parsers, and the stages data -> push -> sft -> eval -> report over OUT (= SFTConfig.output_dir).

    args = parse_recipe(argv)                 # TrlParser: ScriptArguments, SFTConfig, ModelConfig + ours
    recipe = Recipe(*args, command=...)       # validates everything before OUT is touched
    rows = recipe.data()                      # evolve (EvolveRun, OUT/data) or load dataset_name
    recipe.push(); recipe.sft(rows); recipe.evaluate(); recipe.report()

OUT layout: `data/` (the evolve run), `sft/checkpoints/` (the trainer's), `sft/adapter/` (adapter +
tokenizer), `sft/train.json` (log history), `eval/{base,tuned}.json`, `stages/*.json` (fingerprints),
`report.md`, `report.json`, `plots/*.png`. Each stage is skipped when its marker holds the same fingerprint
(see `idea_mcts.stages`); SFT resumes from its newest checkpoint; evolve resumes through its own cache.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from idea_mcts.errors import EngineError, Terminated, UsageError, raise_terminated
from idea_mcts.run_files import (
    ADAPTER_DIR,
    EVAL_WORK,
    EVOLVE_DIR,
    RUN_FILE,
    SFT_DIR,
    SFT_STATE,
    TRAIN_LOG,
    FinishedRun,
    atomic_dir,
    eval_file,
    read_run_file,
    write_json,
)
from idea_mcts.stages import Stages, fingerprint, record_time

logger = logging.getLogger(__name__)

SFT_VOLATILE = ("output_dir", "logging_dir", "report_to", "run_name", "push_to_hub", "hub_model_id", "hub_token",
                "hub_strategy", "hub_private_repo", "save_steps", "save_strategy", "save_total_limit",
                "logging_steps", "logging_strategy", "disable_tqdm", "resume_from_checkpoint", "model_init_kwargs",
                "overwrite_output_dir")
"""SFTConfig fields that do not change the trained adapter: left out of the sft stage's fingerprint."""


@dataclass
class EvolveArguments:
    """The recipe's data source when `dataset_name` is not set: evolve seed instructions into the training set."""

    evolve: dict[str, Any] | None = None
    """Evolve settings nested as in an `idea-mcts evolve` YAML; `config: PATH` reads that file first (a relative
    PATH is relative to the recipe's config file) and the other keys override it. `output_dir` is always
    OUT/data; a `push_to_hub` section pushes the evolved data."""

    def __post_init__(self) -> None:
        self.evolve_config: Any = None
        """The `EvolveConfig` of the section (`load`; `parse_recipe` loads it)."""

    def load(self, base: Path | None = None) -> None:
        """Read the section into `evolve_config`; `base`: the directory its relative `config` path is in."""
        if self.evolve is not None:
            self.evolve_config = load_evolve_section(self.evolve, base)


@dataclass
class EvalArguments:
    """The evaluation stage: IFEval on a slice, for the base model and the tuned adapter."""

    ifeval_data: str = "hub"
    """`hub` (lm-eval's `ifeval` task, google/IFEval), `builtin` (the 541 prompts shipped with idea-mcts,
    offline) or the path of an IFEval-format JSONL."""
    ifeval_limit: int | None = None
    """Evaluate the first N prompts only (None = all 541)."""
    ifeval_backend: str = "hf"
    """lm-eval backend: `hf` or `vllm`."""
    ifeval_batch_size: int = 8
    """Prompts generated at once."""
    ifeval_max_gen_toks: int | None = None
    """Most new tokens per answer (None = IFEval's 1280)."""
    adapter_path: str | None = None
    """recipes/evaluate.py: the adapter to evaluate (default OUT/sft/adapter)."""


def load_evolve_section(section: dict[str, Any], base_dir: Path | None = None) -> Any:
    """The `evolve:` mapping -> an `EvolveConfig` (file named by `config`, relative to `base_dir` when given,
    then the other keys on top)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from idea_mcts.config import load_config

    if not isinstance(section, dict):
        raise UsageError(f"evolve must be a mapping of evolve settings, got {type(section).__name__}")
    rest = {k: v for k, v in section.items() if k != "config"}
    path = section.get("config")
    if isinstance(path, str) and base_dir is not None:
        path = str(base_dir / Path(path).expanduser())  # an absolute path stays as it is
    base = load_config(path)
    if not rest:
        return base
    layer = OmegaConf.structured(base)
    if "engines" in rest:
        layer.engines = {}
    try:
        return OmegaConf.to_object(OmegaConf.merge(layer, OmegaConf.create(rest)))
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
        msg = str(getattr(exc, "msg", None) or exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        raise UsageError(f"evolve.{key}: {msg}" if key else f"evolve: {msg}") from None


def make_parser(extra: tuple[type, ...] = ()) -> Any:
    """TrlParser over TRL's ScriptArguments, SFTConfig, ModelConfig, the recipe's own sections and `extra`;
    argparse's errors become UsageError (one line, exit 2) instead of a usage dump."""
    from trl import ModelConfig, ScriptArguments, SFTConfig

    from idea_mcts.recipe_checks import usage_parser

    return usage_parser((ScriptArguments, SFTConfig, ModelConfig, EvolveArguments, EvalArguments, *extra))


def parse_recipe(argv: list[str] | None = None, extra: tuple[type, ...] = ()) -> tuple[Any, ...]:
    """(script_args, sft_args, model_args, evolve_args, eval_args, *extra) from `--config FILE` and flags; the
    evolve section's `config` path is relative to FILE. Every rank of a multi-process launch parses the same
    input, so a parse error is said once, by rank 0 (the others raise an empty UsageError)."""
    from idea_mcts.distributed import World

    try:
        return _parse(sys.argv[1:] if argv is None else argv, extra)
    except UsageError:
        if not World.from_env().is_main:
            raise UsageError("") from None
        raise


def _parse(argv: list[str], extra: tuple[type, ...]) -> tuple[Any, ...]:
    from idea_mcts.recipe_checks import parse_config_args

    args = parse_config_args(make_parser(extra), argv)
    args[3].load(Path(argv[argv.index("--config") + 1]).parent if "--config" in argv else None)
    return args


def launch_command() -> str:
    """The command line of this process, as `accelerate launch ...` when accelerate started it."""
    prefix = ["accelerate", "launch"] if any(k.startswith("ACCELERATE_") for k in os.environ) else ["python"]
    return shlex.join([*prefix, *sys.argv])


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Entry point of a recipe script, with `idea-mcts`'s exit codes: bad input, and a disk that cannot be
    written, -> one line on stderr + exit 2; engine and push failures exit 1; Ctrl-C exits 130 and SIGTERM 143,
    printing the command that resumes (finished stages are kept, SFT resumes from its last checkpoint)."""
    from idea_mcts.distributed import World, leave_group
    from idea_mcts.pipeline import WRITE_ERRNOS
    from idea_mcts.publish import PushError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return main(argv)
    except UsageError as exc:
        if str(exc):  # empty: another rank of the launch reports it
            sys.stderr.write(f"error: {exc}\n")
        return 2
    except (EngineError, PushError) as exc:
        if str(exc):
            sys.stderr.write(f"error: {exc}\n")
        return 1
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        sys.stderr.write(f"error: cannot write {exc.filename or 'the output dir'}: {exc.strerror}; finished stages "
                         "are kept, fix this and re-run the same command to resume\n")
        return 2
    except KeyboardInterrupt as exc:
        world = World.from_env()
        if world.is_main:
            resume = launch_command() + (f" (launched again with {world.size} processes)" if world.size > 1 else "")
            sys.stderr.write(f"\ninterrupted: finished stages and SFT checkpoints are kept; resume with: {resume}\n")
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        leave_group()  # a rank exits with its own code, not in the group's threads at shutdown


def load_rows(script_args: Any) -> Any:
    """The training rows of `dataset_name`: a `save_to_disk` dir (a dataset or a DatasetDict) or a Hub dataset
    (its `dataset_config`, default `default`, split `dataset_train_split`). Must have `messages`."""
    import datasets

    name, split = script_args.dataset_name, script_args.dataset_train_split
    path = Path(name).expanduser()
    try:
        if path.exists() or name.startswith((".", "/", "~")):
            if not path.is_dir():
                raise UsageError(f"dataset not found: {name} is not a save_to_disk directory")
            if _no_data_files(path, split):
                raise UsageError(f"the training dataset {name} has no rows (a save_to_disk dir with no data files)")
            rows = datasets.load_from_disk(str(path))
            if isinstance(rows, datasets.DatasetDict):
                if split not in rows:
                    raise UsageError(f"dataset {name} has no split {split!r} (splits: {', '.join(rows)})")
                rows = rows[split]
        else:
            from idea_mcts.hub import check_reachable

            check_reachable(name, "dataset", "dataset_name")  # one request, no 30 s of retries
            rows = datasets.load_dataset(name, name=script_args.dataset_config, split=split)
    except UsageError:
        raise
    except Exception as exc:  # DatasetNotFoundError, FileNotFoundError, connection errors, pyarrow errors...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load dataset {name}: {first}") from None
    if "messages" not in rows.column_names:
        raise UsageError(f"dataset {name} has no `messages` column (columns: {', '.join(rows.column_names)})")
    return rows


def _no_data_files(path: Path, split: str) -> bool:
    """A `save_to_disk` dir (of a dataset, or the `split` of a DatasetDict) of an empty dataset: its state lists
    no data file, and `load_from_disk` fails on it with an IndexError."""
    for d in (path, path / split):
        try:
            state = json.loads((d / "state.json").read_text())  # datasets' file, not a run's
        except (OSError, ValueError):
            continue
        return isinstance(state, dict) and state.get("_data_files") == []
    return False


def seed_means(script_args: Any) -> dict[str, float | None] | None:
    """The seeds' Q/C/D means of a loaded idea-mcts dataset: run.json beside a local `dataset` dir, or the
    depth-0 nodes of the Hub repo's `trees` config. None when there is no such record."""
    from idea_mcts.scoring import score_means

    path = Path(script_args.dataset_name)
    if path.is_dir():
        if (path.parent / RUN_FILE).is_file():
            return read_run_file(path.parent).get("data_quality", {}).get("seeds")
        return None
    try:
        import datasets

        nodes = datasets.load_dataset(script_args.dataset_name, "trees", split="train")
    except Exception:  # no trees config: a dataset from elsewhere
        return None
    return score_means([n for n in nodes if n.get("depth") == 0])


def file_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class Recipe:
    """One recipe run over OUT. Construction checks every input and touches nothing."""

    def __init__(self, script_args: Any, sft_args: Any, model_args: Any, evolve_args: EvolveArguments,
                 eval_args: EvalArguments, command: str = "", needs_data: bool = True,
                 evaluates: bool = True) -> None:
        """`needs_data`: the run trains (it opens its data source); `evaluates`: it runs the IFEval stage (its data
        must be at hand)."""
        from idea_mcts.distributed import World, init_group

        self.script, self.sft_args, self.model_args = script_args, sft_args, model_args
        self.evolve_args, self.eval_args, self.command = evolve_args, eval_args, command
        self.world = World.from_env()
        """This process in a multi-process launch: every rank evolves its shard and trains (DDP); rank 0 merges,
        pushes, evaluates and reports."""
        if self.world.size > 1:
            from idea_mcts.shards import agree

            init_group()  # every rank learns which rank's input is bad
            agree(self.world, lambda: self._check(needs_data, evaluates))
        else:
            self._check(needs_data, evaluates)

    def _check(self, needs_data: bool, evaluates: bool) -> None:
        """Every input of every stage checked (and the data source opened) before OUT is touched."""
        from idea_mcts.evolve_plan import check_output_dir
        from idea_mcts.recipe_checks import check_base_model, check_ifeval_source, check_settings
        from idea_mcts.training import check_messages, check_quantization

        script_args, sft_args, model_args = self.script, self.sft_args, self.model_args
        evolve_args, eval_args = self.evolve_args, self.eval_args
        check_settings(script_args, sft_args, model_args, eval_args)
        self.out = Path(sft_args.output_dir)
        check_output_dir(self.out)
        self.model_path = check_base_model(model_args.model_name_or_path)
        model_args.model_name_or_path = self.model_path
        check_quantization(model_args)
        settings = self.ifeval_settings()  # its values are checked whether or not this run evaluates
        if evaluates:
            check_ifeval_source(settings)
        self.stages = Stages(self.out)
        self.times: dict[str, dict[str, Any]] = {}
        self.info: dict[str, Any] = {}
        self.evolve_run: Any = None
        self.rows: Any = None
        if needs_data:
            if script_args.dataset_name:
                self.rows = load_rows(script_args)
                check_messages(self.rows)
            elif evolve_args.evolve_config is not None:
                self.evolve_run = self._evolve_run()
            else:
                raise UsageError("no training data: set dataset_name (Hub id or save_to_disk dir) or an evolve "
                                 "section")

    # -- data ----------------------------------------------------------------------------------------------
    def _evolve_run(self) -> Any:
        from idea_mcts.pipeline import EvolveRun
        from idea_mcts.store import RunStore

        cfg = self.evolve_args.evolve_config
        cfg.output_dir = str(self.out / EVOLVE_DIR)
        if self.world.size > 1:
            from idea_mcts.shards import ShardedEvolve, other_fingerprint

            overwrite = other_fingerprint(Path(cfg.output_dir), cfg.fingerprint())  # a changed setting
            return ShardedEvolve(cfg, self.world, command=self.command, overwrite=overwrite)
        state = RunStore(Path(cfg.output_dir)).state()
        overwrite = state is not None and state.get("fingerprint") != cfg.fingerprint()  # a changed setting
        return EvolveRun(cfg, command=self.command, overwrite=overwrite)

    def data(self) -> Any:
        """The training rows: the evolve run (resumed or skipped through its own store) or the loaded dataset."""
        from idea_mcts.scoring import score_means

        t0 = time.perf_counter()
        if self.evolve_run is not None:
            skipped = self.evolve_run.mode == "finished"
            report = self.evolve_run.execute(progress=True)
            rows = FinishedRun(self.out / EVOLVE_DIR).dataset()
            seeds, self.data_fp = report["data_quality"]["seeds"], report["config_fingerprint"]
            source = {"kind": "evolve", "output_dir": str(self.out / EVOLVE_DIR), "status": report["status"],
                      "counts": report["counts"], "evolve_seconds": report.get("wall_seconds")}
        else:
            rows, skipped = self.rows, False
            seeds, self.data_fp = seed_means(self.script), rows._fingerprint
            source = {"kind": "dataset", "dataset_name": self.script.dataset_name,
                      "dataset_config": self.script.dataset_config, "split": self.script.dataset_train_split}
        cols = [c for c in ("quality", "complexity", "diversity") if c in rows.column_names]
        means = score_means(rows.select_columns(cols).to_list()) if cols else None
        self.info["data"] = {**source, "rows": len(rows), "fingerprint": self.data_fp,
                             "means": {"seeds": seeds, "rows": means}}
        record_time(self.times, self.out, "data", t0, skipped)
        self.rows = rows
        return rows

    def push(self) -> str | None:
        """Publish the evolved data when the evolve section has `push_to_hub` (skipped when already pushed)."""
        from idea_mcts.publish import push_from_config

        cfg = self.evolve_args.evolve_config
        if self.evolve_run is None or cfg.push_to_hub is None or not self.world.is_main:
            return None
        fp = fingerprint(self.data_fp, cfg.push_to_hub)
        t0 = time.perf_counter()
        if (m := self.stages.done("push", fp)) is not None:
            record_time(self.times, self.out, "push", t0, True, m)
            self.info["push"] = {"url": m["url"]}
            return m["url"]
        url = push_from_config(self.out / EVOLVE_DIR, cfg.push_to_hub)
        m = self.stages.finish("push", fp, time.perf_counter() - t0, [], url=url)
        record_time(self.times, self.out, "push", t0, False, m)
        self.info["push"] = {"url": url}
        return url

    # -- sft -----------------------------------------------------------------------------------------------
    def sft_fingerprint(self) -> str:
        sft = {k: v for k, v in self.sft_args.to_dict().items() if k not in SFT_VOLATILE}
        return fingerprint(self.data_fp, sft, asdict(self.model_args))

    def sft(self, rows: Any, callbacks: list[Any] | None = None) -> Path:
        """LoRA SFT with TRL; resumes from the newest complete checkpoint of the same settings (checkpoints of
        other settings are set aside, not deleted); writes OUT/sft/adapter and OUT/sft/train.json atomically."""
        from idea_mcts.training import (
            CHECKPOINTS,
            build_trainer,
            finish_from_checkpoint,
            last_checkpoint,
            lora_b_norm,
            save_adapter,
            set_aside_checkpoints,
            to_prompt_completion,
        )

        if not hasattr(self, "data_fp"):
            self.data_fp = rows._fingerprint
        fp, t0 = self.sft_fingerprint(), time.perf_counter()
        sft_dir, adapter = self.out / SFT_DIR, self.out / ADAPTER_DIR
        if (m := self.stages.done("sft", fp)) is not None:
            record_time(self.times, self.out, "sft", t0, True, m)
            self.info["sft"] = m["info"]
            return adapter
        train_rows = to_prompt_completion(rows)  # refuses rows it cannot train on before anything is written
        ckpt_dir, state_file = sft_dir / CHECKPOINTS, self.out / SFT_STATE
        main = self.world.is_main
        if main:
            state = json.loads(state_file.read_text()) if state_file.is_file() else {}
            if state.get("fingerprint") != fp:
                set_aside_checkpoints(sft_dir, state.get("fingerprint"), fp)
            write_json(state_file, {"fingerprint": fp})
        args = copy.copy(self.sft_args)
        args.output_dir = str(ckpt_dir)
        if self.world.size > 1:
            from idea_mcts.distributed import barrier

            barrier()  # other settings' checkpoints are set aside before any rank looks for one
            if self.model_args.use_peft and args.ddp_find_unused_parameters is None:
                args.ddp_find_unused_parameters = False  # DDP over a PeftModel: frozen base weights get no grads
        trainer = build_trainer(self.model_args, args, train_rows, callbacks)
        resume = last_checkpoint(ckpt_dir)
        if resume and main:
            logger.info("resuming SFT from %s", resume)
            print(f"sft: resuming from checkpoint {resume}", file=sys.stderr)
        if resume and finish_from_checkpoint(trainer, resume):
            metrics: dict[str, Any] = {}  # trained to the last step before the crash: nothing left to train
        else:
            metrics = trainer.train(resume_from_checkpoint=resume).metrics
        if not main:  # every rank saves (a collective under FSDP / ZeRO-3); the main process alone writes
            trainer.save_model(str(adapter.with_name(f".{adapter.name}.tmp")))
            return adapter
        with atomic_dir(adapter) as tmp:
            save_adapter(trainer, tmp)
        info = {"metrics": metrics, "log_history": trainer.state.log_history, "resumed_from": resume,
                "global_step": trainer.state.global_step, "world_size": trainer.args.world_size,
                "num_input_tokens_seen": trainer.state.num_input_tokens_seen, "lora_b_norm": lora_b_norm(adapter)
                if self.model_args.use_peft else None}
        write_json(self.out / TRAIN_LOG, info)
        if hasattr(trainer, "end"):
            trainer.end()
        m = self.stages.finish("sft", fp, time.perf_counter() - t0, [ADAPTER_DIR, TRAIN_LOG], info=info)
        record_time(self.times, self.out, "sft", t0, False, m)
        self.info["sft"] = info
        return adapter

    # -- eval ----------------------------------------------------------------------------------------------
    def ifeval_settings(self) -> Any:
        import torch

        from idea_mcts.evaluation.ifeval import IFEvalSettings

        e = self.eval_args
        cpu = self.sft_args.use_cpu or not torch.cuda.is_available()
        dtype = self.model_args.dtype if self.model_args.dtype not in (None, "auto") else "float32"
        return IFEvalSettings(data=e.ifeval_data, limit=e.ifeval_limit, backend=e.ifeval_backend,
                              batch_size=e.ifeval_batch_size, max_gen_toks=e.ifeval_max_gen_toks,
                              device="cpu" if cpu else "cuda", dtype=dtype)

    def evaluate(self, adapter: Path | None = None) -> dict[str, Any]:
        """IFEval for the base model and base + adapter (each skipped when done for the same settings), and
        the adapter checks: LoRA B non-zero, tuned answers differ from the base model's."""
        from idea_mcts.evaluation.ifeval import run_ifeval
        from idea_mcts.training import check_adapter_fits, lora_b_norm

        adapter = adapter or Path(self.eval_args.adapter_path or self.out / ADAPTER_DIR)
        check_adapter_fits(adapter, self.model_path)
        settings = self.ifeval_settings()
        weights = adapter / "adapter_model.safetensors"
        results = {}
        for name, adp, extra in (("base", None, None), ("tuned", adapter, file_digest(weights))):
            t0 = time.perf_counter()
            fp = fingerprint(self.model_path, settings, extra)
            path = self.out / eval_file(name)
            if (m := self.stages.done(f"eval_{name}", fp)) is not None:
                results[name] = json.loads(path.read_text())
                record_time(self.times, self.out, f"eval_{name}", t0, True, m)
                continue
            res = run_ifeval(self.model_path, settings, adapter=str(adp) if adp else None,
                             workdir=self.out / EVAL_WORK, alone=self.world.size > 1)
            write_json(path, res)
            results[name] = res
            m = self.stages.finish(f"eval_{name}", fp, time.perf_counter() - t0, [eval_file(name)])
            record_time(self.times, self.out, f"eval_{name}", t0, False, m)
        base = {s["key"]: s["response"] for s in results["base"]["samples"]}
        tuned = {s["key"]: s["response"] for s in results["tuned"]["samples"]}
        differ = sum(base.get(k) != v for k, v in tuned.items())
        checks = {"lora_b_norm": lora_b_norm(adapter), "outputs_differ": differ, "outputs_compared": len(tuned)}
        if checks["lora_b_norm"] == 0:
            logger.warning("the adapter's LoRA B weights are all zero: it was never trained")
        if differ == 0:
            logger.warning("the tuned model answered every prompt exactly like the base model")
        self.info["eval"] = {"settings": asdict(settings), "base": results["base"]["metrics"],
                             "tuned": results["tuned"]["metrics"], "num_prompts": results["tuned"]["num_prompts"],
                             "checks": checks}
        return self.info["eval"]

    # -- report --------------------------------------------------------------------------------------------
    def report(self) -> Path:
        from idea_mcts.report import write_recipe_report

        return write_recipe_report(self.out, self.report_dict())

    def report_dict(self) -> dict[str, Any]:
        from idea_mcts import __version__

        return {"version": __version__, "command": self.command, "out": str(self.out), "model": self.model_path,
                "processes": self.world.size,
                "config": {"script": asdict(self.script), "sft": self.sft_args.to_dict(),
                           "model": asdict(self.model_args),
                           "evolve": asdict(self.evolve_args.evolve_config)
                           if self.evolve_args.evolve_config is not None else None,
                           "eval": asdict(self.eval_args)},
                "stages": self.times, **self.info}
