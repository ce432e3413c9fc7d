"""Errors that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user (config, seed file, paths, model names): one line, exit code 2."""

    exit_code = 2
