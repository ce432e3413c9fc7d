"""Reaching the Hugging Face Hub for a model or dataset name: fail fast, in one line.

datasets and transformers retry an unreachable Hub for about 30 s with a warning per retry before they give up;
one metadata request without retries says the same at once. With `HF_HUB_OFFLINE=1` nothing is requested: a
model name must be in the local cache, a dataset name is datasets' to look up in its own.
"""

from __future__ import annotations

from typing import Any

from idea_mcts.errors import UsageError


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def check_reachable(name: str, repo_type: str, what: str) -> None:
    """UsageError (one line naming `what` and `name`) unless the Hub repository `name` of `repo_type`
    (`model` or `dataset`) can be reached, or the Hub is off (HF_HUB_OFFLINE)."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        if repo_type == "model" and not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise UsageError(f"{what} {name}: not in the local Hugging Face cache, and the Hub is off "
                             "(HF_HUB_OFFLINE)")
        return  # datasets reads its own cache and says at once when a name is not there
    api: Any = HfApi()
    try:
        api.repo_info(name, repo_type=repo_type, timeout=10)
    except HFValidationError as exc:
        raise UsageError(f"{what} {name!r} is neither a local path nor a Hub name ({_one_line(exc)})") from None
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise UsageError(f"{what} {name}: no such Hub {repo_type}, or no access to it ({_one_line(exc)})") from None
    except Exception as exc:  # connection, DNS, proxy and timeout errors of the HTTP client
        raise UsageError(f"{what} {name}: the Hub cannot be reached ({_one_line(exc)}); set HF_HUB_OFFLINE=1 to "
                         "use a locally cached copy") from None


def check_dataset_available(name: str, what: str) -> None:
    """UsageError (one line) unless the Hub dataset `name` can be loaded: reachable, or, with the Hub off
    (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), in the datasets cache (datasets' own lookup, which reads no data)."""
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        check_reachable(name, "dataset", what)
        return
    try:
        datasets.load_dataset_builder(name)
    except Exception as exc:  # ConnectionError (not cached), FileNotFoundError, ...
        raise UsageError(f"{what} {name}: not in the local datasets cache, and the Hub is off (HF_HUB_OFFLINE): "
                         f"{_one_line(exc)}") from None
