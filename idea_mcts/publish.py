"""Publish a run's output directory to the Hugging Face Hub: the training rows, every tree node, and a card.

`push_run(OUT, "org/name")` pushes `OUT/dataset` as the default config (split `train`) and `OUT/trees.jsonl`
as the config `trees`, so `load_dataset(repo)` gives the training data and `load_dataset(repo, "trees")` every
node; then it commits the dataset card (see `idea_mcts.card`) and its plots in one commit, merged into the
card already on the Hub. Nothing is written under OUT. The token is the caller's or huggingface_hub's usual
lookup (HF_TOKEN, `hf auth login`); it is passed to huggingface_hub only, never logged or written.

CLI: `idea-mcts push OUT --repo_id org/name [--private] [--revision R] [--license L]` (see `register`).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from idea_mcts.card import RunSummary, build_card, make_plots, redact
from idea_mcts.errors import UsageError
from idea_mcts.run_files import DATASET_DIR, RUN_FILE, FinishedRun
from idea_mcts.scoring import SCORE_NAMES

logger = logging.getLogger(__name__)

ROW_SCORE_COLUMNS = ("depth", "quality", "complexity", "diversity", "reward")
"""Columns of the training rows that the card's statistics read."""


class PushError(RuntimeError):
    """The Hub refused or failed the push: one line, exit code 1; the run's output directory is untouched."""


def _tree_features() -> dict[str, Any]:
    """Types of the trees.jsonl fields (ints and lists as in the rows' features of `idea_mcts.export`)."""
    from datasets import List, Value

    string, f64, i32 = Value("string"), Value("float64"), Value("int32")
    return {"seed_id": string, "node_id": string, "parent_id": string, "depth": i32, "action": string,
            "action_path": List(string), "kind": string, "instruction": string, "response": string,
            **{name: f64 for name in SCORE_NAMES}, "reward": f64, "visits": i32, "value": f64, "value_sum": f64,
            "value_max": f64, "terminal": Value("bool"), "on_terminal_path": Value("bool"),
            "children": List(string), "failures": List(string)}


def load_output(output_dir: str | Path) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """Read a finished run's output directory: (rows Dataset, nodes of trees.jsonl, run.json).
    Raises UsageError (one line) when something is missing or malformed."""
    run_dir = FinishedRun(output_dir)
    run, run_file = run_dir.report, run_dir.out / RUN_FILE
    status = str(run.get("status"))
    if status != "finished" and not status.startswith("stopped early"):  # stopped early = a complete output
        raise UsageError(f"{run_file}: the run is not finished (status {run.get('status')!r}); "
                         "resume it before pushing")
    nodes = list(run_dir.nodes())
    rows = run_dir.dataset()
    if "messages" not in rows.column_names:
        raise UsageError(f"{run_dir.out / DATASET_DIR} has no `messages` column")
    return rows, nodes, run


def trees_dataset(nodes: list[dict[str, Any]]) -> Any:
    """Every node as a Dataset: the known fields typed (so an all-None column stays float, not null), any
    other field kept with the type datasets infers."""
    import datasets

    keys = list(dict.fromkeys(k for n in nodes for k in n))
    ds = datasets.Dataset.from_dict({k: [n.get(k) for n in nodes] for k in keys})
    known = _tree_features()
    features = datasets.Features({k: known.get(k, ds.features[k]) for k in ds.column_names})
    return ds.cast(features) if features != ds.features else ds


def _one_line(exc: BaseException, token: str | None) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    extra = next((ln for ln in lines[1:] if not ln.startswith("For more information")), None)
    return redact(f"{text} ({extra})" if extra else text, (token or "",))


def push_run(output_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
             token: str | None = None, license: str | None = None) -> str:
    """Push a finished run to the Hub dataset repository `repo_id` and return the repository's URL.

    Creates the repo (private when asked; an existing repo keeps its visibility) and the branch `revision`
    when given, pushes the rows (config `default`) and the nodes (config `trees`), then the card and plots.
    Raises UsageError for bad input (OUT, repo id) and PushError when the Hub fails; OUT is never modified.
    """
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"invalid --repo_id {repo_id!r}: {str(exc).splitlines()[0]}") from None
    if "/" not in repo_id:
        raise UsageError(f"invalid --repo_id {repo_id!r}: expected namespace/name, e.g. my-org/{repo_id}")
    rows, nodes, run = load_output(output_dir)
    token = token or get_token()
    if not token:
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    try:
        return _push(rows, nodes, run, repo_id, private=private, revision=revision, token=token,
                     license=license)
    except Exception as exc:  # HTTP errors, connection errors (not OSErrors in httpx), datasets' own errors
        logger.debug("push to %s failed", repo_id, exc_info=True)
        raise PushError(f"push to {repo_id} failed: {_one_line(exc, token)}") from exc


