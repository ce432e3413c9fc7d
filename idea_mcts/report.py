"""The recipe's report: OUT/report.json (everything), OUT/report.md (tables a person reads) and PNG plots
under OUT/plots (data quality of the seeds vs the training rows, training loss per step, IFEval base vs tuned
with standard errors)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from idea_mcts.run_files import PLOTS_DIR, RECIPE_REPORT, RECIPE_REPORT_MD, atomic_write

logger = logging.getLogger(__name__)

METRIC_NAMES = {"prompt_level_strict_acc": "prompt-level strict", "inst_level_strict_acc": "instruction-level strict",
                "prompt_level_loose_acc": "prompt-level loose", "inst_level_loose_acc": "instruction-level loose"}
SCORES = ("quality", "complexity", "diversity")


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def headline_table(report: dict[str, Any]) -> str:
    """The IFEval table, base vs tuned, value ± standard error (markdown)."""
    ev = report.get("eval")
    if not ev:
        return "(no evaluation)"
    lines = ["| IFEval metric | base | tuned | tuned - base |", "|---|---|---|---|"]
    for key, label in METRIC_NAMES.items():
        b, t = ev["base"].get(key), ev["tuned"].get(key)
        cells = [f"{_f(m.get(key))} ± {_f(m.get(f'{key}_stderr'))}" for m in (ev["base"], ev["tuned"])]
        delta = f"{t - b:+.3f}" if b is not None and t is not None else "n/a"
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {delta} |")
    return "\n".join(lines)


def loss_curve(report: dict[str, Any]) -> list[tuple[int, float]]:
    """(step, training loss) from the trainer's log history."""
    hist = (report.get("sft") or {}).get("log_history") or []
    return [(h["step"], h["loss"]) for h in hist if "loss" in h and "step" in h]


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def make_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes by file name: data.png, loss.png, ifeval.png (those with something to show)."""
    plt = pyplot()
    out: dict[str, bytes] = {}
    means = (report.get("data") or {}).get("means") or {}
    if means.get("rows"):
        fig, ax = plt.subplots(figsize=(5, 3))
        xs = range(len(SCORES))
        for i, (who, vals) in enumerate((("seeds", means.get("seeds") or {}), ("training rows", means["rows"]))):
            ax.bar([x + 0.4 * i for x in xs], [vals.get(s) or 0.0 for s in SCORES], width=0.4, label=who)
        ax.set_xticks([x + 0.2 for x in xs], SCORES)
        ax.set_title("data quality: seeds vs training rows (means)")
        ax.legend()
        out["data.png"] = png(fig)
    curve = loss_curve(report)
    if curve:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot([s for s, _ in curve], [v for _, v in curve], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("SFT training loss")
        out["loss.png"] = png(fig)
    ev = report.get("eval")
    if ev:
        fig, ax = plt.subplots(figsize=(6, 3))
        keys = list(METRIC_NAMES)
        for i, who in enumerate(("base", "tuned")):
            vals = [ev[who].get(k) or 0.0 for k in keys]
            errs = [ev[who].get(f"{k}_stderr") or 0.0 for k in keys]
            ax.bar([x + 0.4 * i for x in range(len(keys))], vals, width=0.4, yerr=errs, capsize=3, label=who)
        ax.set_xticks([x + 0.2 for x in range(len(keys))], [METRIC_NAMES[k].replace(" ", "\n", 1) for k in keys],
                      fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"IFEval ({ev.get('num_prompts')} prompts), ± standard error")
        ax.legend()
        out["ifeval.png"] = png(fig)
    return out


def render_markdown(report: dict[str, Any], plots: list[str]) -> str:
    data, sft, ev = report.get("data") or {}, report.get("sft") or {}, report.get("eval") or {}
    parts = ["# idea-mcts recipe report", "", f"Command: `{report.get('command', '')}`", "",
             f"Model: `{report.get('model')}`", ""]
    if ev:
        s = ev["settings"]
        parts += [f"## IFEval: base vs tuned ({ev['num_prompts']} prompts, data `{s['data']}`, "
                  f"max_gen_toks {s['max_gen_toks'] or 1280})", "", headline_table(report), ""]
        c = ev.get("checks") or {}
        parts += [f"Adapter checks: LoRA B norm {_f(c.get('lora_b_norm'), 4)}; tuned answers differ from the base "
                  f"model's on {c.get('outputs_differ')} of {c.get('outputs_compared')} prompts.", ""]
    if data:
        means = data.get("means") or {}
        parts += ["## Data", "", f"Source: {data.get('kind')} "
                  f"(`{data.get('dataset_name') or data.get('output_dir')}`), {data.get('rows')} training rows.", "",
                  "| mean | seeds | training rows |", "|---|---|---|"]
        for s in SCORES:
            parts.append(f"| {s} | {_f((means.get('seeds') or {}).get(s))} | {_f((means.get('rows') or {}).get(s))} |")
        parts.append("")
    if sft:
        curve = loss_curve(report)
        m = sft.get("metrics") or {}
        parts += ["## Training", "", f"{sft.get('global_step')} steps; first / last logged loss "
                  f"{_f(curve[0][1] if curve else None)} / {_f(curve[-1][1] if curve else None)}; "
                  f"train_runtime {_f(m.get('train_runtime'), 1)} s"
                  + (f"; resumed from `{sft['resumed_from']}`" if sft.get("resumed_from") else "") + ".", ""]
    parts += ["## Stages", "", "| stage | status | seconds (this launch) | seconds (when it ran) |",
              "|---|---|---|---|"]
    for name, t in (report.get("stages") or {}).items():
        parts.append(f"| {name} | {t['status']} | {t['seconds']} | {_f(t.get('original_seconds'), 2)} |")
    parts.append("")
    parts += [f"![{p}](plots/{p})" for p in plots] + [""]
    parts += ["## Config", "", "```json", json.dumps(report.get("config"), indent=1, default=str), "```", ""]
    return "\n".join(parts)


def write_plots(out: Path, plots: dict[str, bytes]) -> None:
    """OUT/plots/<name>, each written atomically."""
    (out / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    for name, data in plots.items():
        tmp = out / PLOTS_DIR / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(out / PLOTS_DIR / name)


def write_recipe_report(out: Path, report: dict[str, Any]) -> Path:
    """Write OUT/report.json, OUT/report.md and OUT/plots/*.png (each atomically); returns report.md's path."""
    plots = make_plots(report)
    write_plots(out, plots)
    atomic_write(out / RECIPE_REPORT, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    md = out / RECIPE_REPORT_MD
    atomic_write(md, render_markdown(report, sorted(plots)))
    return md
