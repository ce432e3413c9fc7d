"""AlpacaEval-style pairwise win rate against reference outputs, with a judge model behind any engine.

For each instruction the judge compares the evaluated model's output with the reference output, once with the
model's output shown first and once second (position bias cancels as in MT-Bench pairwise); both orders agreeing
is a win or a loss, anything else a tie. Reported: the win rate (ties half, as AlpacaEval counts them) with its
bootstrap 95% CI, wins/ties/losses, failures (unparsable after one retry, left out), the average output length
of the model and of the reference (characters, as AlpacaEval measures it), and a length-controlled win rate
(`stats.length_controlled_win_rate`: AlpacaEval 2's length control without its instruction-difficulty term).

The judge prompt is the project's own (AlpacaEval's judges are API models with their own prompt formats); its
verdict format is MT-Bench's `[[A]]`/`[[B]]`/`[[C]]`.

Where the instructions and references come from (`AlpacaEvalConfig.source`):

- `hub` (default for real users): `tatsu-lab/alpaca_eval` from the Hub, the 805 instructions with the reference
  outputs of `hub_file` (`alpaca_eval_gpt4_baseline.json`: GPT-4 Turbo, AlpacaEval 2.0; `alpaca_eval.json`:
  text-davinci-003, AlpacaEval 1.0);
- `builtin` (offline): 12 everyday instructions written for this project (`idea_mcts/data/compare/`), without
  reference outputs: a reference model writes them;
- a local JSON / JSONL file (offline): rows with `instruction` and, optionally, the reference in `output`.
  Rows without a reference get one from a reference model (`reference_engine`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from idea_mcts.config import RoleConfig
from idea_mcts.engines.base import Engine, Messages, UsageStats
from idea_mcts.errors import UsageError
from idea_mcts.evaluation.judge import (
    OUTCOME_SCORE,
    Judge,
    JudgedBenchConfig,
    combine_orders,
    summarize_pairwise,
)
from idea_mcts.evaluation.stats import length_controlled_win_rate
from idea_mcts.roles import RoleClient

logger = logging.getLogger(__name__)

BUILTIN_INSTRUCTIONS = Path(__file__).resolve().parents[1] / "data" / "compare" / "winrate_instructions.jsonl"
"""`source: builtin`: 12 everyday instructions written for this project (no reference outputs)."""

JUDGE_SYSTEM = (
    "You are a careful and impartial judge of AI assistants. You compare two outputs written for the same "
    "instruction and decide which one a thoughtful human would prefer: the one that follows the instruction "
    "more precisely and is more helpful, accurate and harmless. Judge the content only: neither the order in "
    "which the outputs are shown nor their length should influence you.")
JUDGE_TEMPLATE = (
    "[Instruction]\n{instruction}\n\n"
    "[The Start of Output A]\n{output_a}\n[The End of Output A]\n\n"
    "[The Start of Output B]\n{output_b}\n[The End of Output B]\n\n"
    "Compare the two outputs in a few sentences, then give your final verdict on the last line, strictly in "
    "this format: \"[[A]]\" if output A is better, \"[[B]]\" if output B is better, \"[[C]]\" for a tie.")


@dataclass
class AlpacaEvalConfig(JudgedBenchConfig):
    """Which instructions and references and how the models answer (`JudgedBenchConfig`: limit, judge, seed)."""

    bench: ClassVar[str] = "alpaca_eval"

    source: str = "hub"
    """`hub` (`hub_repo` / `hub_file`), `builtin` (12 instructions shipped with idea-mcts, no references) or the
    path of a local JSON / JSONL file with `instruction` and, optionally, the reference output in `output`."""
    hub_repo: str = "tatsu-lab/alpaca_eval"
    """source=hub: the dataset repository."""
    hub_file: str = "alpaca_eval_gpt4_baseline.json"
    """source=hub: the file of instructions + reference outputs (AlpacaEval 2.0's GPT-4 Turbo baseline; use
    `alpaca_eval.json` for AlpacaEval 1.0's text-davinci-003 references)."""
    hub_revision: str | None = None
    """source=hub: branch, tag or commit."""
    max_new_tokens: int = 2048
    """Most tokens per output (of the model, and of a reference model when one writes the references)."""
    temperature: float = 0.7
    """Output sampling temperature of the evaluated (and reference) model."""
    top_p: float = 1.0
    """Output nucleus sampling mass."""


@dataclass
class AlpacaItem:
    """One instruction and its reference output (None until a reference model writes one)."""

    instruction: str
    reference: str | None = None
    reference_generator: str | None = None
    dataset: str | None = None


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read instruction file {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON{' lines' if path.suffix == '.jsonl' else ''} "
                         f"({exc.msg} at line {exc.lineno})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UsageError(f"{path}: expected a list of objects with an 'instruction' field")
    return rows


def load_instructions(cfg: AlpacaEvalConfig) -> list[AlpacaItem]:
    """The instructions (first `limit`) with their reference outputs where the source has them."""
    if cfg.source == "hub":
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            path = Path(hf_hub_download(cfg.hub_repo, cfg.hub_file, repo_type="dataset", revision=cfg.hub_revision))
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
            raise UsageError(f"cannot download {cfg.hub_file} from dataset {cfg.hub_repo!r}: "
                             f"{str(exc).splitlines()[0]}") from None
    else:
        path = BUILTIN_INSTRUCTIONS if cfg.source == "builtin" else Path(cfg.source)
        if not path.is_file():
            raise UsageError(f"alpaca_eval source must be 'hub', 'builtin' or an instruction file; {cfg.source!r} "
                             "is none")
    rows = _read_rows(path)
    items = []
    for i, row in enumerate(rows[: cfg.limit] if cfg.limit else rows):
        if not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
            raise UsageError(f"{path}: row {i} has no 'instruction' text")
        ref = row.get("output")
        items.append(AlpacaItem(instruction=row["instruction"], reference=ref if isinstance(ref, str) else None,
                                reference_generator=row.get("generator") if isinstance(ref, str) else None,
                                dataset=row.get("dataset")))
    if not items:
        raise UsageError(f"{path}: no instructions")
    return items


def generate_outputs(engine: Engine, instructions: list[str], cfg: AlpacaEvalConfig, model_name: str = "model"
                     ) -> tuple[list[str], UsageStats]:
    """One output per instruction from the model behind `engine` (one batch; the model's chat template)."""
    client = RoleClient(f"output:{model_name}", engine, RoleConfig(
        engine=None, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p), cfg.seed)
    outs = client.generate([[{"role": "user", "content": t}] for t in instructions],
                           [f"alpaca:{i}" for i in range(len(instructions))])
    return [g.text.strip() for g in outs], client.stats


def judge_prompt(instruction: str, output_a: str, output_b: str) -> Messages:
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_TEMPLATE.format(instruction=instruction, output_a=output_a,
                                                               output_b=output_b)}]


