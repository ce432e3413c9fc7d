"""`idea-mcts evolve | score | show | push`.

Bad input exits 2 with one line on stderr; an engine that cannot serve exits 1; Ctrl-C exits 130 (SIGTERM 143).
An interrupted `evolve` keeps everything completed; the same command resumes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from idea_mcts.errors import EngineError, UsageError

logger = logging.getLogger("idea_mcts")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- evolve ------------------------------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (exit code 143)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def cmd_evolve(args: argparse.Namespace, overrides: list[str]) -> int:
    from idea_mcts.config import load_config
    from idea_mcts.pipeline import EvolveRun

    command = shlex.join(["idea-mcts", *args.argv])
    if args.output_dir:
        overrides = [*overrides, f"output_dir={args.output_dir}"]
    if args.max_calls is not None:
        overrides = [*overrides, f"max_calls={args.max_calls}"]
    cfg = load_config(args.config, overrides)
    if cfg.push_to_hub is not None and cfg.push_to_hub.repo_id.count("/") != 1:
        raise UsageError(f"push_to_hub.repo_id must be namespace/name, got {cfg.push_to_hub.repo_id!r}")
    run = EvolveRun(cfg, command=command, overwrite=args.overwrite)
    if run.mode == "finished":
        print(f"nothing to do: {cfg.output_dir} already holds this finished run (--overwrite runs it again)",
              file=sys.stderr)
        return 0
    est = run.estimate
    print(f"plan: {len(run.seeds)} seeds -> at most {est['nodes']} nodes, {est['calls']} LLM calls, "
          f"{est['generated_tokens']} generated tokens", file=sys.stderr)
    if cfg.max_calls is not None and est["calls"] > cfg.max_calls:
        print(f"note: --max_calls {cfg.max_calls} is below the estimate; the search stops before a wave would "
              "pass it", file=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        report = run.execute(progress=not args.no_progress)
    except KeyboardInterrupt as exc:
        resume = shlex.join(["idea-mcts", *(a for a in args.argv if a != "--overwrite")])
        print(f"\ninterrupted: completed work is kept in {cfg.output_dir}; resume with: {resume}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    c = report["counts"]
    print(f"{report['status']}: {c['rows']} rows from {c['nodes']} nodes in {report['wall_seconds']} s "
          f"-> {cfg.output_dir}", file=sys.stderr)
    return _push_after_evolve(cfg) if cfg.push_to_hub is not None else 0


def _push_after_evolve(cfg: Any) -> int:
    """The config's `push_to_hub`: publish the finished run; a failure keeps OUT and says how to retry."""
    from idea_mcts.publish import PushError, push_from_config

    push = cfg.push_to_hub
    retry = ["idea-mcts", "push", cfg.output_dir, "--repo_id", push.repo_id, "--license", push.license]
    retry += (["--private"] if push.private else []) + (["--revision", push.revision] if push.revision else [])
    try:
        url = push_from_config(cfg.output_dir, push)
    except PushError as exc:
        print(f"error: {exc}. The run in {cfg.output_dir} is complete and unchanged; retry with: "
              f"{shlex.join(retry)}", file=sys.stderr)
        return 1
    print(f"pushed: {url}", file=sys.stderr)
    return 0


# -- score -------------------------------------------------------------------------------------------------
def _pairs(path: str) -> tuple[list[str], list[str | None]]:
    """(instruction, response) pairs from a run dir, a save_to_disk dir or a data file."""
    import datasets

    p = Path(path)
    try:
        if (p / "dataset").is_dir():
            ds = datasets.load_from_disk(str(p / "dataset"))
        elif p.is_dir():
            ds = datasets.load_from_disk(str(p))
        elif p.is_file():
            builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(p.suffix)
            if builder is None:
                raise UsageError(f"cannot read {p}: use .jsonl, .json, .csv, .parquet or a dataset dir")
            ds = datasets.load_dataset(builder, data_files=str(p), split="train")
        else:
            raise UsageError(f"no such dataset: {p}")
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"cannot load {p}: {str(exc).splitlines()[0][:200]}") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"]
    instructions: list[str] = []
    responses: list[str | None] = []
    for row in ds:
        if "messages" in row and row["messages"]:
            user = next((m["content"] for m in row["messages"] if m["role"] == "user"), None)
            bot = next((m["content"] for m in row["messages"] if m["role"] == "assistant"), None)
        else:
            user = row.get("instruction") or row.get("prompt")
            bot = row.get("output") or row.get("response")
            if user and row.get("input"):
                user = f"{user}\n\n{row['input']}"
        if not isinstance(user, str):
            raise UsageError(f"{p}: rows need `messages` or an `instruction`/`prompt` column")
        instructions.append(user)
        responses.append(bot)
    return instructions, responses


