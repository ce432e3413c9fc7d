"""One output schema for every benchmark of `eval/`: `OUT/eval/<bench>.json` and a markdown table beside it.

    check_result_paths(out, "ifeval")                     # before any work: OUT and both files can be written
    result = ifeval_result(run_ifeval(model, settings, adapter=adapter), model, adapter)
    write_result(out, "ifeval", result, metrics_table(result["metrics"]))

The JSON (`write_result` adds `bench` and `date`):

    {"bench": "ifeval", "model": "...", "adapter": null | "...",
     "settings": {...what the benchmark ran with...},
     "metrics": {"name": {"value": 0.41, "ci95": [0.33, 0.49] | null, "n": 100, ...}},
     "counts": {...items, judgments, failures...},
     "date": "2026-12-07T18:40:00+00:00",
     "details": {...the benchmark's own result: samples, rows, answers...}}

`ci95` is a 95% interval: bootstrap percentiles for the judged benchmarks and the data-quality differences
(`idea_mcts.evaluation.stats`), value +- 1.96 standard errors (lm-eval's) for IFEval, null where none is defined.
Failed judgments are counted in `counts` and left out of every metric. The builders below turn each benchmark's
result dict into this shape; nothing else in OUT is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from idea_mcts.errors import UsageError
from idea_mcts.run_files import EVAL_DIR, atomic_write, eval_file, now, write_json

RESULTS_DIR = EVAL_DIR
"""The folder of OUT the results go to."""
REQUIRED = ("model", "adapter", "settings", "metrics", "counts")
"""Keys every result passed to `write_result` holds."""
IFEVAL_LABELS = {"prompt_level_strict_acc": "prompt-level strict", "inst_level_strict_acc": "instruction-level strict",
                 "prompt_level_loose_acc": "prompt-level loose", "inst_level_loose_acc": "instruction-level loose"}


def result_paths(out_dir: str | Path, bench: str) -> tuple[Path, Path]:
    """(OUT/eval/<bench>.json, OUT/eval/<bench>.md)."""
    return Path(out_dir) / eval_file(bench), Path(out_dir) / eval_file(bench, ".md")


def check_result_paths(out_dir: str | Path, bench: str) -> None:
    """OUT is a directory or can be made one (as the recipes check it), and the bench's two files are not
    directories: UsageError before any work."""
    from idea_mcts.evolve_plan import check_output_dir

    out = Path(out_dir)
    check_output_dir(out)
    if (out / RESULTS_DIR).exists() and not (out / RESULTS_DIR).is_dir():
        raise UsageError(f"output_dir {out}: {RESULTS_DIR} exists and is not a directory")
    for path in result_paths(out, bench):
        if path.is_dir():
            raise UsageError(f"output_dir {out}: {path.relative_to(out)} is a directory")


def write_result(out_dir: str | Path, bench: str, result: dict[str, Any], table_md: str) -> Path:
    """Write `result` (with `bench` and the date added) to OUT/eval/<bench>.json and `table_md` under a title to
    OUT/eval/<bench>.md, each atomically; returns the JSON's path."""
    missing = [k for k in REQUIRED if k not in result]
    if missing:
        raise ValueError(f"write_result({bench!r}): the result lacks {', '.join(missing)}")
    record = {"bench": bench, **{k: result[k] for k in REQUIRED},
              "date": now(),
              **{k: v for k, v in result.items() if k not in REQUIRED}}
    json_path, md_path = result_paths(out_dir, bench)
    write_json(json_path, record)
    model = f"`{record['model']}`" + (f" + adapter `{record['adapter']}`" if record["adapter"] else "")
    counts = ", ".join(f"{k} {v}" for k, v in record["counts"].items() if isinstance(v, int | float | str))
    atomic_write(md_path, f"# {bench}\n\nmodel: {model}  \ndate: {record['date']}  \ncounts: {counts or '-'}\n\n"
                          f"{table_md.rstrip()}\n")
    return json_path


