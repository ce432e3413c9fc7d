"""Continuous batching in the transformers engine (`Engine.stepped`): rows join a running decode batch, and a
pipelined search's schedule, so its results, do not depend on the threads' timing."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time

import pytest

from idea_mcts import dispatch
from idea_mcts.config import EngineConfig, RoleConfig
from idea_mcts.dispatch import Dispatcher
from idea_mcts.engines import GenerationRequest, SamplingParams, build_engine
from idea_mcts.engines.base import STEP_HOOK
from idea_mcts.roles import RoleClient
from tests.search_helpers import two_seed_search, until


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return build_engine(EngineConfig(model=str(tiny_model_dir), max_batch_size=8, max_model_len=256))


def chat(text):
    return [{"role": "user", "content": text}]


def test_a_row_admitted_mid_decode_generates_what_it_generates_alone(engine):
    """A call that arrives while another call's rows are decoding joins that batch (its KV cache merged, left-
    padded), and every text is what the same request gives on its own (greedy, and seeded sampling)."""
    _join_mid_decode(engine)


@pytest.mark.smollm2
def test_smollm2_row_admitted_mid_decode_generates_what_it_generates_alone(smollm2_dir):
    """The same on the real model, whose next token depends on the whole context (the tiny random model's
    hardly does: a row attending to the wrong cache columns could still give the same text there)."""
    _join_mid_decode(build_engine(EngineConfig(model=str(smollm2_dir), dtype="float32", max_model_len=1024,
                                               max_batch_size=8)))


def _join_mid_decode(engine):
    short = GenerationRequest(chat("Say hi."), SamplingParams(2, 0.0))
    long = GenerationRequest(chat("Write a long story about the sea and the wind."), SamplingParams(14, 0.0))
    # the late prompt is long: on SmolLM2 (1,024-token context) it is prefilled alone and unpadded, then merged
    late = GenerationRequest(chat("The sea is wide and blue, the wind is strong. " * 30 + "List colours, please."),
                             SamplingParams(6, 1.0, seed=5))
    alone = [engine.generate([r])[0] for r in (short, long, late)]
    results: dict[str, object] = {}

    def submit(name, req):
        STEP_HOOK.set(lambda: None)  # the search's wake-up; this test resumes the engine itself
        results[name] = engine.generate([req])[0]

    threads = [threading.Thread(target=submit, args=a) for a in (("short", short), ("long", long))]
    for t in threads:
        t.start()
    until(lambda: engine.step_state() == (2, True), "both calls inside, engine paused")
    first = len(engine.batcher.admissions)
    engine.resume()
    until(lambda: "short" in results and engine.step_state() == (1, True), "the short call answered")
    threads.append(threading.Thread(target=submit, args=("late", late)))
    threads[-1].start()
    until(lambda: engine.step_state() == (2, True), "the late call inside")
    while any(t.is_alive() for t in threads):
        engine.resume()
        time.sleep(0.005)
    step, admitted, live = engine.batcher.admissions[first + 1]
    assert admitted == 1 and live == 1  # the late row joined the long row's running batch
    assert [results[k].text for k in ("short", "long", "late")] == [g.text for g in alone]
    assert [results[k].finish_reason for k in ("short", "long", "late")] == [g.finish_reason for g in alone]


def _jittered(monkeypatch, seed):
    """Every engine call of the dispatcher starts after a random delay (its worker thread sleeps first)."""
    real, rng, lock = dispatch._call, random.Random(seed), threading.Lock()

    def call(g):
        with lock:
            delay = rng.random() * 0.03
        time.sleep(delay)
        return real(g)

    monkeypatch.setattr(dispatch, "_call", call)


def _schedule(engine, first, start):
    return [(s - start, n, live) for s, n, live in engine.batcher.admissions[first:]]


def test_strands_join_a_running_batch_at_the_same_steps_whatever_the_timing(engine, monkeypatch):
    """Three strands on one engine through the dispatcher: a short generation then a second one, a long
    generation, a judge prompt then a generation. Run twice with different random delays in the worker threads:
    the later requests join the long row's running batch, at the same steps in both runs, with the same texts."""
    roles = {"short": RoleConfig(max_new_tokens=2, temperature=0.0), "mid": RoleConfig(max_new_tokens=5),
             "long": RoleConfig(max_new_tokens=16, temperature=0.0), "judge": RoleConfig()}
    clients = {r: RoleClient(r, engine, c, 11) for r, c in roles.items()}

    async def scenario():
        d = Dispatcher()

        async def quick_then_more():
            a = await d.call(clients["short"], "generate", [(chat("Say hi."), "a")])
            return a + await d.call(clients["mid"], "generate", [(chat("Now say more, please."), "b")])

        async def long():
            return await d.call(clients["long"], "generate", [(chat("Write a long story about the sea."), "c")])

        async def judged_then_more():
            await d.call(clients["judge"], "next_token_logprobs", [chat("Rate: 1 or 2?")], ("1", "2"), 20)
            return await d.call(clients["mid"], "generate", [(chat("Explain the rating."), "d")])

        try:
            return await d.run_strands([quick_then_more(), long(), judged_then_more()])
        finally:
            d.close()

    runs = []
    for seed in (1, 2):
        _jittered(monkeypatch, seed)
        start, first = engine.decode_steps, len(engine.batcher.admissions) if engine.batcher else 0
        out = asyncio.run(scenario())
        runs.append(([g.text for gens in out for g in gens], _schedule(engine, first, start)))
    (texts_a, schedule_a), (texts_b, schedule_b) = runs
    assert any(live for _, _, live in schedule_a), f"no request joined a running batch: {schedule_a}"
    assert schedule_a == schedule_b
    assert texts_a == texts_b


