"""`idea-mcts evolve | score | show | push`.

Bad input exits 2 with one line on stderr; an engine that cannot serve exits 1; Ctrl-C exits 130 (SIGTERM 143).
An interrupted `evolve` keeps everything completed; the same command resumes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from idea_mcts.errors import EngineError, Terminated, UsageError, raise_terminated

logger = logging.getLogger("idea_mcts")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- evolve ------------------------------------------------------------------------------------------------
def cmd_evolve(args: argparse.Namespace, overrides: list[str]) -> int:
    """`evolve`; under torchrun / accelerate launch (WORLD_SIZE > 1) each rank runs its shard (idea_mcts.shards)
    and an error names the rank that failed."""
    from idea_mcts.distributed import World

    world = World.from_env()
    if world.size > 1:
        from idea_mcts.distributed import init_group
        from idea_mcts.shards import agree

        init_group()  # before the checks, so that every rank learns which rank's input is bad
        cfg, run = agree(world, lambda: _evolve_run(args, overrides, world))
    else:
        cfg, run = _evolve_run(args, overrides, world)
    try:
        return _evolve(args, cfg, run, world)
    except EngineError as exc:
        raise EngineError(f"{world.tag()} failed: {exc}" if world.size > 1 else str(exc)) from None
    except UsageError as exc:
        raise UsageError(f"{world.tag()} failed: {exc}" if world.size > 1 else str(exc)) from None


def _evolve_run(args: argparse.Namespace, overrides: list[str], world: Any) -> tuple[Any, Any]:
    """The config and the validated run (every input checked, nothing written)."""
    from idea_mcts.config import ConfigValueError, load_config
    from idea_mcts.evolve_plan import plan_evolve
    from idea_mcts.pipeline import EvolveRun

    command = shlex.join(["idea-mcts", *args.argv])
    cfg = load_config(args.config, overrides)
    try:  # the flags go in as values, not as dotlist text that OmegaConf would parse
        cfg = replace(cfg, **{k: v for k in ("output_dir", "max_calls") if (v := getattr(args, k)) is not None})
    except ConfigValueError as exc:
        raise UsageError(f"--{exc.key} must be {exc.allowed}, got {exc.value!r}") from None
    if cfg.push_to_hub is not None and cfg.push_to_hub.repo_id.count("/") != 1:
        raise UsageError(f"push_to_hub.repo_id must be namespace/name, got {cfg.push_to_hub.repo_id!r}")
    if world.size > 1:
        from idea_mcts.shards import ShardedEvolve

        return cfg, ShardedEvolve(cfg, world, command=command, overwrite=args.overwrite)
    plan = plan_evolve(cfg, overwrite=args.overwrite)  # all bad input fails here, before any engine is built
    return cfg, EvolveRun.from_plan(plan, command=command)


def _evolve(args: argparse.Namespace, cfg: Any, run: Any, world: Any) -> int:
    if run.mode == "finished":
        if not world.is_main:
            return 0
        if cfg.push_to_hub is not None and not run.store.pushed(_push_target(cfg)):
            print(f"{cfg.output_dir} already holds this finished run; it was not pushed to "
                  f"{cfg.push_to_hub.repo_id} yet: pushing", file=sys.stderr)
            return _push_after_evolve(cfg, run.store)
        print(f"nothing to do: {cfg.output_dir} already holds this finished run (--overwrite runs it again)",
              file=sys.stderr)
        return 0
    est = run.estimate
    if world.is_main:
        print(f"plan: {len(run.seeds)} seeds -> at most {est['nodes']} nodes, {est['calls']} LLM calls, "
              f"{est['generated_tokens']} generated tokens", file=sys.stderr)
    if world.size > 1 and world.is_main:
        print(f"{world.size} processes: each searches the seeds of its shard (sha256 of the seed id) under "
              f"{Path(cfg.output_dir) / 'shards'}; rank 0 merges", file=sys.stderr)
    if cfg.max_calls is not None and est["calls"] > cfg.max_calls:
        print(f"note: --max_calls {cfg.max_calls} is below the estimate; the search stops before a wave would "
              "pass it", file=sys.stderr)
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        report = run.execute(progress=not args.no_progress)
    except KeyboardInterrupt as exc:
        resume = shlex.join(["idea-mcts", *(a for a in args.argv if a != "--overwrite")])
        if world.size > 1:
            from idea_mcts.shards import failed_ranks

            for line in failed_ranks(Path(cfg.output_dir)):
                print(f"stopped because {line}", file=sys.stderr)
            resume = f"{resume} (launched again with {world.size} processes)"
        print(f"\ninterrupted: completed work is kept in {cfg.output_dir}; resume with: {resume}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not world.is_main:
        return 0
    c = report["counts"]
    print(f"{report['status']}: {c['rows']} rows from {c['nodes']} nodes in {report['wall_seconds']} s "
          f"-> {cfg.output_dir}", file=sys.stderr)
    return _push_after_evolve(cfg, run.store) if cfg.push_to_hub is not None else 0


def _push_target(cfg: Any) -> dict[str, Any]:
    push = cfg.push_to_hub
    return {"repo_id": push.repo_id, "revision": push.revision, "private": push.private, "license": push.license}


def _push_after_evolve(cfg: Any, store: Any) -> int:
    """The config's `push_to_hub`: publish the finished run; a failure keeps OUT and says how to retry."""
    from idea_mcts.publish import PushError, push_from_config

    push = cfg.push_to_hub
    retry = ["idea-mcts", "push", cfg.output_dir, "--repo_id", push.repo_id, "--license", push.license]
    retry += (["--private"] if push.private else []) + (["--revision", push.revision] if push.revision else [])
    try:
        url = push_from_config(cfg.output_dir, push)
    except PushError as exc:
        print(f"error: {exc}. The run in {cfg.output_dir} is complete and unchanged; re-run this command to push "
              f"it, or retry with: "
              f"{shlex.join(retry)}", file=sys.stderr)
        return 1
    store.record_push(_push_target(cfg), url)
    print(f"pushed: {url}", file=sys.stderr)
    return 0