def metric(value: float | None, ci95: list[float] | None = None, n: int | None = None, **extra: Any
           ) -> dict[str, Any]:
    """One metric entry of the schema."""
    return {"value": value, "ci95": ci95, "n": n, **extra}


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """The markdown table of a result's metrics: value, 95% CI, n."""
    lines = ["| metric | value | 95% CI | n |", "|---|---|---|---|"]
    for name, m in metrics.items():
        ci = m.get("ci95")
        lines.append(f"| {name} | {_num(m.get('value'))} | {'-' if not ci else f'[{ci[0]:.3f}, {ci[1]:.3f}]'} | "
                     f"{_num(m.get('n'))} |")
    return "\n".join(lines)


# -- builders: each benchmark's result -> the schema --------------------------------------------------------
def _normal_ci(value: float | None, stderr: float | None) -> list[float] | None:
    if value is None or stderr is None:
        return None
    return [round(max(0.0, value - 1.96 * stderr), 4), round(min(1.0, value + 1.96 * stderr), 4)]


def ifeval_result(res: dict[str, Any], model: str, adapter: str | None) -> dict[str, Any]:
    """`idea_mcts.evaluation.ifeval.run_ifeval`'s result (`model`: the name the model was given by)."""
    from idea_mcts.evaluation.ifeval import METRICS

    metrics = {}
    for m in METRICS:
        n = sum(len(s[m]) if isinstance(s[m], list) else 1 for s in res["samples"]) if m.startswith("inst") \
            else res["num_prompts"]
        value, se = res["metrics"].get(m), res["metrics"].get(f"{m}_stderr")
        metrics[m] = metric(value, _normal_ci(value, se), n, stderr=se)
    return {"model": model, "adapter": adapter, "settings": res["settings"], "metrics": metrics,
            "counts": {"prompts": res["num_prompts"]}, "details": {"task": res["task"], "samples": res["samples"]}}


def _summary(s: dict[str, Any], key: str = "score", ci: str = "ci95") -> dict[str, Any]:
    return metric(s.get(key), s.get(ci), s.get("n"))


def mtbench_result(res: dict[str, Any], model: str, adapter: str | None) -> dict[str, Any]:
    """`mtbench.run_single` or `run_pairwise`'s result (the evaluated model is model A in pairwise mode)."""
    if res["mode"] == "single":
        metrics = {"score": _summary(res),
                   **{f"score_{t}": _summary(v) for t, v in res["per_turn"].items()},
                   **{f"score_{c}": _summary(v) for c, v in res["per_category"].items()}}
        counts = {"questions": res["questions"], "judgments": res["judgments"], "failed": res["failed"],
                  "verdicts": res["verdicts"]}
    else:
        metrics = {"win_rate": _summary(res, "win_rate", "win_rate_ci95"),
                   **{f"win_rate_{t}": _summary(v, "win_rate", "win_rate_ci95") for t, v in res["per_turn"].items()},
                   "consistency": metric(res["consistency"], None, res["n"])}
        counts = {"questions": res["questions"], "judgments": res["judgments"],
                  **{k: res[k] for k in ("wins", "ties", "losses", "inconsistent", "failed")},
                  "verdicts": res["verdicts"]}
    settings = {"mode": res["mode"], "judge": res["judge"], **res["config"]}
    if res["mode"] == "pairwise":
        settings["baseline"] = res["model_b"]
    return {"model": model, "adapter": adapter, "settings": settings, "metrics": metrics, "counts": counts,
            "details": {k: res[k] for k in ("data_source", "usage", "answers", "rows")}}


def alpaca_result(res: dict[str, Any], model: str, adapter: str | None) -> dict[str, Any]:
    """`alpaca.run_alpaca_eval`'s result."""
    metrics = {"win_rate": _summary(res, "win_rate", "win_rate_ci95"),
               "length_controlled_win_rate": metric(res["length_controlled_win_rate"], None, res["n"]),
               "consistency": metric(res["consistency"], None, res["n"]),
               "avg_length": metric(res["avg_length"], None, res["instructions"]),
               "avg_reference_length": metric(res["avg_reference_length"], None, res["instructions"])}
    counts = {"instructions": res["instructions"], "judgments": res["judgments"],
              **{k: res[k] for k in ("wins", "ties", "losses", "inconsistent", "failed")}, "verdicts": res["verdicts"]}
    settings = {"judge": res["judge"], "reference_generators": res["reference_generators"], **res["config"]}
    return {"model": model, "adapter": adapter, "settings": settings, "metrics": metrics, "counts": counts,
            "details": {"usage": res["usage"], "rows": res["rows"]}}