def test_search_schedule_and_trees_do_not_depend_on_thread_timing(engine, monkeypatch):
    """The same search twice, each engine call delayed at random in its worker thread (differently each run):
    rows are admitted at the same steps, in the same numbers, and the trees are identical."""
    runs = []
    for seed in (1, 2):
        _jittered(monkeypatch, seed)
        start, first = engine.decode_steps, len(engine.batcher.admissions) if engine.batcher else 0
        _, trees = two_seed_search(engine)
        runs.append(([n.to_record() for t in trees for n in t], _schedule(engine, first, start)))
    assert runs[0][1] and runs[0] == runs[1]


def test_overlap_root_grows_the_loops_trees_whatever_the_timing(engine, monkeypatch):
    """`overlap_root` on the stepped engine: the first rewrites are admitted with the roots' responses, before
    any root is scored, and the trees are those of the loop in order, the same in two runs with different random
    delays in the worker threads."""
    def first_admission(**kw: bool) -> tuple[int, list[dict]]:
        first = len(engine.batcher.admissions) if engine.batcher else 0
        search, trees = two_seed_search(engine, **kw)
        assert search.discarded == 0
        return engine.batcher.admissions[first][1], [n.to_record() for t in trees for n in t]

    rows, want = first_admission()
    assert rows == 2  # the loop in order: the 2 roots' responses
    for seed in (1, 2):
        _jittered(monkeypatch, seed)
        assert first_admission(overlap_root=True) == (2 + 2 * 2, want)  # and the 2 x 2 first rewrites


def test_a_failing_judge_call_fails_alone(engine):
    """A judge call the engine cannot serve (a candidate that is no single token) raises in its own thread; the
    batch goes on serving the next calls."""
    from idea_mcts.errors import UsageError

    outcome: dict[str, object] = {}

    def submit(name, call):
        STEP_HOOK.set(lambda: None)
        try:
            outcome[name] = call()
        except UsageError as exc:
            outcome[name] = exc

    bad = threading.Thread(target=submit, args=("bad", lambda: engine.next_token_logprobs(
        [chat("Rate it.")], ["no single token here"])))
    bad.start()
    until(lambda: engine.step_state() == (1, True), "the bad call inside")
    while bad.is_alive():
        engine.resume()
        time.sleep(0.005)
    assert isinstance(outcome["bad"], UsageError)
    good = threading.Thread(target=submit, args=("good", lambda: engine.generate(
        [GenerationRequest(chat("Say hi."), SamplingParams(3, 0.0))])))
    good.start()
    while good.is_alive():
        engine.resume()
        time.sleep(0.005)
    assert outcome["good"][0].completion_tokens >= 1