def judge_win_rate(judge: Judge, instructions: list[str], outputs: list[str], references: list[str],
                   cfg: AlpacaEvalConfig) -> dict[str, Any]:
    """Win rate of `outputs` against `references` (one per instruction), each pair judged in both orders."""
    if not (len(instructions) == len(outputs) == len(references)):
        raise ValueError("judge_win_rate: one output and one reference per instruction")
    prompts, keys = [], []
    for i, (inst, out, ref) in enumerate(zip(instructions, outputs, references, strict=True)):
        prompts += [judge_prompt(inst, out, ref), judge_prompt(inst, ref, out)]
        keys += [f"alpaca:{i}:model_first", f"alpaca:{i}:reference_first"]
    before = judge.counts.as_dict()
    verdicts = judge.choices(prompts, keys)
    rows = []
    for i, inst in enumerate(instructions):
        first, second = verdicts[2 * i], verdicts[2 * i + 1]
        outcome, consistent = combine_orders(first.value, second.value)
        rows.append({"index": i, "instruction": inst, "output": outputs[i], "reference": references[i],
                     "outcome": outcome, "consistent": consistent, "verdict_model_first": first.value,
                     "verdict_reference_first": second.value, "judgment_model_first": first.text,
                     "judgment_reference_first": second.text})
    summary = summarize_pairwise([r["outcome"] for r in rows], [r["consistent"] for r in rows], seed=cfg.seed)
    done = [r for r in rows if r["outcome"] is not None]
    lc = (length_controlled_win_rate([OUTCOME_SCORE[r["outcome"]] for r in done], [len(r["output"]) for r in done],
                                     [len(r["reference"]) for r in done]) if done else None)
    return {"benchmark": "alpaca-eval-style", "judge": judge.engine.model_id, "instructions": len(rows),
            "judgments": len(prompts), **summary,
            "length_controlled_win_rate": round(lc, 4) if lc is not None else None,
            "avg_length": round(sum(len(o) for o in outputs) / len(outputs), 2),
            "avg_reference_length": round(sum(len(r) for r in references) / len(references), 2),
            "verdicts": {k: v - before[k] for k, v in judge.counts.as_dict().items()}, "rows": rows}


def run_alpaca_eval(model: Engine, judge_engine: Engine, cfg: AlpacaEvalConfig | None = None, *,
                    reference_engine: Engine | None = None, model_name: str = "model",
                    reference_name: str = "reference") -> dict[str, Any]:
    """Outputs of `model` on the instructions, references from the source (or from `reference_engine` for rows
    without one), judged in both orders: the result of `judge_win_rate` plus usage and where the references
    came from."""
    cfg = cfg or AlpacaEvalConfig()
    items = load_instructions(cfg)
    missing = [i for i, it in enumerate(items) if it.reference is None]
    ref_usage = UsageStats()
    if missing:
        if reference_engine is None:
            raise UsageError(f"{len(missing)} of {len(items)} instructions have no reference output ('output'): "
                             "give a reference model to write them")
        outs, ref_usage = generate_outputs(reference_engine, [items[i].instruction for i in missing], cfg,
                                           reference_name)
        for i, text in zip(missing, outs, strict=True):
            items[i].reference, items[i].reference_generator = text, reference_name
    instructions = [it.instruction for it in items]
    outputs, usage = generate_outputs(model, instructions, cfg, model_name)
    judge = Judge(judge_engine, cfg.judge)
    result = judge_win_rate(judge, instructions, outputs, [it.reference or "" for it in items], cfg)
    generators = sorted({it.reference_generator or "unknown" for it in items})
    return {**result, "model": model_name, "reference_generators": generators, "config": asdict(cfg),
            "usage": {"outputs": usage.as_dict(), "references": ref_usage.as_dict(),
                      "judge": judge.usage.as_dict()}}