def cmd_score(args: argparse.Namespace, overrides: list[str]) -> int:
    from idea_mcts.config import load_config
    from idea_mcts.engines import EnginePool
    from idea_mcts.roles import pool_client
    from idea_mcts.scoring import build_reward, score_means

    cfg = load_config(args.config, overrides)
    data = {path: _pairs(path) for path in args.datasets}
    pool = EnginePool(cfg.engines)
    client = pool_client(cfg, pool)
    reward = build_reward(cfg, client)
    table: dict[str, Any] = {}
    try:
        for path, (instructions, responses) in data.items():
            missing = [i for i, r in enumerate(responses) if not r]
            if missing:
                gens = client("responder").generate([[{"role": "user", "content": instructions[i]}]
                                                     for i in missing], [f"score:{i}" for i in missing])
                for i, g in zip(missing, gens, strict=True):
                    responses[i] = g.text.strip()
            before = sum(reward.failures.values())
            scored = reward.score(instructions, [r or "" for r in responses],
                                  [f"score:{i}" for i in range(len(instructions))])
            table[path] = {"rows": len(scored), **score_means(s.scores for s in scored),
                           "parse_failures": sum(reward.failures.values()) - before}
    finally:
        pool.close()
    print(format_table(table))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(table, indent=2) + "\n")
    return 0


def format_table(table: dict[str, dict[str, Any]]) -> str:
    """Markdown table of mean quality / diversity / complexity per dataset (the paper's data-quality table)."""

    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)

    lines = ["| data | rows | quality | diversity | complexity | mean (Q, D, C) | parse failures |",
             "|---|---|---|---|---|---|---|"]
    for name, r in table.items():
        lines.append(f"| {name} | {r['rows']} | {f(r['quality'])} | {f(r['diversity'])} | {f(r['complexity'])} "
                     f"| {f(r['mean'])} | {r['parse_failures']} |")
    return "\n".join(lines)


# -- show --------------------------------------------------------------------------------------------------
def cmd_show(args: argparse.Namespace, overrides: list[str]) -> int:
    from idea_mcts.export import TREES_FILE, read_trees

    out = Path(args.output_dir)
    if not (out / TREES_FILE).is_file():
        raise UsageError(f"{out} holds no {TREES_FILE}: not an idea-mcts output dir")
    trees = read_trees(out)
    if args.seed is None:
        for i, t in enumerate(trees):
            print(f"{i}\t{t.seed_id}\t{len(t.nodes)} nodes\t{' '.join(t.root.instruction.split())[:80]}")
        return 0
    match = [t for i, t in enumerate(trees) if args.seed in (t.seed_id, str(i))]
    if not match:
        raise UsageError(f"no seed {args.seed!r} in {out} (seed ids or indices 0..{len(trees) - 1})")
    print(match[0].outline(width=args.width))
    return 0


# -- main --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idea-mcts", description=__doc__.splitlines()[0])
    parser.add_argument("--log_level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("evolve", help="grow one search tree per seed and write the dataset",
                       description="Overrides after the options: key=value or --key value (dotted, e.g. "
                                   "search.iterations=1 roles.evolver.temperature=0.9).")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--output_dir", help="where dataset/, trees.jsonl and run.json go; an unfinished run of the same "
                                        "config there is resumed, a finished one is left as is")
    p.add_argument("--max_calls", type=int, help="stop before a wave would pass this many LLM calls")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in output_dir (its outputs, node log and state) by this one; the request "
                        "cache is kept, so requests that did not change are not re-issued")
    p.set_defaults(func=cmd_evolve)

    p = sub.add_parser("score", help="score datasets with the reward's scorers; print mean Q/D/C")
    p.add_argument("datasets", nargs="+", help="run dirs, save_to_disk dirs or .jsonl/.json/.csv/.parquet files")
    p.add_argument("--config", help="YAML config naming the scorer engines (default: the embedded model)")
    p.add_argument("--output_json", help="also write the table as JSON")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("show", help="print a tree as an indented outline with scores")
    p.add_argument("output_dir")
    p.add_argument("--seed", help="seed id or index (omit to list the trees)")
    p.add_argument("--width", type=int, default=100, help="characters of each instruction shown")
    p.set_defaults(func=cmd_show)

    try:
        from idea_mcts import publish
    except ImportError:
        publish = None  # type: ignore[assignment]
    if publish is not None and hasattr(publish, "register"):
        publish.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    args.argv = argv
    _setup_logging(args.log_level)
    if rest and args.command not in ("evolve", "score"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args, rest) if args.command in ("evolve", "score", "show") else args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"engine error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
