"""The comparison's report: tables (OUT/compare.md), every figure (OUT/compare.json), bar charts (OUT/plots/).

Figures per arm: the request budget (requests and tokens of the evolver, responder and scorers), data quality
(mean score of the training rows with bootstrap 95% CIs), IFEval, the judge win rate against the base model,
and the paired bootstrap 95% CI of each arm's difference to the `seed` arm (data: paired by seed; IFEval: by
prompt; win rate: by instruction).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from idea_mcts.baselines import arm_budget
from idea_mcts.evaluation.stats import bootstrap_mean_ci, paired_bootstrap_diff_ci
from idea_mcts.report import png, pyplot, write_plots
from idea_mcts.run_files import COMPARE_REPORT, COMPARE_REPORT_MD, atomic_write, write_json
from idea_mcts.scoring import PAPER_SCORES, SCORE_NAMES

IFEVAL_METRICS = {"prompt_level_strict_acc": "prompt strict", "inst_level_strict_acc": "instruction strict",
                  "prompt_level_loose_acc": "prompt loose", "inst_level_loose_acc": "instruction loose"}
PAIRED_IFEVAL = ("prompt_level_strict_acc", "prompt_level_loose_acc")
"""Per-prompt IFEval metrics (one 0/1 value per prompt) for the paired differences."""


def _ok(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def row_scores(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per score (every score some row has, plus `mean`: the mean of a row's paper scores present) its values."""
    out: dict[str, list[float]] = {}
    for name in SCORE_NAMES:
        vals = [float(r[name]) for r in rows if _ok(r.get(name))]
        if vals:
            out[name] = vals
    means = []
    for r in rows:
        present = [float(r[n]) for n in PAPER_SCORES if _ok(r.get(n))]
        if present:
            means.append(sum(present) / len(present))
    if means:
        out["mean"] = means
    return out


