"""The paper's comparison behind `recipes/compare.py`: every arm (`idea_mcts.baselines`) built over the same seeds
at an equal request budget, the same base model tuned on each with the same settings, each evaluated the same way.

    cmp = Comparison(*parse_compare(argv), command=...)   # validates everything before OUT is touched
    cmp.build_arms()      # idea-mcts, idea-mcts+, evol-instruct (budget = idea-mcts's requests), seed
    cmp.training_sets()   # each arm's rows sampled to the same size
    cmp.train()           # the recipe's sft stage per arm
    cmp.evaluate()        # IFEval (base once, each arm's adapter) + judge win rate vs the base model
    cmp.report()          # OUT/compare.md, compare.json, plots/*.png

OUT layout: `arms/ARM/data` (the arm's evolve run), `arms/ARM/train` (its sampled training set),
`arms/ARM/sft/`, `arms/ARM/merged` (adapter merged for the judge evaluation), `arms/ARM/eval/{ifeval,winrate}
.json`, `arms/ARM/stages/`, `eval/{ifeval_base,winrate_base}.json`, `stages/`. Every stage is skipped when its
marker holds the same fingerprint (`idea_mcts.stages`); the evolve runs resume through their own store.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from idea_mcts.baselines import (
    ARMS,
    BudgetedMCTSRun,
    EvolInstructRun,
    EvolInstructSettings,
    arm_budget,
    budgeted_fingerprint,
    evol_fingerprint,
    sample_rows,
    seed_rows,
)
from idea_mcts.errors import UsageError
from idea_mcts.evaluation.alpaca import BUILTIN_INSTRUCTIONS
from idea_mcts.evaluation.serving import engine_config
from idea_mcts.recipe import EvalArguments, EvolveArguments, Recipe, file_digest, parse_recipe
from idea_mcts.run_files import (
    ARM_TRAIN_DIR,
    ARMS_DIR,
    EVAL_WORK,
    EVOLVE_DIR,
    MERGED_DIR,
    FinishedRun,
    atomic_dir,
    eval_file,
    write_json,
)
from idea_mcts.stages import Stages, fingerprint, record_time

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data" / "compare"
BUILTIN_TASK_EXAMPLES = DATA_DIR / "task_examples.jsonl"
BUILTIN_WINRATE = BUILTIN_INSTRUCTIONS  # the path itself (not `builtin`) enters the win-rate stages' fingerprints
EVOLVED_ARMS = ("idea-mcts", "idea-mcts+", "evol-instruct")


@dataclass
class CompareArguments:
    """The comparison: which arms, the training-set size, the baselines' settings, the judge evaluation."""

    arms: list[str] = field(default_factory=lambda: list(ARMS))
    """Arms to build, tune and evaluate: any of seed, evol-instruct, idea-mcts, idea-mcts+ (seed and
    evol-instruct need idea-mcts: its roots are the seed arm and its requests the budget)."""
    sample_size: int = 1000
    """Training rows per arm (paper: 1K); every arm gets min(this, the smallest arm's rows) rows."""
    sample_seed: int = 0
    """Seed of the random draw of each arm's training rows."""
    evol_rounds: int = 4
    """Evol-Instruct: rounds per chain (WizardLM: 4); chains restart from each seed until the budget is spent."""
    task_examples: str = "builtin"
    """idea-mcts+: example instructions of the target task for the MCTS+ meta-prompt: `builtin` (12
    IFEval-style instructions written for this project, not from any evaluation set) or a JSONL/text file."""
    task_source: str | None = None
    """Where the task examples come from, for the report and the dataset card (default: said for `builtin`)."""
    winrate_source: str = "builtin"
    """Instructions of the AlpacaEval-style win rate (tuned vs base model): `builtin` (12 everyday instructions
    written for this project), `hub` (tatsu-lab/alpaca_eval) or a JSON/JSONL file with `instruction`."""
    winrate_limit: int | None = None
    """Judge only the first N instructions (None = all)."""
    winrate_max_new_tokens: int = 512
    """Most tokens per answer of the base and tuned models in the win-rate evaluation."""
    winrate_engine: dict[str, Any] | None = None
    """EngineConfig keys for the base and tuned models answering the win-rate instructions (default:
    transformers on the recipe's device and dtype); `model` is set per model."""
    judge: dict[str, Any] | None = None
    """EngineConfig of the judge model (default: the engine of the search's quality scorer)."""
    judge_max_new_tokens: int = 256
    """Most tokens per judgment (a verdict cut off is retried once, then counted as failed)."""

    def __post_init__(self) -> None:
        if isinstance(self.arms, str):
            self.arms = [a.strip() for a in self.arms.split(",") if a.strip()]
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise UsageError(f"arms must be among {', '.join(ARMS)}; got {', '.join(unknown) or 'none'}")
        if len(set(self.arms)) != len(self.arms):
            raise UsageError("arms: an arm is named twice")
        if {"seed", "evol-instruct", "idea-mcts+"} & set(self.arms) and "idea-mcts" not in self.arms:
            raise UsageError("arms: seed, evol-instruct and idea-mcts+ are compared at idea-mcts's budget and "
                             "seeds: add idea-mcts")
        self.arms = [a for a in ARMS if a in self.arms]
        for name in ("sample_size", "evol_rounds", "winrate_max_new_tokens", "judge_max_new_tokens"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.winrate_limit is not None and self.winrate_limit < 1:
            raise UsageError(f"winrate_limit must be >= 1, got {self.winrate_limit}")


def parse_compare(argv: list[str] | None = None) -> tuple[Any, ...]:
    """(script, sft, model, evolve, eval, compare) arguments from `--config FILE` and flags (TrlParser). A
    multi-process launch is refused first (parsing TRL's config would start its process group)."""
    check_one_process()
    return parse_recipe(argv, extra=(CompareArguments,))


def check_one_process() -> None:
    from idea_mcts.distributed import World

    if World.from_env().size > 1:
        raise UsageError("compare runs in one process (accelerate launch --num_processes 1): its arms, SFTs and "
                         "evaluations are not split across processes")


class Comparison:
    """One comparison over OUT. Construction checks every input and touches nothing."""

    def __init__(self, script_args: Any, sft_args: Any, model_args: Any, evolve_args: EvolveArguments,
                 eval_args: EvalArguments, args: CompareArguments, command: str = "") -> None:
        from idea_mcts.evaluation.alpaca import AlpacaEvalConfig, load_instructions
        from idea_mcts.evaluation.ifeval import data_file
        from idea_mcts.evaluation.judge import JudgeConfig
        from idea_mcts.evolve_plan import read_examples
        from idea_mcts.pipeline import EvolveRun
        from idea_mcts.recipe_checks import check_types

        check_one_process()
        check_types(args)
        if script_args.dataset_name:
            raise UsageError("compare builds its arms from the evolve section's seeds: dataset_name is not used")
        if evolve_args.evolve_config is None:
            raise UsageError("compare needs an evolve section (the seeds and the search settings every arm shares)")
        self.args, self.command = args, command
        self.recipe = Recipe(script_args, sft_args, model_args, evolve_args, eval_args, command, needs_data=False)
        self.out, self.stages, self.model_path = self.recipe.out, self.recipe.stages, self.recipe.model_path
        base_cfg = copy.deepcopy(evolve_args.evolve_config)
        if base_cfg.search.task_actions:
            raise UsageError("the evolve section sets search.task_actions: the idea-mcts arm uses the general "
                             "actions; task-specific ones are the idea-mcts+ arm's (compare's task_examples)")
        # every request an arm makes is a search request: the judge validation is `idea-mcts validate-judge`'s
        base_cfg.reward.check_judges = False
        self.configs: dict[str, Any] = {}
        for arm in (a for a in args.arms if a in EVOLVED_ARMS):
            cfg = copy.deepcopy(base_cfg)
            cfg.output_dir = str(self.arm_dir(arm) / EVOLVE_DIR)
            if arm == "idea-mcts+":
                path = BUILTIN_TASK_EXAMPLES if args.task_examples == "builtin" else Path(args.task_examples)
                cfg.search.task_actions = str(path)
                cfg.search.task_source = args.task_source or (
                    "idea-mcts builtin IFEval-style examples, written for the project (not from an evaluation set)"
                    if args.task_examples == "builtin" else str(path))
                self.task_examples = read_examples(str(path))
            if arm == "evol-instruct":
                cfg.export.mode = "all"  # WizardLM keeps every evolution that passed the filter
            self.configs[arm] = cfg
        self.mcts_run = EvolveRun(self.configs["idea-mcts"], command=command, overwrite=self._changed("idea-mcts")) \
            if "idea-mcts" in self.configs else None
        self.alpaca_cfg = AlpacaEvalConfig(
            source=str(BUILTIN_WINRATE) if args.winrate_source == "builtin" else args.winrate_source,
            limit=args.winrate_limit, max_new_tokens=args.winrate_max_new_tokens, seed=sft_args.seed,
            judge=JudgeConfig(max_new_tokens=args.judge_max_new_tokens))
        self.winrate_items = load_instructions(self.alpaca_cfg)
        quality_engine = base_cfg.role_engine("quality") or "default"
        self.judge_cfg = engine_config(args.judge if args.judge is not None
                                        else asdict(base_cfg.engines[quality_engine]), "judge")
        device = "cpu" if sft_args.use_cpu else "auto"
        dtype = model_args.dtype if model_args.dtype not in (None, "auto") else "float32"
        self.answer_cfg = {"backend": "transformers", "dtype": dtype, "device": device,
                           "max_model_len": 2048, "seed": sft_args.seed, **(args.winrate_engine or {})}
        engine_config(self.answer_cfg, "winrate_engine", model=self.model_path)
        self.clean = self._cleanliness(data_file(eval_args.ifeval_data)) if "idea-mcts+" in self.configs else None
        self.runs: dict[str, dict[str, Any]] = {}
        self.rows: dict[str, Any] = {}
        self.adapters: dict[str, Path] = {}
        self.results: dict[str, dict[str, Any]] = {a: {} for a in args.arms}
        self.times: dict[str, dict[str, Any]] = {}
        self._engines: dict[str, Any] = {}

    def arm_dir(self, arm: str) -> Path:
        return self.out / ARMS_DIR / arm

    def _changed(self, arm: str, settings_fp: str | None = None) -> bool:
        """An arm's OUT holds a run of other settings (then that run is replaced; its request cache is kept)."""
        from idea_mcts.store import RunStore

        state = RunStore(self.arm_dir(arm) / EVOLVE_DIR).state()
        want = settings_fp or self.configs[arm].fingerprint()
        return state is not None and state.get("fingerprint") != want

    def _cleanliness(self, ifeval_path: Path | None) -> dict[str, Any]:
        """Task examples that appear verbatim (whitespace and case aside) in the evaluation sets."""
        def norm(t: str) -> str:
            return " ".join(t.lower().split())

        evaluated = {norm(it.instruction) for it in self.winrate_items}
        if ifeval_path is not None:
            evaluated |= {norm(json.loads(line)["prompt"]) for line in ifeval_path.read_text().splitlines()
                          if line.strip()}
        hits = [e for e in self.task_examples if norm(e) in evaluated]
        if hits:
            logger.warning("%d task examples of idea-mcts+ appear in the evaluation sets: the arm is contaminated",
                           len(hits))
        source = self.configs["idea-mcts+"].search.task_source
        return {"clean": not hits, "examples": len(self.task_examples), "in_evaluation_sets": len(hits),
                "source": source, "checked_against": ["ifeval " + self.recipe.eval_args.ifeval_data
                                                      + (" (hub set not checked offline)" if ifeval_path is None
                                                         else ""), "win-rate instructions"]}

    # -- arms -----------------------------------------------------------------------------------------------
    def build_arms(self) -> dict[str, dict[str, Any]]:
        """Run (or resume, or skip when finished) each evolved arm: idea-mcts first (its requests are the
        budget), then idea-mcts+, then evol-instruct at that budget; the seed arm is idea-mcts's roots."""

        for arm in ("idea-mcts", "idea-mcts+", "evol-instruct"):
            if arm not in self.configs:
                continue
            t0 = time.perf_counter()
            if arm == "idea-mcts":
                run = self.mcts_run
            elif arm == "idea-mcts+":
                budget = self.budget()
                overwrite = self._changed(arm, budgeted_fingerprint(self.configs[arm], budget))
                run = BudgetedMCTSRun(self.configs[arm], budget, command=self.command, overwrite=overwrite)
            else:
                settings = EvolInstructSettings(rounds=self.args.evol_rounds, budget=self.budget())
                overwrite = self._changed(arm, evol_fingerprint(self.configs[arm], settings))
                run = EvolInstructRun(self.configs[arm], settings, command=self.command, overwrite=overwrite)
            skipped = run.mode == "finished"
            self.runs[arm] = run.execute(progress=True)
            record_time(self.times, self.out, f"evolve_{arm}", t0, skipped)
        return self.runs

    def budget(self) -> int:
        """B: the idea-mcts arm's requests to the evolver, responder and scorers."""
        return arm_budget(self.runs["idea-mcts"])["requests"]

    def training_sets(self) -> dict[str, Any]:
        """Each arm's rows sampled to the same size n = min(sample_size, the smallest arm's rows); saved under
        arms/ARM/train (skipped when done for the same data and n)."""
        from datasets import load_from_disk

        pools: dict[str, Any] = {}
        for arm in self.args.arms:
            if arm == "seed":
                pools[arm] = seed_rows(self.arm_dir("idea-mcts") / EVOLVE_DIR)
            else:
                pools[arm] = FinishedRun(self.arm_dir(arm) / EVOLVE_DIR).dataset()
        self.pool_sizes = {a: len(p) for a, p in pools.items()}
        self.n = min(self.args.sample_size, *self.pool_sizes.values())
        if self.n < 1:
            empty = [a for a, k in self.pool_sizes.items() if k == 0]
            raise UsageError(f"arm(s) {', '.join(empty)} produced no training rows: nothing to compare (see their "
                             "run.json `filtered` and `warnings`)")
        if self.n < self.args.sample_size:
            logger.warning("every arm is sampled to %d rows (the smallest arm has %d; sample_size is %d)", self.n,
                           min(self.pool_sizes.values()), self.args.sample_size)
        for arm, pool in pools.items():
            src = self.runs["idea-mcts" if arm == "seed" else arm]["config_fingerprint"]
            fp = fingerprint(src, arm, self.n, self.args.sample_seed)
            stages, t0, path = Stages(self.arm_dir(arm)), time.perf_counter(), self.arm_dir(arm) / ARM_TRAIN_DIR
            if stages.done("train_set", fp) is None:
                rows = sample_rows(pool, self.n, self.args.sample_seed)
                with atomic_dir(path) as tmp:
                    rows.save_to_disk(str(tmp))
                stages.finish("train_set", fp, time.perf_counter() - t0, [ARM_TRAIN_DIR], rows=self.n)
            self.rows[arm] = load_from_disk(str(path))
            self.results[arm]["train_fp"] = fp
        return self.rows

    # -- training --------------------------------------------------------------------------------------------
    def arm_recipe(self, arm: str) -> Recipe:
        """The recipe's sft stage on OUT/arms/ARM with the comparison's SFT and model settings."""
        r = self.recipe
        sft = copy.copy(r.sft_args)
        sft.output_dir = str(self.arm_dir(arm))
        return Recipe(r.script, sft, copy.copy(r.model_args), r.evolve_args, r.eval_args, self.command,
                      needs_data=False)

    def train(self) -> dict[str, Path]:
        for arm in self.args.arms:
            rec = self.arm_recipe(arm)
            rec.data_fp = self.results[arm]["train_fp"]
            self.adapters[arm] = rec.sft(self.rows[arm])
            self.results[arm]["sft"] = {k: rec.info["sft"].get(k) for k in
                                        ("metrics", "global_step", "num_input_tokens_seen", "lora_b_norm")}
            self.results[arm]["sft"]["loss"] = [(h["step"], h["loss"]) for h in rec.info["sft"]["log_history"]
                                                if "loss" in h and "step" in h]
            self.times[f"sft_{arm}"] = rec.times["sft"]
        return self.adapters

    # -- evaluation ------------------------------------------------------------------------------------------
    def evaluate(self) -> None:
        self.evaluate_ifeval()
        self.evaluate_winrate()
        self.close_engines()

    def _stage(self, stages: Stages, name: str, fp: str, path: Path, run: Any) -> Any:
        """Run a stage that writes one JSON file, or read that file when the stage is done for `fp`."""
        t0, label = time.perf_counter(), name if stages.out == self.out else f"{name}_{stages.out.name}"
        if (m := stages.done(name, fp)) is not None:
            record_time(self.times, self.out, label, t0, True, m)
            return json.loads(path.read_text())
        value = run()
        write_json(path, value)
        m = stages.finish(name, fp, time.perf_counter() - t0, [str(path.relative_to(stages.out))])
        record_time(self.times, self.out, label, t0, False, m)
        return value

    def evaluate_ifeval(self) -> None:
        """IFEval for the base model once, and for each arm's adapter."""
        from idea_mcts.evaluation.ifeval import run_ifeval

        settings = self.recipe.ifeval_settings()
        work = self.out / EVAL_WORK
        self.ifeval_base = self._stage(self.stages, "ifeval_base", fingerprint(self.model_path, settings),
                                       self.out / eval_file("ifeval_base"),
                                       lambda: run_ifeval(self.model_path, settings, workdir=work))
        for arm in self.args.arms:
            adapter = self.adapters[arm]
            fp = fingerprint(self.model_path, settings, file_digest(adapter / "adapter_model.safetensors"))
            self.results[arm]["ifeval"] = self._stage(
                Stages(self.arm_dir(arm)), "ifeval", fp, self.arm_dir(arm) / eval_file("ifeval"),
                lambda adapter=adapter: run_ifeval(self.model_path, settings, adapter=str(adapter), workdir=work))

    def engine(self, name: str, cfg: Any) -> Any:
        from idea_mcts.engines import build_engine

        if name not in self._engines:
            self._engines[name] = build_engine(cfg)
        return self._engines[name]

    def close_engines(self) -> None:
        for e in self._engines.values():
            e.close()
        self._engines.clear()

    def evaluate_winrate(self) -> None:
        """The AlpacaEval-style win rate of each arm's tuned model against the base model's answers (answered
        once), judged in both orders by the judge model."""
        from idea_mcts.evaluation.alpaca import generate_outputs, judge_win_rate
        from idea_mcts.evaluation.judge import Judge
        from idea_mcts.evaluation.serving import merge_adapter

        instructions = [it.instruction for it in self.winrate_items]
        base_cfg = engine_config(self.answer_cfg, "winrate_engine", model=self.model_path)
        base_fp = fingerprint(base_cfg, self.alpaca_cfg, instructions)

        def answer_base() -> dict[str, Any]:
            outs, usage = generate_outputs(self.engine("base", base_cfg), instructions, self.alpaca_cfg, "base")
            self.close_engines()
            return {"outputs": outs, "usage": usage.as_dict()}

        base = self._stage(self.stages, "winrate_base", base_fp, self.out / eval_file("winrate_base"), answer_base)
        for arm in self.args.arms:
            adapter = self.adapters[arm]
            weights = file_digest(adapter / "adapter_model.safetensors")
            fp = fingerprint(base_fp, base["outputs"], self.judge_cfg, weights)

            def run(arm: str = arm, adapter: Path = adapter) -> dict[str, Any]:
                merged = merge_adapter(adapter, self.arm_dir(arm) / MERGED_DIR, base_model=self.model_path)
                tuned_cfg = engine_config(self.answer_cfg, "winrate_engine", model=str(merged))
                tuned = build_engine_once(tuned_cfg)
                try:
                    outs, usage = generate_outputs(tuned, instructions, self.alpaca_cfg, arm)
                finally:
                    tuned.close()
                judge = Judge(self.engine("judge", self.judge_cfg), self.alpaca_cfg.judge)
                res = judge_win_rate(judge, instructions, outs, base["outputs"], self.alpaca_cfg)
                return {**res, "model": arm, "reference": "base model", "judge_engine": asdict(self.judge_cfg),
                        "usage": {"outputs": usage.as_dict(), "judge": judge.usage.as_dict()}}

            self.results[arm]["winrate"] = self._stage(Stages(self.arm_dir(arm)), "winrate", fp,
                                                       self.arm_dir(arm) / eval_file("winrate"), run)

    # -- report ----------------------------------------------------------------------------------------------
    def report_dict(self) -> dict[str, Any]:
        from idea_mcts.compare_report import summarize

        return summarize(self)

    def report(self) -> Path:
        from idea_mcts.compare_report import write_report

        return write_report(self.out, self.report_dict())


def build_engine_once(cfg: Any) -> Any:
    """An engine for one use (the caller closes it)."""
    from idea_mcts.engines import build_engine

    return build_engine(cfg)