def judge_check_result(report: dict[str, Any], model: str, adapter: str | None, settings: dict[str, Any]
                       ) -> dict[str, Any]:
    """`judge_check.validate_config`'s report (the model under test is the judge)."""
    metrics = {}
    for c in report["checks"]:
        name = f"{c['judge']}.{c['metric']}" + ("" if c["split"] == "tuned" else f" ({c['split']})")
        metrics[name] = metric(c["value"], None, c["n"], threshold=c["threshold"], passed=c["passed"],
                               unparsed=c["unparsed"])
    counts = {"checks": len(report["checks"]), "failed": len(report["failed"]),
              "unparsed": sum(c["unparsed"] for c in report["checks"])}
    return {"model": model, "adapter": adapter, "settings": {**settings, "quick": report["quick"]},
            "metrics": metrics, "counts": counts, "passed": report["passed"], "failed": report["failed"],
            "details": report}


def data_quality_result(figures: dict[str, Any], model: str, adapter: str | None, settings: dict[str, Any]
                        ) -> dict[str, Any]:
    """`data_quality.data_quality`'s figures (the model under test is the held-out judge): rows minus seeds per
    score with its paired bootstrap CI (n = seeds), broken rows, diversity."""
    from idea_mcts.evaluation.data_quality import QUALITY_KEYS

    metrics = {}
    for key in (*QUALITY_KEYS, "complexity_adj_within_seed"):
        f = figures[key]
        metrics[f"{key}_diff"] = metric(f["mean_diff"], f["ci95"], f["seeds"], seed_mean=f.get("seed_mean"),
                                        row_mean=f.get("row_mean"))
    metrics["broken_rows_rate"] = metric(figures["broken_rows"]["rate"], None, figures["rows"])
    for group in ("seeds", "rows"):
        for k, v in figures["diversity"][group].items():
            metrics[f"{k}_{group}"] = metric(v, None, figures[group])
    counts = {"seeds": figures["seeds"], "rows": figures["rows"], "broken_rows": figures["broken_rows"]["count"],
              "broken_by_reason": figures["broken_rows"]["by_reason"]}
    return {"model": model, "adapter": adapter, "settings": {**settings, "judge": figures["judge"]},
            "metrics": metrics, "counts": counts, "details": figures}


def ifeval_table(result: dict[str, Any]) -> str:
    """IFEval's table: the four accuracies with their standard errors and CIs."""
    lines = ["| IFEval metric | value | ± stderr | 95% CI | n |", "|---|---|---|---|---|"]
    for key, label in IFEVAL_LABELS.items():
        m = result["metrics"][key]
        ci = m["ci95"]
        lines.append(f"| {label} | {_num(m['value'])} | {_num(m['stderr'])} | "
                     f"{'-' if not ci else f'[{ci[0]:.3f}, {ci[1]:.3f}]'} | {m['n']} |")
    return "\n".join(lines)


def data_quality_table(result: dict[str, Any]) -> str:
    """The data-quality table: seeds, rows and rows - seeds (paired bootstrap 95% CI over seeds) per score."""
    lines = ["| score | seeds | rows | rows - seeds | 95% CI | seeds compared |", "|---|---|---|---|---|---|"]
    for name, m in result["metrics"].items():
        if not name.endswith("_diff"):
            continue
        ci, value = m["ci95"], m["value"]
        lines.append(f"| {name.removesuffix('_diff')} | {_num(m.get('seed_mean'))} | {_num(m.get('row_mean'))} | "
                     f"{'-' if value is None else f'{value:+.3f}'} | "
                     f"{'-' if not ci else f'[{ci[0]:+.3f}, {ci[1]:+.3f}]'} | {m['n']} |")
    other = {k: v for k, v in result["metrics"].items() if not k.endswith("_diff")}
    return "\n".join(lines) + "\n\n" + metrics_table(other)