# -- score -------------------------------------------------------------------------------------------------
def check_output_file(path: Path, what: str) -> None:
    """`path` can be written: not a directory, in an existing writable directory (checked before the work)."""
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise UsageError(f"{what} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{what} {path} is not writable")


def cmd_score(args: argparse.Namespace, overrides: list[str]) -> int:
    from idea_mcts.config import load_config
    from idea_mcts.data import load_pairs
    from idea_mcts.engines import EnginePool
    from idea_mcts.evolve_plan import check_models
    from idea_mcts.roles import pool_client
    from idea_mcts.scoring import SCORER_ROLES, build_reward, score_means

    cfg = load_config(args.config, overrides)
    if args.output_json:
        check_output_file(Path(args.output_json), "--output_json")
    data = {path: load_pairs(path) for path in args.datasets}
    check_models(cfg, {k for r in ("responder", *SCORER_ROLES) if (k := cfg.role_engine(r)) is not None})
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
    from idea_mcts.export import read_trees
    from idea_mcts.run_files import TREES_FILE

    out = Path(args.output_dir)
    path = out / TREES_FILE
    if not path.is_file():
        raise UsageError(f"{out} holds no {TREES_FILE}: not an idea-mcts output dir")
    try:  # a hand-edited, truncated or foreign file: any of these while reading or rendering it
        trees = read_trees(out)
        if not trees:
            raise UsageError(f"{path} holds no trees")
        if args.seed is None:
            text = "\n".join(f"{i}\t{t.seed_id}\t{len(t.nodes)} nodes\t{' '.join(t.root.instruction.split())[:80]}"
                             for i, t in enumerate(trees))
        else:
            match = [t for i, t in enumerate(trees) if args.seed in (t.seed_id, str(i))]
            if not match:
                raise UsageError(f"no seed {args.seed!r} in {out} (seed ids or indices 0..{len(trees) - 1})")
            text = match[0].outline(width=args.width)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, StopIteration) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise UsageError(f"{path} is malformed ({type(exc).__name__}{': ' + msg if msg else ''}); re-run evolve "
                         "to rewrite it") from None
    print(text)
    return 0


# -- main ------------------------------------------------------------------------------------------------
OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*=")
"""A `key=value` config override (dotted key)."""
TAKES_OVERRIDES = ("evolve", "score")


