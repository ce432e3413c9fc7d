"""Resumable recipe stages: a fingerprint per stage, a marker written when its outputs are complete, atomic
output directories (`idea_mcts.run_files.atomic_dir`).

    stages = Stages(OUT)
    fp = fingerprint(upstream_fp, settings)          # a stage's fingerprint covers every stage before it
    if (done := stages.done("sft", fp)) is None:     # None: never ran, ran with other settings, or outputs gone
        with atomic_dir(OUT / "sft" / "adapter") as tmp:
            ...write into tmp...                     # renamed over the old output only when the block succeeds
        stages.finish("sft", fp, seconds, outputs=["sft/adapter"])

A marker (`OUT/stages/NAME.json`) is written last, atomically, so it exists only for complete outputs; a
changed setting changes the fingerprint, so that stage and every stage after it run again.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from idea_mcts.run_files import STAGES_DIR, json_default, write_json


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-serialisable parts (dataclasses as dicts, other objects by str)."""
    text = json.dumps(parts, sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_time(times: dict[str, dict[str, Any]], out: Path, name: str, t0: float, skipped: bool,
                marker: dict[str, Any] | None = None) -> None:
    """`times[name]`: whether stage `name` ran or was skipped, its seconds since `t0` and (from its marker)
    those it took when it ran; a skipped stage says so on stderr, naming OUT."""
    if skipped:
        print(f"{name}: skipped (outputs of the same settings are in {out})", file=sys.stderr)
    times[name] = {"status": "skipped" if skipped else "ran", "seconds": round(time.perf_counter() - t0, 2),
                   "original_seconds": marker.get("seconds") if marker else None}


class Stages:
    """The stage markers under OUT/stages: which stage finished with which fingerprint, when, how long."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.skipped: list[str] = []
        """Stages found complete for the same fingerprint in this launch (the relaunch says so)."""
        self.ran: list[str] = []

    def marker(self, name: str) -> dict[str, Any] | None:
        path = self.out / STAGES_DIR / f"{name}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None

    def done(self, name: str, fp: str) -> dict[str, Any] | None:
        """The stage's marker when it finished with fingerprint `fp` and its outputs are all there, else None
        (and then the stage's outputs are stale: the caller re-runs it)."""
        m = self.marker(name)
        if m is None or m.get("fingerprint") != fp:
            return None
        if not all((self.out / p).exists() for p in m.get("outputs", [])):
            return None
        self.skipped.append(name)
        return m

    def finish(self, name: str, fp: str, seconds: float, outputs: list[str], **info: Any) -> dict[str, Any]:
        """Record the stage as complete (call after its outputs are in place)."""
        m = {"stage": name, "fingerprint": fp, "seconds": round(seconds, 2), "outputs": outputs,
             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
        write_json(self.out / STAGES_DIR / f"{name}.json", m)
        self.ran.append(name)
        return m

    def invalidate(self, name: str) -> None:
        (self.out / STAGES_DIR / f"{name}.json").unlink(missing_ok=True)
