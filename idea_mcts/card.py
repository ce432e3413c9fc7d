"""The dataset card of a published run: metadata, provenance, data-quality table, plots, an example tree.

Built with huggingface_hub's card tools (`DatasetCardData` for the YAML metadata, `DatasetCard.from_template`
with the package's Jinja template `templates/dataset_card.md`). Everything is computed from the run's output
directory (`run.json`, `trees.jsonl`, the rows of `dataset/`), summarised in a `RunSummary`; nothing here talks
to the Hub.

Re-push: the metadata keys the tool owns (`OWNED_KEYS`, and the data files of its two `configs`) are
regenerated; every other key (language, annotations, extra tags, other configs...) is kept; so is the text
between the `<!-- idea-mcts:user -->` markers. The rest of the body is regenerated.
"""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

from idea_mcts.scoring import PAPER_SCORES, SCORERS, score_means
from idea_mcts.tree import Tree

logger = logging.getLogger(__name__)

PAPER_RESULTS = {"complexity": (1.40, 3.62), "mean": (2.19, 3.81)}
"""arXiv 2410.10392, data-quality table: (seed data, IDEA-MCTS data)."""
BENCHMARKS = ("alpacaeval", "mtbench", "ifeval", "arenahard", "wildbench", "livebench", "mixeval", "gsm8k",
              "mmlu", "humaneval", "bbh")
"""Names (lower case, letters and digits only) that mark a task source as an evaluation benchmark."""
OWNED_KEYS = ("license", "task_categories", "size_categories", "pretty_name")
"""Metadata keys the tool regenerates on every push; `configs` and `dataset_info` are maintained by
`datasets.push_to_hub`; `tags` keeps the user's and adds ours (`TAGS`)."""
TAGS = ["synthetic", "idea-mcts"]
TEMPLATE = (files("idea_mcts") / "templates" / "dataset_card.md").read_text(encoding="utf-8")
"""The card's Jinja template (shipped as package data, as TRL ships its card templates)."""
IMAGES = {"scores": "assets/score_histograms.png", "depth": "assets/depth_distribution.png"}
"""Where the plots go in the repository, relative to README.md."""
CITATION = """@inproceedings{li2024optimizing,
  title         = {Optimizing Instruction Synthesis: Effective Exploration of Evolutionary Space
                   with Tree Search},
  author        = {Li, Chenglin and Chen, Qianglong and Li, Zhi and Tao, Feng and Li, Yicheng
                   and Chen, Hao and Yu, Fei and Zhang, Yin},
  booktitle     = {Findings of the Association for Computational Linguistics: EMNLP 2024},
  year          = {2024},
  eprint        = {2410.10392},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2410.10392}
}"""
_USER = re.compile(r"<!-- idea-mcts:user[^>]*-->\n?(.*?)<!-- /idea-mcts:user -->", re.S)
_SIZES = ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"), (1e7, "1M<n<10M"),
          (1e8, "10M<n<100M"), (1e9, "100M<n<1B"), (1e10, "1B<n<10B"), (1e11, "10B<n<100B"),
          (1e12, "100B<n<1T"))


@dataclass
class RunSummary:
    """What the card needs from a run's output directory."""

    run: dict[str, Any]
    """run.json."""
    nodes: list[dict[str, Any]]
    """trees.jsonl: every node of every tree (roots are the seeds)."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """The training rows' `depth`, scores and `reward` (the other columns are not needed)."""

    @property
    def config(self) -> dict[str, Any]:
        return self.run.get("config") or {}

    @property
    def seeds(self) -> list[dict[str, Any]]:
        return [n for n in self.nodes if n.get("depth") == 0]


def size_category(n: int) -> str:
    """The Hub's `size_categories` value for n rows."""
    return next((name for bound, name in _SIZES if n < bound), "n>1T")


