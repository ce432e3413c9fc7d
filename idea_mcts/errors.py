"""Errors that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user (config, seed file, paths, model names): one line, exit code 2."""


class SearchStopped(RuntimeError):
    """A call dropped from a `stepped` or `concurrent` engine (its requests aborted) because the search that sent
    it has stopped (Ctrl-C, SIGTERM, a failure): its work is not cached, and a resume sends it again."""


class EngineError(RuntimeError):
    """An engine cannot serve requests (server unreachable after retries, model failed to load): one line,
    exit code 1; the run's completed work stays on disk."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops at once, keeps its completed work, and exits 143."""


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler: stop the process the way Ctrl-C does (`Terminated`)."""
    raise Terminated
