"""Search throughput as ratios measured in one run, on one engine.

    python bench/search_throughput.py --config configs/demo.yaml [--seeds 20] [--sequential_sample 16] [overrides]

1. Run the search with every engine call recorded (requests, results, seconds).
2. Replay the very same requests on the same engine as ONE flat batch per kind (all generations in one call,
   all next-token-logprob prompts in one call), and those of the roles on other engines (the novelty term's
   embedder) as one call each: they ran beside the search on the same cores. Per-request seeds make the replay
   generate the same tokens, so both sides produce identical work. Every replay starts from an empty prefix cache
   (`Engine.reset_prefix_cache`), as the search did.
3. Replay a sample of the generation requests one at a time (the one-tree-one-request loop that most MCTS
   code runs).

Printed ratios: search generated tok/s / flat tok/s (goal >= 0.9); search / sequential (goal >= 6 on a GPU
engine); scorer prompts/s in the search / flat prefill-only batch (goal >= 0.8). `--json PATH` saves figures.
Wall-clock ratios need a quiet machine; `ratio_search_vs_flat_cpu_time` (this process's CPU seconds for the same
work) is less sensitive to other jobs on the machine (for in-process engines; vLLM works in other processes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from idea_mcts.actions import load_actions
from idea_mcts.config import load_config
from idea_mcts.data import load_seeds
from idea_mcts.engines import EnginePool
from idea_mcts.engines.base import Engine, Generation, GenerationRequest, Prompt, SamplingParams, TokenLogprobs
from idea_mcts.roles import RoleClient
from idea_mcts.scoring import build_reward
from idea_mcts.search import EvolveJob, IdeaMCTS
from idea_mcts.tree import Node, Tree

logger = logging.getLogger("bench")


@dataclass
class Recorder(Engine):
    """Delegates to a real engine and records every batch."""

    inner: Engine
    generations: list[tuple[GenerationRequest, Generation]] = field(default_factory=list)
    logprob_calls: list[tuple[Prompt, list[str], int]] = field(default_factory=list)
    embed_calls: list[str] = field(default_factory=list)
    gen_spans: list[tuple[float, float]] = field(default_factory=list)
    gen_rows: list[int] = field(default_factory=list)
    logprob_spans: list[tuple[float, float]] = field(default_factory=list)
    embed_spans: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.inner.model_id)
        self.concurrent = self.inner.concurrent  # vLLM's async engine: the search keeps requests in flight
        self.stepped = self.inner.stepped  # the transformers engine's continuous batch
        self.max_in_flight = self.inner.max_in_flight
        self.backend = self.inner.backend

    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        t0 = time.perf_counter()
        out = self.inner.generate(requests)
        self.gen_spans.append((t0, time.perf_counter()))
        self.gen_rows.append(len(requests))
        self.generations += list(zip(requests, out, strict=True))
        return out

    def step_state(self) -> tuple[int, bool]:
        return self.inner.step_state()

    def resume(self) -> None:
        self.inner.resume()

    def cancel(self, on: bool = True) -> None:
        self.inner.cancel(on)

    def _next_token_logprobs(self, prompts: list[Prompt], candidates: list[str], top_k: int) -> list[TokenLogprobs]:
        t0 = time.perf_counter()
        out = self.inner.next_token_logprobs(prompts, candidates, top_k)
        self.logprob_spans.append((t0, time.perf_counter()))
        self.logprob_calls += [(p, candidates, top_k) for p in prompts]
        return out

    def _embed(self, texts: list[str]) -> list[list[float]]:
        t0 = time.perf_counter()
        out = self.inner.embed(texts)
        self.embed_spans.append((t0, time.perf_counter()))
        self.embed_calls += texts
        return out


class KeyedClient(RoleClient):
    """A role client that notes, for each generation, its role, key (the node id) and generated tokens: with the
    rounds `RoundsSearch` notes, `critical_path_steps` rebuilds each tree's chain of dependent generations."""

    tokens: dict[tuple[str, str], int] = {}

    def generate(self, prompts: Sequence[Prompt], keys: Sequence[str]) -> list[Generation]:
        out = super().generate(prompts, keys)
        for k, g in zip(keys, out, strict=True):
            KeyedClient.tokens[(self.role, k)] = g.completion_tokens
        return out