def contamination_source(config: dict[str, Any]) -> str | None:
    """The benchmark the task-specific actions came from, when `search.task_actions` was used with a
    `task_source` (or a task file) named after an evaluation benchmark; else None."""
    search = config.get("search") or {}
    if not search.get("task_actions"):
        return None
    for name in (search.get("task_source"), search.get("task_actions")):
        key = re.sub(r"[^a-z0-9]", "", str(name or "").lower())
        if any(b in key for b in BENCHMARKS):
            return str(search.get("task_source") or search.get("task_actions"))
    return None


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Replace the given secrets and anything shaped like a Hugging Face token with `<redacted>`."""
    for s in secrets:
        if s:
            text = text.replace(s, "<redacted>")
    return re.sub(r"\bhf_[A-Za-z0-9]{20,}\b", "<redacted>", text)


def fenced(text: str, lang: str = "") -> str:
    """A Markdown code block whose fence is longer than any backtick run inside `text`."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _fmt(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def render_tree(nodes: list[dict[str, Any]], max_lines: int = 40, width: int = 90) -> str:
    """One tree (its trees.jsonl records) as the indented outline of `idea-mcts show`."""
    return Tree.from_records(nodes).outline(width=width, max_lines=max_lines)


def example_tree(nodes: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Seed id and nodes of the tree shown in the card: the one with the most nodes (first seed on ties)."""
    trees: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        trees.setdefault(str(n.get("seed_id")), []).append(n)
    return max(trees.items(), key=lambda kv: len(kv[1]))  # max keeps the first of equals


def make_plots(summary: RunSummary) -> dict[str, bytes]:
    """Score histograms (seeds vs rows) and the depth distribution (all nodes vs rows) as PNG bytes, keyed by
    their path in the repository. Empty when matplotlib is not installed (`pip install idea-mcts[card]`)."""
    try:
        from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state
    except ImportError:
        logger.warning("matplotlib is not installed: the card will have no plots (pip install matplotlib)")
        return {}
    seeds, rows = summary.seeds, summary.rows
    fig = Figure(figsize=(10, 7), dpi=100)
    for ax, key in zip(fig.subplots(2, 2).flat, (*PAPER_SCORES, "reward"), strict=True):
        data = [[r[key] for r in group if r.get(key) is not None] for group in (seeds, rows)]
        if any(data):
            ax.hist(data, bins=12, label=[f"seeds (n={len(data[0])})", f"rows (n={len(data[1])})"],
                    color=["#9aa5b1", "#e8833a"])
            ax.legend(fontsize=8)
        ax.set_title(key)
        ax.set_ylabel("count")
    fig.suptitle("Score distributions: seeds (depth 0) vs published rows")
    fig.tight_layout()
    plots = {IMAGES["scores"]: _png(fig)}

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    all_depths = Counter(n.get("depth") for n in summary.nodes)
    row_depths = Counter(r.get("depth") for r in rows)
    depths = sorted(d for d in set(all_depths) | set(row_depths) if d is not None)
    ax.bar([d - 0.2 for d in depths], [all_depths[d] for d in depths], width=0.4, label="all nodes",
           color="#9aa5b1")
    ax.bar([d + 0.2 for d in depths], [row_depths[d] for d in depths], width=0.4, label="rows",
           color="#e8833a")
    ax.set_xticks(depths)
    ax.set_xlabel("depth (0 = seed)")
    ax.set_ylabel("nodes")
    ax.set_title("Depth distribution")
    ax.legend()
    fig.tight_layout()
    plots[IMAGES["depth"]] = _png(fig)
    return plots


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same data -> same bytes
    return buf.getvalue()


def merge_metadata(existing: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """The card's metadata on a re-push: our values for the keys we own, the existing card's for every other
    key; `tags` keeps the existing tags and adds ours."""
    tags = existing.get("tags") or []
    tags = tags if isinstance(tags, list) else [tags]
    return {**existing, **ours, "tags": tags + [t for t in TAGS if t not in tags]}


def our_metadata(summary: RunSummary, repo_id: str, license: str | None) -> dict[str, Any]:
    """The values of the metadata keys the tool owns (`OWNED_KEYS`)."""
    push = summary.config.get("push_to_hub") or {}
    return {
        "license": license or push.get("license") or "apache-2.0",
        "task_categories": ["text-generation"],
        "size_categories": [size_category(len(summary.rows))],
        "pretty_name": f"IDEA-MCTS instructions: {repo_id.split('/')[-1]}",
    }


def _configs(existing: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The `configs` listing with our two configs' data files (as `datasets.push_to_hub` writes them); other
    configs and other keys of ours (e.g. a `default: true` set by hand) are kept."""
    ours = {"default": [{"split": "train", "path": "data/train-*"}],
            "trees": [{"split": "train", "path": "trees/train-*"}]}
    out = []
    for c in existing or []:
        name = c.get("config_name") if isinstance(c, dict) else None
        out.append({**c, "data_files": ours.pop(name)} if name in ours else c)
    return out + [{"config_name": name, "data_files": files} for name, files in ours.items()]


def _roles(config: dict[str, Any]) -> list[dict[str, Any]]:
    engines, weights = config.get("engines") or {}, config.get("reward") or {}
    weight_of = {s.role: s.name for s in SCORERS}
    out = []
    for role, rc in (config.get("roles") or {}).items():
        engine = engines.get(rc.get("engine")) or {}
        weight = weights.get(weight_of[role]) if role in weight_of else None
        out.append({"role": role, "engine": rc.get("engine") or "disabled",
                    "backend": engine.get("backend", "–") + (", trust_remote_code" if (engine.get("engine_kwargs")
                                                                         or {}).get("trust_remote_code") else ""),
                    "model": engine.get("model", "–"),
                    "prompt": rc.get("prompt", "–"), "temperature": rc.get("temperature", "–"),
                    "max_new_tokens": rc.get("max_new_tokens", "–"),
                    "weight": "–" if weight is None else weight})
    return out


def _default_judge(config: dict[str, Any]) -> bool:
    """Whether the scores come from the embedded CPU default judge (or a judge without the DEITA formats)."""
    engines, roles = config.get("engines") or {}, config.get("roles") or {}
    for role in ("quality", "complexity"):
        rc = roles.get(role) or {}
        model = str((engines.get(rc.get("engine")) or {}).get("model", ""))
        if model.startswith("embedded:") or rc.get("prompt") != "deita":
            return True
    return False


def build_card(summary: RunSummary, repo_id: str, *, license: str | None = None,
               existing: DatasetCard | None = None, images: dict[str, bytes] | None = None,
               secrets: tuple[str, ...] = ()) -> DatasetCard:
    """The card for `summary` published at `repo_id`, merged into `existing` (the card on the Hub, if any).

    `images`: the plots that go beside the card (their paths are linked); `secrets`: strings to redact from
    everything copied from the run (command, config)."""
    config = summary.config
    existing_meta = existing.data.to_dict() if existing is not None else {}
    user = _USER.search(existing.text) if existing is not None else None
    meta = merge_metadata(existing_meta, our_metadata(summary, repo_id, license))
    meta["configs"] = _configs(meta.get("configs"))
    card_data = DatasetCardData(**meta)

    seeds, rows = summary.seeds, summary.rows
    seed_means, row_means = score_means(seeds), score_means(rows)
    table = [{"name": name, "seeds": _fmt(seed_means[key]), "rows": _fmt(row_means[key]),
              "paper_seed": _fmt(PAPER_RESULTS.get(key, (None, None))[0]),
              "paper_ours": _fmt(PAPER_RESULTS.get(key, (None, None))[1])}
             for key, name in (*((k, k) for k in PAPER_SCORES), ("mean", "**mean of (Q, D, C)**"))]
    seed_id, tree_nodes = example_tree(summary.nodes) if summary.nodes else ("", [])
    usage = summary.run.get("usage") or {}
    card = DatasetCard.from_template(
        card_data,
        template_str=TEMPLATE,
        repo_id=repo_id,
        title=meta.get("pretty_name") or repo_id,
        run=summary.run,
        search=config.get("search") or {},
        data=config.get("data") or {},
        export=config.get("export") or {},
        reward=config.get("reward") or {},
        roles=_roles(config),
        usage=[{"role": r, **u} for r, u in usage.items()],
        parse_failures=summary.run.get("parse_failures") or {},
        n_seeds=len(seeds), n_nodes=len(summary.nodes), n_rows=len(rows),
        table=table,
        default_judge=_default_judge(config),
        contamination=contamination_source(config),
        images={k: v for k, v in IMAGES.items() if v in (images or {})},
        tree_seed=seed_id,
        tree=fenced(render_tree(tree_nodes), "text") if tree_nodes else "",
        command=fenced(redact(str(summary.run.get("command") or ""), secrets), "bash"),
        config_yaml=fenced(redact(str(summary.run.get("config_yaml") or ""), secrets), "yaml"),
        citation=fenced(CITATION, "bibtex"),
        user_notes=user.group(1).strip() if user else "",
    )
    return card
