import pytest

from idea_mcts.cli import main
from idea_mcts.config import EngineConfig, EvolveConfig, load_config
from idea_mcts.engines import build_engine
from idea_mcts.errors import UsageError


def test_defaults_are_the_paper_settings():
    cfg = load_config(None)
    s = cfg.search
    assert (s.iterations, s.expand_width, s.exploration_constant, s.max_depth, s.reward_threshold, s.value) == \
        (3, 5, 1.0, 4, 10.0, "mean")
    assert (cfg.reward.quality, cfg.reward.complexity, cfg.reward.diversity) == (1.0, 1.0, 1.0)
    assert cfg.roles.evolver.temperature == 0.7


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("search:\n  iterations: 2\nengines:\n  default: {}\n  big: {backend: vllm, model: org/m}\n"
                 "roles:\n  evolver: {engine: big}\n")
    cfg = load_config(p, ["search.value=max", "--export.mode", "all", "--search.expand_width=3"])
    assert isinstance(cfg, EvolveConfig)
    assert cfg.search.iterations == 2 and cfg.search.value == "max" and cfg.search.expand_width == 3
    assert cfg.export.mode == "all" and cfg.engines["big"].backend == "vllm"
    assert cfg.roles.evolver.engine == "big" and cfg.roles.responder.engine == "default"


def test_engine_env_values_are_strings(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("engines:\n  default: {backend: vllm, env: {VLLM_CPU_NUM_OF_RESERVED_CPU: 0}}\n")
    assert load_config(p, []).engines["default"].env == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


@pytest.mark.parametrize(("yaml_text", "overrides", "needle"), [
    ("search:\n  iteratons: 2\n", [], "search.iteratons"),
    ("search:\n  iterations: many\n", [], "search.iterations"),
    ("", ["search.nope=1"], "search.nope"),
    ("", ["export.mode=weird"], "export.mode"),
    ("roles:\n  evolver: {engine: missing}\n", [], "roles.evolver.engine"),
    ("engines:\n  default: {backend: tpu}\n", [], "backend"),
    ("- a\n- b\n", [], "mapping"),
    ("search: [unclosed\n", [], "cannot parse"),
    ("", ["reward.quality=0", "reward.complexity=0", "search.validity_gate=0.5"], "search.validity_gate"),
    ("", ["search.min_root_similarity=0.3"], "search.min_root_similarity"),  # no embedder (novelty is off)
    ("", ["search.min_root_similarity=2"], "search.min_root_similarity"),
    ("", ["search.expand_width=5", "search.expand_attempts=3"], "search.expand_attempts"),
    ("engines:\n  default: {env: {VLLM_CPU_NUM_OF_RESERVED_CPU: '0'}}\n", [], "engines.default.env"),
    ("engines:\n  default: {backend: openai, base_url: 'http://h/v1', http_backend: requests}\n", [],
     "engines.default.http_backend"),
])
def test_config_errors_are_one_line_naming_the_key(tmp_path, yaml_text, overrides, needle):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(UsageError) as err:
        load_config(p, overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file_cli_exit_2(tmp_path, capsys):
    assert main(["evolve", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.yaml" in err[0] and "Traceback" not in err[0]


def test_unknown_override_cli_exit_2(capsys):
    assert main(["evolve", "search.iterations=x"]) == 2
    assert "search.iterations" in capsys.readouterr().err


def test_yaml_engines_replace_the_builtin_default(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("engines:\n  a: {model: x/y}\nroles:\n  evolver: {engine: a}\n  responder: {engine: a}\n"
                 "  quality: {engine: a}\n  complexity: {engine: a}\n  tagger: {engine: a}\n")
    assert list(load_config(p).engines) == ["a"]
    p.write_text("engines:\n  a: {model: x/y}\n")  # roles still name the default engine, which is gone
    with pytest.raises(UsageError, match="roles.evolver.engine names 'default'"):
        load_config(p)


def test_the_aiohttp_backend_without_aiohttp_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the aiohttp extra the client's aiohttp class refuses to start: a one-line UsageError naming the
    fix, not a traceback (no server needed: nothing is sent)."""
    import openai

    class Missing:  # what openai defines when aiohttp is not installed
        def __init__(self, **_kwargs: object) -> None:
            raise RuntimeError("To use the aiohttp client you must have installed the package with the `aiohttp` "
                               "extra")

    monkeypatch.setattr(openai, "DefaultAioHttpClient", Missing)
    cfg = EngineConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(UsageError, match=r"pip install 'openai\[aiohttp\]' \(or set http_backend: httpx\)"):
        build_engine(cfg)
    build_engine(EngineConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1",
                              http_backend="httpx")).close()


def test_an_openai_engine_keeps_its_max_concurrency_of_calls_in_flight(tmp_path):
    """The pipelined search gives each server engine `max_in_flight` threads: an OpenAI-compatible server's
    `max_concurrency`, known to the run's cached engine before the engine loads (nothing is sent here)."""
    from idea_mcts.engines import Engine, max_in_flight
    from idea_mcts.pipeline import EvolveRun

    server = {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "max_concurrency": 7}
    assert max_in_flight(EngineConfig(**server)) == 7
    assert max_in_flight(EngineConfig(backend="vllm", model="m")) == Engine.max_in_flight
    engine = build_engine(EngineConfig(**server))
    assert engine.max_in_flight == 7
    engine.close()
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}", "data.seeds=builtin:demo", "data.max_seeds=2",
                             *(f"engines.default.{k}={v}" for k, v in server.items())])
    run = EvolveRun(cfg)
    run.store.open(run.fingerprint())
    try:
        assert run.client("evolver").engine.max_in_flight == 7
    finally:
        run.store.close()