class Parser(argparse.ArgumentParser):
    """argparse whose errors are UsageErrors: one `error:` line and exit code 2, no usage text."""

    commands: dict[str, argparse.ArgumentParser] = {}
    """The subcommands' parsers by name (set by `build_parser`)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> Parser:
    parser = Parser(prog="idea-mcts", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--log_level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("evolve", help="grow one search tree per seed and write the dataset", allow_abbrev=False,
                       description="Config overrides anywhere among the options: key=value, --key=value or "
                                   "--key value (dotted, e.g. search.iterations=1 roles.evolver.temperature=0.9).")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--output_dir", help="where dataset/, trees.jsonl and run.json go; an unfinished run of the same "
                                        "config there is resumed, a finished one is left as is")
    p.add_argument("--max_calls", type=int, help="stop before a wave would pass this many LLM calls")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the idea-mcts run in output_dir (its outputs, node log and state) by this one; the "
                        "request cache is kept, so requests that did not change are not re-issued")
    p.set_defaults(func=cmd_evolve)

    p = sub.add_parser("score", help="score datasets with the reward's scorers; print mean Q/D/C", allow_abbrev=False,
                       description="Config overrides (key=value or --key value) may follow the datasets.")
    p.add_argument("datasets", nargs="+", help="run dirs, save_to_disk dirs or .jsonl/.json/.csv/.parquet files")
    p.add_argument("--config", help="YAML config naming the scorer engines (default: the embedded model)")
    p.add_argument("--output_json", help="also write the table as JSON")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("show", help="print a tree as an indented outline with scores", allow_abbrev=False)
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
    from idea_mcts import judge_check

    judge_check.register(sub)
    parser.commands = sub.choices
    return parser


def split_overrides(parser: Parser, argv: list[str]) -> tuple[list[str], list[str]]:
    """The CLI's own arguments and the config overrides (as `key=value`) of `evolve`/`score`.

    Flags the subcommand defines take their value first, so an override can never swallow one (`--key` with
    no value before `--output_dir X` is an error, not `key=--output_dir`). Everything else is an override:
    `--key=value`, `--key value`, and `key=value` (for `score`, unless it names an existing dataset path)."""
    commands = parser.commands
    i = 0
    while i < len(argv) and argv[i] not in commands:
        i += 1 + (argv[i] == "--log_level")
    if i >= len(argv) or argv[i] not in TAKES_OVERRIDES:
        return argv, []
    sub = commands[argv[i]]
    flags = sub._option_string_actions
    own, overrides, rest = argv[: i + 1], [], argv[i + 1:]
    j = 0
    while j < len(rest):
        tok = rest[j]
        name = tok.split("=", 1)[0]
        if tok == "--":
            own += rest[j:]
            break
        if name in flags:
            own.append(tok)
            if flags[name].nargs != 0 and "=" not in tok and j + 1 < len(rest):
                own.append(rest[j + 1])
                j += 1
        elif tok.startswith("--") and len(tok) > 2:
            if "=" in tok:
                overrides.append(tok[2:])
            elif j + 1 < len(rest) and not rest[j + 1].startswith("--"):
                overrides.append(f"{tok[2:]}={rest[j + 1]}")
                j += 1
            else:
                raise UsageError(f"option {tok} has no value: write {tok[2:]}=VALUE or {tok} VALUE")
        elif tok.startswith("-") or (argv[i] == "score" and not (OVERRIDE.match(tok) and not os.path.exists(tok))):
            own.append(tok)
        else:
            overrides.append(tok)
        j += 1
    return own, overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        own, overrides = split_overrides(parser, argv)
        args = parser.parse_args(own)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.argv = argv
    _setup_logging(args.log_level)
    try:
        return args.func(args, overrides) if args.command in ("evolve", "score", "show") else args.func(args)
    except UsageError as exc:
        if str(exc):  # empty: another rank of the launch reports it
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        if str(exc):
            print(f"engine error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        from idea_mcts.distributed import leave_group

        leave_group()  # a rank exits with its own code, not in the group's threads at shutdown


if __name__ == "__main__":
    raise SystemExit(main())