def test_a_row_has_the_same_bits_however_many_rows_are_admitted_with_it(engine):
    """A resumed run's cached requests leave its batches, so a row may be admitted alone where the uninterrupted
    run admitted it with others: its first logits and its KV cache must have the same bits either way (on a CPU a
    prefill of 1-2 rows runs other kernels than one of 3+). (Its decode steps are not covered: their bits move with
    the batch's width, i.e. with the left padding, see docs/method.md.)"""
    import torch

    from idea_mcts.engines.continuous import Call, ContinuousBatcher

    torch.manual_seed(0)
    vocab = engine.tokenizer.vocab_size
    a, *others = [torch.randint(5, vocab - 1, (n,)).tolist() for n in (30, 33, 41, 70, 29, 52)]
    greedy = SamplingParams(8, 0.0)

    def admitted_with(rest):
        batcher = ContinuousBatcher(engine)
        with torch.inference_mode():
            batcher._serve([Call(lambda: None, [a, *rest], params=[greedy] * (1 + len(rest)))])
            row = next(b for b, r in enumerate(batcher.rows) if r.index == 0 and not r.done)
            first = batcher.logits[row].clone()
            return first, batcher.cache.layers[0].keys[row][:, -len(a):].clone()

    alone = admitted_with([])
    for rest in (others[:1], others[:2], others):
        together = admitted_with(rest)
        assert torch.equal(alone[0], together[0]), f"first logits differ with {len(rest)} other rows"
        assert torch.equal(alone[1], together[1]), f"KV cache differs with {len(rest)} other rows"


def test_a_resume_sent_before_the_scheduler_first_pauses_is_kept(tiny_model_dir, monkeypatch):
    """The dispatcher may resume the engine (every strand waits, the call is inside) before the scheduler thread
    has reached its first pause: that resume admits the call instead of being lost (the call then hung)."""
    from idea_mcts.engines.continuous import ContinuousBatcher

    real = ContinuousBatcher._run

    def late_start(self):
        time.sleep(0.3)
        real(self)

    monkeypatch.setattr(ContinuousBatcher, "_run", late_start)
    engine = build_engine(EngineConfig(model=str(tiny_model_dir), max_batch_size=8, max_model_len=256))
    results = {}

    def submit():
        STEP_HOOK.set(lambda: None)
        results["hi"] = engine.generate([GenerationRequest(chat("Say hi."), SamplingParams(3, 0.0))])[0]

    thread = threading.Thread(target=submit, daemon=True)
    thread.start()
    until(lambda: engine.step_state() == (1, True), "the call inside")
    engine.resume()  # once, as the dispatcher does when its barrier holds
    thread.join(timeout=30)
    assert "hi" in results, "the resume was lost: the call was never admitted"