class RoundsSearch(IdeaMCTS):
    """The search, noting each tree's rounds of dependent work: an expansion's node ids (each child's rewrite,
    response and scorers run in a strand of its own) and each simulation step's (rollouts advance together)."""

    rounds: list[tuple[str, str, list[str]]] = []

    async def expand(self, tree: Tree, leaf: Node, after: asyncio.Future[bool] | None = None) -> list[Node]:
        first = tree.ids_issued
        try:
            return await super().expand(tree, leaf, after)
        finally:
            ids = [f"{tree.seed_id}/{i}" for i in range(first, tree.ids_issued)]
            RoundsSearch.rounds.append((tree.seed_id, "each", ids))

    async def evolve(self, tree: Tree, jobs: Sequence[EvolveJob]) -> list[Node | None]:
        RoundsSearch.rounds.append((tree.seed_id, "together", [j.node_id for j in jobs]))
        return await super().evolve(tree, jobs)


def critical_path_steps(rounds: list[tuple[str, str, list[str]]], tokens: dict[tuple[str, str], int],
                        overlap_root: bool = False) -> tuple[int, float]:
    """The decode steps of the longest chain of dependent generations, and the mean over trees: no scheduler can
    finish a tree in fewer steps than its root's evaluation plus, round after round, the round's longest chain
    (an expansion: the longest child's rewrite + its evaluation's generations; a simulation step: the longest
    rewrite + the longest evaluation). A node's evaluation generates its response, then its tags if tagged.
    With `overlap_root` the first expansion's rewrites run beside the root's evaluation, and each child's
    evaluation starts when both its rewrite and the root's evaluation are done."""
    def evo(key: str) -> int:
        return tokens.get(("evolver", key), 0)

    def ev(key: str) -> int:
        return tokens.get(("responder", key), 0) + tokens.get(("tagger", key), 0)

    per_tree: dict[str, int] = {}
    for tree, kind, ids in rounds:
        beside = 0  # the root's evaluation, when it runs beside this round's rewrites
        if tree not in per_tree:
            if overlap_root and kind == "each":
                per_tree[tree], beside = 0, ev(f"{tree}/0")
            else:
                per_tree[tree] = ev(f"{tree}/0")
        if kind == "each":
            per_tree[tree] += max((max(evo(i), beside) + ev(i) for i in ids), default=beside)
        else:
            per_tree[tree] += max(map(evo, ids), default=0) + max(map(ev, ids), default=0)
    if not per_tree:
        return 0, 0.0
    return max(per_tree.values()), sum(per_tree.values()) / len(per_tree)