def per_seed(rows: list[dict[str, Any]], name: str) -> dict[str, float]:
    """Mean of score `name` (or `mean`) over each seed's rows."""
    acc: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if name == "mean":
            present = [float(r[n]) for n in PAPER_SCORES if _ok(r.get(n))]
            if present:
                acc[r["seed_id"]].append(sum(present) / len(present))
        elif _ok(r.get(name)):
            acc[r["seed_id"]].append(float(r[name]))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def paired(a: dict[str, float], b: dict[str, float], seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap 95% CI of mean(a - b) over the keys both have."""
    common = sorted(a.keys() & b.keys())
    if not common:
        return {"n": 0, "difference": None, "ci95": None}
    ci = paired_bootstrap_diff_ci([a[k] for k in common], [b[k] for k in common], seed=seed)
    return {"n": len(common), "difference": round(ci.estimate, 4), "ci95": [round(ci.low, 4), round(ci.high, 4)]}


def ifeval_items(result: dict[str, Any], metric: str) -> dict[str, float]:
    return {str(s["key"]): float(bool(s[metric])) for s in result.get("samples", []) if s.get(metric) is not None}


def summarize(cmp: Any) -> dict[str, Any]:
    """Everything the report shows, from a finished `Comparison`."""
    from idea_mcts import __version__
    from idea_mcts.evaluation.judge import paired_difference

    arms, base_cfg = cmp.args.arms, cmp.configs.get("idea-mcts")
    budget_b = cmp.budget() if "idea-mcts" in cmp.runs else None
    budget: dict[str, Any] = {}
    for arm in arms:
        if arm == "seed":
            budget[arm] = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                           "note": "the idea-mcts arm's roots: their responses and scores are part of its budget"}
            continue
        b = arm_budget(cmp.runs[arm])
        b["of_idea_mcts"] = round(b["requests"] / budget_b, 4) if budget_b else None
        spent = (cmp.runs[arm].get("baseline") or {}).get("budget_spent")
        b["status"] = cmp.runs[arm]["status"] + (" (budget spent)" if spent else "")
        budget[arm] = b
    rows = {arm: cmp.rows[arm].to_list() for arm in arms}
    quality: dict[str, Any] = {}
    for arm in arms:
        quality[arm] = {name: bootstrap_mean_ci(vals).as_dict() for name, vals in row_scores(rows[arm]).items()}
    score_names = [n for n in (*SCORE_NAMES, "mean") if any(n in quality[a] for a in arms)]
    vs_seed: dict[str, Any] = {}
    if "seed" in arms:
        for arm in (a for a in arms if a != "seed"):
            d: dict[str, Any] = {"data": {n: paired(per_seed(rows[arm], n), per_seed(rows["seed"], n))
                                          for n in score_names}}
            d["ifeval"] = {m: paired(ifeval_items(cmp.results[arm]["ifeval"], m),
                                     ifeval_items(cmp.results["seed"]["ifeval"], m)) for m in PAIRED_IFEVAL}
            d["winrate"] = paired_difference(cmp.results[arm]["winrate"], cmp.results["seed"]["winrate"])
            vs_seed[arm] = d
    winrate = {}
    for arm in arms:
        w = cmp.results[arm]["winrate"]
        winrate[arm] = {k: w.get(k) for k in ("n", "failed", "wins", "ties", "losses", "win_rate", "win_rate_ci95",
                                              "consistency", "length_controlled_win_rate", "avg_length",
                                              "avg_reference_length", "verdicts", "judge")}
    scorers = {}
    if base_cfg is not None:
        for role in ("quality", "complexity", "tagger", "embedder", "reward_model"):
            key = base_cfg.role_engine(role)
            if key is not None:
                scorers[role] = base_cfg.engines[key].model
    return {
        "version": __version__, "command": cmp.command, "out": str(cmp.out), "model": cmp.model_path,
        "arms": arms, "budget_requests": budget_b, "budget": budget,
        "sample": {"rows_per_arm": cmp.n, "sample_size": cmp.args.sample_size, "seed": cmp.args.sample_seed,
                   "pool_sizes": cmp.pool_sizes},
        "data_quality": {"scored_by": scorers, "scores": score_names, "arms": quality},
        "ifeval": {"base": cmp.ifeval_base["metrics"], "num_prompts": cmp.ifeval_base["num_prompts"],
                   "settings": cmp.ifeval_base["settings"],
                   "arms": {a: cmp.results[a]["ifeval"]["metrics"] for a in arms}},
        "winrate": {"reference": "base model", "judge": cmp.judge_cfg.model,
                    "instructions": len(cmp.winrate_items), "source": cmp.alpaca_cfg.source, "arms": winrate},
        "vs_seed": vs_seed,
        "idea_mcts_plus": cmp.clean,
        "sft": {a: cmp.results[a].get("sft") for a in arms},
        "evolve": {a: {k: cmp.runs[a].get(k) for k in ("status", "counts", "filtered", "parse_failures",
                                                       "wall_seconds", "baseline")} for a in cmp.runs},
        "stages": cmp.times,
        "config": cmp.recipe.report_dict()["config"] | {"compare": vars(cmp.args)},
    }


def _f(x: Any, d: int = 3) -> str:
    return "–" if x is None else f"{x:.{d}f}" if isinstance(x, float) else str(x)


def _ci(iv: dict[str, Any] | None, d: int = 3) -> str:
    if not iv or iv.get("estimate") is None:
        return "–"
    return f"{iv['estimate']:.{d}f} [{iv['ci_low']:.{d}f}, {iv['ci_high']:.{d}f}]"


def _diff(p: dict[str, Any] | None, d: int = 3) -> str:
    if not p or p.get("difference") is None:
        return "–"
    return f"{p['difference']:+.{d}f} [{p['ci95'][0]:+.{d}f}, {p['ci95'][1]:+.{d}f}] (n={p['n']})"


def render_markdown(r: dict[str, Any], plots: list[str]) -> str:
    arms = r["arms"]
    lines = [f"# Comparison: {', '.join(arms)}", "",
             f"Base model `{r['model']}`, tuned on each arm's data with the same settings; every arm's training set "
             f"holds **{r['sample']['rows_per_arm']} rows** (sample_size {r['sample']['sample_size']}; rows each arm "
             f"had: {', '.join(f'{a} {n}' for a, n in r['sample']['pool_sizes'].items())}).", "",
             "## Budget (LLM requests of the evolver, responder and scorers)", "",
             f"B = the idea-mcts arm's requests = {_f(r['budget_requests'])}. The evol-instruct and idea-mcts+ arms "
             "stop before a request group would pass B (idea-mcts+ pays its meta-prompt from B). The seed arm "
             "is the idea-mcts arm's roots (no requests of its own).", "",
             "| arm | requests | of B | evolver | responder | scorers | prompt tokens | completion tokens | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for a in arms:
        b = r["budget"][a]
        scorers = sum(v for k, v in b.items() if k.startswith("requests_") and k not in
                      ("requests_evolver", "requests_responder"))
        lines.append(f"| {a} | {b['requests']} | {_f(b.get('of_idea_mcts'), 3)} | {b.get('requests_evolver', '–')} | "
                     f"{b.get('requests_responder', '–')} | {scorers if a != 'seed' else '–'} | {b['prompt_tokens']} | "
                     f"{b['completion_tokens']} | {b.get('status', b.get('note', ''))} |")
    dq = r["data_quality"]
    scored = ", ".join(f"{k}: `{v}`" for k, v in dq["scored_by"].items())
    lines += ["", "## Data quality of the training rows (mean, bootstrap 95% CI)", "",
              f"Scored by the search's own judges ({scored}); `mean` is the mean of a row's quality, complexity and "
              "diversity present. Novelty depends on the order the search scored instructions in: read it within "
              "an arm, not across arms.", "",
              "| arm | " + " | ".join(dq["scores"]) + " |", "|---|" + "---|" * len(dq["scores"])]
    for a in arms:
        lines.append(f"| {a} | " + " | ".join(_ci(dq["arms"][a].get(s)) for s in dq["scores"]) + " |")
    ev = r["ifeval"]
    lines += ["", f"## IFEval ({ev['num_prompts']} prompts, ± standard error)", "",
              "| model | " + " | ".join(IFEVAL_METRICS.values()) + " |", "|---|" + "---|" * len(IFEVAL_METRICS)]
    for name, m in [("base", ev["base"]), *((a, ev["arms"][a]) for a in arms)]:
        lines.append(f"| {name} | " + " | ".join(f"{_f(m.get(k))} ± {_f(m.get(k + '_stderr'))}"
                                                 for k in IFEVAL_METRICS) + " |")
    w = r["winrate"]
    lines += ["", f"## Judge win rate against the base model ({w['instructions']} instructions, judge `{w['judge']}`, "
              "both orders)", "",
              "| arm | win rate [95% CI] | wins / ties / losses | failed | consistency | LC win rate | length "
              "(tuned / base) |", "|---|---|---|---|---|---|---|"]
    for a in arms:
        x = w["arms"][a]
        ci = x.get("win_rate_ci95")
        wr = f"{_f(x.get('win_rate'))} [{_f(ci[0])}, {_f(ci[1])}]" if ci else _f(x.get("win_rate"))
        lines.append(f"| {a} | {wr} | {x['wins']} / {x['ties']} / {x['losses']} | {x['failed']} | "
                     f"{_f(x.get('consistency'))} | {_f(x.get('length_controlled_win_rate'))} | "
                     f"{_f(x.get('avg_length'), 0)} / {_f(x.get('avg_reference_length'), 0)} |")
    if r["vs_seed"]:
        lines += ["", "## Difference to the seed arm (paired bootstrap 95% CI)", "",
                  "Data: per seed, the mean of the arm's rows from that seed minus the seed's own score. IFEval: per "
                  "prompt. Win rate: per instruction (1 / 0.5 / 0).", "",
                  "| arm | " + " | ".join(f"data {s}" for s in dq["scores"]) + " | IFEval prompt strict | IFEval "
                  "prompt loose | win rate |", "|---|" + "---|" * (len(dq["scores"]) + 3)]
        for a, d in r["vs_seed"].items():
            lines.append(f"| {a} | " + " | ".join(_diff(d["data"].get(s)) for s in dq["scores"]) + " | "
                         + " | ".join(_diff(d["ifeval"][m]) for m in PAIRED_IFEVAL) + f" | {_diff(d['winrate'])} |")
    if r.get("idea_mcts_plus"):
        c = r["idea_mcts_plus"]
        lines += ["", "## idea-mcts+ task-specific actions", "",
                  f"From {c['examples']} example instructions: {c['source']}. "
                  + ("**Clean**: none of them appears in " if c["clean"] else
                     f"**Contaminated**: {c['in_evaluation_sets']} of them appear in ")
                  + f"the evaluation sets ({'; '.join(c['checked_against'])})."]
    lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v['status']} | {v['seconds']} |" for k, v in r["stages"].items()]
    lines += ["", "## Charts", ""] + [f"![{p}](plots/{p})" for p in plots]
    lines += ["", "## Command", "", "```", r["command"], "```", ""]
    return "\n".join(lines)


def make_plots(r: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes by file name: budget.png, data_quality.png, ifeval.png, winrate.png."""
    plt = pyplot()
    arms, out = r["arms"], {}
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(arms, [r["budget"][a]["requests"] for a in arms])
    ax.set_ylabel("requests")
    ax.set_title("LLM requests per arm (evolver + responder + scorers)")
    out["budget.png"] = png(fig)

    def grouped(title: str, groups: list[str], series: dict[str, list[tuple[float, float, float]]],
                ylim: tuple[float, float] | None = None) -> bytes:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        width = 0.8 / max(len(series), 1)
        for i, (name, vals) in enumerate(series.items()):
            xs = [x + width * i for x in range(len(groups))]
            est = [v[0] for v in vals]
            err = [[max(v[0] - v[1], 0) for v in vals], [max(v[2] - v[0], 0) for v in vals]]
            ax.bar(xs, est, width=width, yerr=err, capsize=2, label=name)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(groups))], groups, fontsize=8)
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_title(title)
        ax.legend(fontsize=7)
        return png(fig)

    dq = r["data_quality"]
    series = {a: [((iv := dq["arms"][a].get(s)) and (iv["estimate"], iv["ci_low"], iv["ci_high"])) or (0.0, 0.0, 0.0)
                  for s in dq["scores"]] for a in arms}
    out["data_quality.png"] = grouped("data quality per arm (mean, 95% CI)", dq["scores"], series)
    ev = r["ifeval"]
    models = {"base": ev["base"], **ev["arms"]}
    series = {}
    for name, m in models.items():
        series[name] = [((m.get(k) or 0.0), (m.get(k) or 0.0) - (m.get(k + "_stderr") or 0.0),
                         (m.get(k) or 0.0) + (m.get(k + "_stderr") or 0.0)) for k in IFEVAL_METRICS]
    out["ifeval.png"] = grouped(f"IFEval ({ev['num_prompts']} prompts), ± standard error",
                                list(IFEVAL_METRICS.values()), series, (0, 1))
    fig, ax = plt.subplots(figsize=(6, 3))
    for i, a in enumerate(arms):
        x = r["winrate"]["arms"][a]
        est, ci = x.get("win_rate"), x.get("win_rate_ci95")
        if est is not None and ci:
            ax.bar(i, est, yerr=[[est - ci[0]], [ci[1] - est]], capsize=3)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylim(0, 1)
    ax.set_title(f"win rate vs base model (judge {r['winrate']['judge']}), 95% CI", fontsize=9)
    out["winrate.png"] = png(fig)
    return out


def write_report(out: Path, report: dict[str, Any]) -> Path:
    """OUT/compare.json, OUT/plots/*.png and OUT/compare.md (written last)."""
    plots = make_plots(report)
    write_plots(out, plots)
    write_json(out / COMPARE_REPORT, report)
    path = out / COMPARE_REPORT_MD
    atomic_write(path, render_markdown(report, sorted(plots)))
    return path