def _push(rows: Any, nodes: list[dict[str, Any]], run: dict[str, Any], repo_id: str, *, private: bool,
          revision: str | None, token: str, license: str | None) -> str:
    import datasets
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=datasets.config.HF_ENDPOINT, token=token)  # the endpoint datasets pushes to
    url = str(api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True))
    if private and not api.repo_info(repo_id, repo_type="dataset").private:
        logger.warning("%s already exists and is public: --private does not change an existing repo", repo_id)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    common = {"split": "train", "token": token, "revision": revision, "private": private}
    logger.info("pushing %d rows to %s (config default)", len(rows), repo_id)
    rows.push_to_hub(repo_id, config_name="default", commit_message="idea-mcts: training rows", **common)
    logger.info("pushing %d tree nodes to %s (config trees)", len(nodes), repo_id)
    trees_dataset(nodes).push_to_hub(repo_id, config_name="trees", commit_message="idea-mcts: tree nodes",
                                     **common)

    summary = RunSummary(run=run, nodes=nodes, rows=rows.select_columns(
        [c for c in ROW_SCORE_COLUMNS if c in rows.column_names]).to_list())
    images = make_plots(summary)
    for attempt in range(3):  # the card is committed on top of the commit it was read from
        sha = api.repo_info(repo_id, repo_type="dataset", revision=revision).sha
        card = build_card(summary, repo_id, license=license, existing=_load_card(api, repo_id, sha),
                          images=images, secrets=(token,))
        ops = [CommitOperationAdd("README.md", str(card).encode("utf-8"))]
        ops += [CommitOperationAdd(path, data) for path, data in images.items()]
        try:
            api.create_commit(repo_id, ops, repo_type="dataset", revision=revision, parent_commit=sha,
                              commit_message="idea-mcts: dataset card and plots")
            break
        except HfHubHTTPError as exc:
            if exc.response is None or exc.response.status_code != 412 or attempt == 2:
                raise
            logger.info("the repository changed while the card was built; rebuilding it")
    url = f"{url}/tree/{quote(revision, safe='')}" if revision else url
    logger.info("pushed %s", url)
    return url


def _load_card(api: Any, repo_id: str, revision: str | None) -> Any:
    """The repository's current dataset card, or None when it has none."""
    from huggingface_hub import DatasetCard
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = api.hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision)
    except EntryNotFoundError:
        return None
    return DatasetCard.load(path, ignore_metadata_errors=True)


def push_from_config(output_dir: str | Path, cfg: Any, *, token: str | None = None) -> str:
    """`push_run` with the evolve config's `push_to_hub` section (`idea_mcts.config.PushConfig`)."""
    if not cfg.repo_id or cfg.repo_id == "???":
        raise UsageError("push_to_hub.repo_id is not set")
    return push_run(output_dir, cfg.repo_id, private=cfg.private, revision=cfg.revision, token=token,
                    license=cfg.license)


def retry_command(args: argparse.Namespace) -> str:
    """The command line that retries this push."""
    parts = ["idea-mcts", "push", str(args.output_dir), "--repo_id", args.repo_id]
    parts += ["--private"] if args.private else []
    parts += ["--revision", args.revision] if args.revision else []
    parts += ["--license", args.license] if args.license else []
    return shlex.join(parts)


def cmd_push(args: argparse.Namespace) -> int:
    """Handler of `idea-mcts push`: 0 ok (prints the URL), 2 bad input, 1 push failed (says how to retry)."""
    try:
        url = push_run(args.output_dir, args.repo_id, private=args.private, revision=args.revision,
                       license=args.license)
    except UsageError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except PushError as exc:
        sys.stderr.write(f"error: {exc}. Nothing under {args.output_dir} was changed; retry with: "
                         f"{retry_command(args)}\n")
        return 1
    sys.stdout.write(f"{url}\n")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `push OUT --repo_id org/name [--private] [--revision R] [--license L]` to the CLI's subparsers;
    the handler is `args.func(args) -> exit code`."""
    p = subparsers.add_parser(
        "push", help="publish a run's dataset, tree nodes and card to the Hugging Face Hub",
        description="Push OUT/dataset (config `default`, split train), every node of OUT/trees.jsonl (config "
                    "`trees`) and a dataset card with plots. Token: HF_TOKEN or `hf auth login`.")
    p.add_argument("output_dir", metavar="OUT", help="output directory of `idea-mcts evolve`")
    p.add_argument("--repo_id", "--repo-id", required=True, help="dataset repository, namespace/name")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", default=None, help="branch to push to (default: main; created if missing)")
    p.add_argument("--license", default=None,
                   help="license for the card (default: the run's push_to_hub.license, else apache-2.0)")
    p.set_defaults(func=cmd_push)
    return p