def test_a_search_whose_batcher_fails_ends_with_the_error(tiny_model_dir, monkeypatch):
    """When the scheduler thread fails (here: sampling raises), every call inside gets the error and the search
    ends with it. The dispatcher hands answers out only once the engine is paused: a failed batcher that still
    said "running" held them back forever (the search hung)."""
    from idea_mcts.engines.transformers import TransformersEngine

    def broken_sampler(*args, **kwargs):
        raise RuntimeError("sampler broke")

    engine = build_engine(EngineConfig(model=str(tiny_model_dir), max_batch_size=8, max_model_len=256))
    monkeypatch.setattr(TransformersEngine, "_sample", staticmethod(broken_sampler))
    outcome: dict[str, BaseException] = {}

    def search():
        try:
            two_seed_search(engine)
        except BaseException as exc:  # noqa: BLE001 - the test looks at whatever ends the search
            outcome["error"] = exc

    thread = threading.Thread(target=search, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the search hung after its engine's batcher failed"
    assert "sampler broke" in str(outcome.get("error"))


def test_a_search_ends_when_the_batcher_pauses_after_the_dispatcher_looked(tiny_model_dir, monkeypatch):
    """The last answer's thread can reach the dispatcher before the scheduler thread has paused again; the
    dispatcher then finds the engine running and holds the answer. The scheduler's pause must wake it even with
    nothing left inside (it hung: `tests/test_resume.py`'s kill-late run, once in a full suite)."""
    from idea_mcts.engines.continuous import ContinuousBatcher

    real = ContinuousBatcher._pause

    def late_pause(self):
        time.sleep(0.05)  # the dispatcher looks first
        return real(self)

    monkeypatch.setattr(ContinuousBatcher, "_pause", late_pause)
    engine = build_engine(EngineConfig(model=str(tiny_model_dir), max_batch_size=8, max_model_len=256))
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("trees", two_seed_search(engine)[1]), daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the search hung: an answer held for a pause the dispatcher never heard of"
    assert len(outcome["trees"]) == 2


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_a_stopped_search_returns_only_once_no_call_is_left_running(engine, monkeypatch, caplog, error):
    """The node log fails: Ctrl-C or SIGTERM in it (as `idea-mcts evolve` gets them), or a full disk. asyncio
    re-raises a KeyboardInterrupt from the tasks it cancels, so the search's own clean-up did not run and engine
    calls went on in their threads after `run` had raised; the caller then closed the request cache's SQLite index
    under them and the process crashed (CI: a segfault in `tests/test_resume.py`'s SIGTERM test). Calls still on
    their way into the engine when it stops must end too (not wait for a search that is gone)."""
    lock, running, entered = threading.Lock(), [0], [0]

    def counted(method):
        def call(*args, **kwargs):
            with lock:
                running[0] += 1
                entered[0] += 1
                late = 0.1 + 0.15 * running[0]
            try:
                time.sleep(late)  # calls are still on their way in when the search stops, one after the other
                return method(*args, **kwargs)
            finally:
                with lock:
                    running[0] -= 1
        return call

    monkeypatch.setattr(engine, "generate", counted(engine.generate))
    monkeypatch.setattr(engine, "next_token_logprobs", counted(engine.next_token_logprobs))

    def fail(nodes):
        raise error("stopped")

    outcome: dict[str, BaseException] = {}

    def search():
        try:
            two_seed_search(engine, on_nodes=fail)
        except BaseException as exc:  # noqa: BLE001 - the test looks at whatever ends the search
            outcome["error"] = exc
        with lock:
            outcome["left"], outcome["seen"] = running[0], entered[0]

    thread = threading.Thread(target=search, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the stopped search hung"
    assert isinstance(outcome["error"], error)
    assert outcome["left"] == 0, f"{outcome['left']} engine calls still running after the stopped search returned"
    del outcome["error"]  # its traceback holds the search's frames
    gc.collect()
    left = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert not left, left  # every task of the search ended: none destroyed while pending, no exception unread
    time.sleep(0.5)
    assert entered[0] == outcome["seen"], "engine calls began after the stopped search returned"
    monkeypatch.undo()
    assert len(two_seed_search(engine)[1]) == 2  # the engine serves the next search


def test_evolver_rows_start_from_the_kept_kv_cache_of_their_example_turns(tiny_model_dir):
    """An evolver prompt's example exchanges (the turns before its last user message: three, about 1k tokens of
    the tiny model's tokenizer, so the engine allows 2k) are prefilled once and kept:
    an admitted row starts from a copy of it and computes only its own tokens, with the first logits, attention
    mask, position and cache length of a whole prefill (to rounding), and a search's admissions use it."""
    import torch

    from idea_mcts.actions import EXAMPLE_INSTRUCTION, GENERAL
    from idea_mcts.engines.transformers import PREFIX_CACHE_TOKENS

    engine = build_engine(EngineConfig(model=str(tiny_model_dir), max_batch_size=8, max_model_len=2048))
    prompt = GENERAL[0].messages("Give three tips for staying healthy.", prefill=True)
    seq = engine._encode(prompt, 32)
    with torch.inference_mode():
        whole = engine._prefill([seq], padded=False)
        split = engine._prefill_alone(prompt, seq)
        again = engine._prefill_alone(prompt, seq)
    ((ids, _),) = engine._prefixes.values()
    assert PREFIX_CACHE_TOKENS <= len(ids) < len(seq) and seq[:len(ids)] == ids
    assert torch.allclose(split[0], whole[0], atol=1e-4) and torch.equal(split[0], again[0])
    assert torch.equal(split[1], whole[1]) and torch.equal(split[2], whole[2])
    assert split[3].get_seq_length() == whole[3].get_seq_length() == len(seq)
    engine._prefixes.clear()
    search, trees = two_seed_search(engine)
    assert any(n.depth > 0 for t in trees for n in t)
    assert any(EXAMPLE_INSTRUCTION in text for text in engine._prefixes)  # the admissions kept the example turns