def streamed(engine: Engine, requests: list[GenerationRequest], scorer: list[tuple[Prompt, list[str], int]],
             width: int) -> float:
    """Seconds to run every request one at a time in each of `width` workers (so `width` are in flight), the
    judge prompts spread evenly among the generations: the search's requests and concurrency without its trees'
    dependencies."""
    tasks: list[tuple[GenerationRequest | None, tuple[Prompt, list[str], int] | None]] = [(r, None) for r in requests]
    every = max(1, len(tasks) // max(1, len(scorer)))
    for j, call in enumerate(scorer):
        tasks.insert(min(len(tasks), j * (every + 1)), (None, call))

    def work(share: list[tuple[GenerationRequest | None, tuple[Prompt, list[str], int] | None]]) -> None:
        for req, call in share:
            if req is not None:
                engine.generate([req])
            elif call is not None:
                engine.next_token_logprobs([call[0]], call[1], call[2])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(width) as ex:
        list(ex.map(work, [tasks[i::width] for i in range(width)]))
    return time.perf_counter() - t0


def warm_up(engine: Engine, top_k: int) -> None:
    """One short generation and one scored prompt before anything is timed, then an empty prefix cache: both sides
    run on a warm engine (vLLM compiles its logprob ranking on the first call that asks for logprobs: ~3 s here,
    which `idea-mcts evolve` spends in its judge check before the search)."""
    prompt: Prompt = [{"role": "user", "content": "Say hello."}]
    engine.generate([GenerationRequest(prompt, SamplingParams(max_new_tokens=4, seed=0))])
    engine.next_token_logprobs([[*prompt, {"role": "assistant", "content": "Score: "}]], list("123456"), top_k)
    engine.reset_prefix_cache()


def busy_seconds(spans: list[tuple[float, float]]) -> float:
    """Wall time during which at least one of the calls was in flight (the union of the spans): on a concurrent
    engine calls overlap, and summing them would count the same second several times."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--sequential_sample", type=int, default=16, help="requests replayed one at a time")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--in_flight", type=int, default=0,
                    help="also replay the search's requests (generations and judge prompts, interleaved) with this "
                         "many in flight and no dependencies between them (a concurrent engine, e.g. vLLM): what the "
                         "engine does with the search's arrival pattern, without the trees' chains")
    args, overrides = ap.parse_known_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.config, [*overrides, f"data.max_seeds={args.seeds}"])
    key = cfg.role_engine("evolver")
    llm_roles = ("evolver", "responder", "quality", "complexity")
    if {cfg.role_engine(r) for r in llm_roles} != {key}:
        sys.exit(f"this bench measures one LLM engine: point {', '.join(llm_roles)} at the same engine key")
    pool = EnginePool(cfg.engines)
    rec = Recorder(pool.get(key))
    # roles on other engines (the embedder of the novelty term) are recorded too: on a CPU their work shares the
    # cores with the measured engine during the search, so the flat side replays it as well (same requests)
    others: dict[str, Recorder] = {}

    def recorder(engine_key: str) -> Recorder:
        if engine_key == key:
            return rec
        if engine_key not in others:
            others[engine_key] = Recorder(pool.get(engine_key))
        return others[engine_key]

    def client(role: str) -> RoleClient:
        return KeyedClient(role, recorder(cfg.role_engine(role)), getattr(cfg.roles, role), cfg.search.seed)

    reward = build_reward(cfg, client)
    search = RoundsSearch(cfg.search, load_actions(cfg.search.actions), client("evolver"), client("responder"), reward)
    engine = rec.inner
    warm_up(engine, cfg.reward.top_logprobs)
    logger.info("search: %d seeds on %s (%s)", args.seeds, engine.backend, cfg.engines[key].model)
    steps0 = getattr(engine, "decode_steps", None)  # engines that count their decode steps (transformers)
    t0, c0 = time.perf_counter(), time.process_time()
    trees = search.run(load_seeds(cfg.data))
    search_s, search_cpu = time.perf_counter() - t0, time.process_time() - c0
    steps1 = getattr(engine, "decode_steps", None)
    gen_s, lp_s = busy_seconds(rec.gen_spans), busy_seconds(rec.logprob_spans)
    # generation requests in flight, averaged over the search's wall time (each call holds its rows for its span)
    in_flight = sum(n * (b - a) for n, (a, b) in zip(rec.gen_rows, rec.gen_spans, strict=True)) / search_s
    gen_tokens = sum(g.completion_tokens for _, g in rec.generations)
    n_scorer = len(rec.logprob_calls)

    logger.info("flat replay of %d generations and %d scorer prompts", len(rec.generations), n_scorer)
    requests = [r for r, _ in rec.generations]
    # each replay starts from an empty prefix cache: the search has computed these very prompts, and a replay that
    # found them cached (vLLM) would skip most of its prefill (the search's own cache sharing is of one prompt's
    # shared turns with another's, which the flat batch gets too)
    engine.reset_prefix_cache()
    t0, c0 = time.perf_counter(), time.process_time()
    flat = engine.generate(requests)
    flat_gen_s = time.perf_counter() - t0
    steps2 = getattr(engine, "decode_steps", None)
    flat_tokens = sum(g.completion_tokens for g in flat)
    same = sum(a.text == b.text for (_, a), b in zip(rec.generations, flat, strict=True))
    by_cands: dict[tuple[tuple[str, ...], int], list[Prompt]] = {}
    for p, c, k in rec.logprob_calls:
        by_cands.setdefault((tuple(c), k), []).append(p)
    t0 = time.perf_counter()
    for (cands, k), prompts in by_cands.items():
        engine.next_token_logprobs(prompts, list(cands), k)
    flat_lp_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for other in others.values():
        if other.embed_calls:
            other.inner.embed(other.embed_calls)
    flat_other_s = time.perf_counter() - t0
    flat_cpu = time.process_time() - c0

    if args.in_flight:
        engine.reset_prefix_cache()
    streamed_s = streamed(engine, requests, rec.logprob_calls, args.in_flight) if args.in_flight else None
    sample = random.Random(0).sample(requests, min(args.sequential_sample, len(requests)))
    engine.reset_prefix_cache()
    t0 = time.perf_counter()
    seq_tokens = sum(engine.generate([r])[0].completion_tokens for r in sample)
    seq_s = time.perf_counter() - t0
    pool.close()
    cp_steps, mean_chain = critical_path_steps(RoundsSearch.rounds, KeyedClient.tokens, cfg.search.overlap_root)

    search_gen_tps = gen_tokens / gen_s
    flat_tps = flat_tokens / flat_gen_s
    seq_tps = seq_tokens / seq_s
    search_e2e_tps = gen_tokens / search_s
    flat_e2e_tps = flat_tokens / (flat_gen_s + flat_lp_s + flat_other_s)
    figures = {
        "engine": engine.backend, "model": cfg.engines[key].model, "seeds": args.seeds,
        "nodes": sum(len(t.nodes) for t in trees), "generations": len(requests), "scorer_prompts": n_scorer,
        "generated_tokens": gen_tokens, "flat_generated_tokens": flat_tokens, "replay_identical_texts": same,
        "search_wall_s": round(search_s, 2), "search_generate_s": round(gen_s, 2),
        "search_scorer_s": round(lp_s, 2),
        "flat_generate_s": round(flat_gen_s, 2), "flat_scorer_s": round(flat_lp_s, 2),
        "other_engines_texts_embedded": sum(len(o.embed_calls) for o in others.values()),
        "search_other_engines_s": round(busy_seconds([s for o in others.values() for s in o.embed_spans]), 2),
        "flat_other_engines_s": round(flat_other_s, 2),
        "search_tok_s_end_to_end": round(search_e2e_tps, 2), "flat_tok_s_end_to_end": round(flat_e2e_tps, 2),
        "search_generate_tok_s": round(search_gen_tps, 2), "flat_generate_tok_s": round(flat_tps, 2),
        "sequential_tok_s": round(seq_tps, 2), "sequential_sample": len(sample),
        "ratio_search_vs_flat": round(search_e2e_tps / flat_e2e_tps, 3),
        "search_cpu_s": round(search_cpu, 2), "flat_cpu_s": round(flat_cpu, 2),
        "ratio_search_vs_flat_cpu_time": round(flat_cpu / search_cpu, 3),
        "ratio_search_generate_vs_flat_generate": round(search_gen_tps / flat_tps, 3),
        "search_decode_steps": None if steps1 is None else steps1 - steps0,
        "flat_decode_steps": None if steps2 is None else steps2 - steps1,
        "search_mean_generations_in_flight": round(in_flight, 2),
        "critical_path_decode_steps": cp_steps, "mean_tree_chain_decode_steps": round(mean_chain, 1),
        "streamed_in_flight": args.in_flight or None,
        "streamed_s": None if streamed_s is None else round(streamed_s, 2),
        "ratio_streamed_vs_flat": None if streamed_s is None
        else round((flat_gen_s + flat_lp_s) / streamed_s, 3),
        "ratio_search_vs_sequential": round(search_gen_tps / seq_tps, 2),
        "ratio_scorer_vs_flat_prefill": round((n_scorer / lp_s) / (n_scorer / flat_lp_s), 3)
        if n_scorer else None,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
