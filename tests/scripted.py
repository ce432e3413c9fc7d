"""A scripted engine for search-mechanics tests: deterministic outputs chosen by the kind of prompt, and a
record of every batch it was handed."""

from __future__ import annotations

import hashlib
import math
import re

from idea_mcts.engines.base import Engine, Generation, GenerationRequest, Prompt, TokenLogprobs


def _text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


class ScriptedEngine(Engine):
    """Evolver prompts get `<instruction> +1` (so each depth adds one '+1'), responses echo the instruction,
    the complexity digit is the number of '+1's (capped at 6), quality is always 4, tags are two per node."""

    backend = "scripted"

    def __init__(self, fail_evolve_every: int = 0) -> None:
        super().__init__("scripted")
        self.batches: list[tuple[str, int]] = []
        self.fail_evolve_every = fail_evolve_every
        self._evolves = 0

    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        kinds = []
        out = []
        for r in requests:
            text = _text(r.prompt)
            if "different methods for rewriting" in text:
                kinds.append("meta")
                out.append(Generation(text="Methods:\n1. Require a rhyme scheme in the answer.\n"
                                           "2. Ask for exactly three stanzas.\n", completion_tokens=20))
            elif "Reply with the new instruction only" in text:
                kinds.append("evolve")
                self._evolves += 1
                original = text.rsplit("\n\nInstruction: ", 1)[1]
                if self.fail_evolve_every and self._evolves % self.fail_evolve_every == 0:
                    out.append(Generation(text="", completion_tokens=0))
                else:
                    out.append(Generation(text=f"{original} +1", completion_tokens=3))
            elif "tags of user intentions" in text:
                kinds.append("tag")
                out.append(Generation(text='a", "explanation": "x"}, {"tag": "b", "explanation": "y"}]',
                                      completion_tokens=10))
            else:
                kinds.append("respond")
                out.append(Generation(text=f"answer to: {text}", completion_tokens=5))
        self.batches.append(("+".join(sorted(set(kinds))), len(requests)))
        return out

    def _next_token_logprobs(self, prompts: list[Prompt], candidates: list[str], top_k: int
                             ) -> list[TokenLogprobs]:
        out = []
        for p in prompts:
            text = _text(p)
            depth = len(re.findall(r"\+1", text))
            digit = str(min(6, 1 + depth)) if "Complexity score" in text else "4"
            out.append(TokenLogprobs(logprobs={digit: 0.0}))
        self.batches.append(("logprobs", len(prompts)))
        return out


class RewritesOf(ScriptedEngine):
    """The scripted engine, except that every rewrite of the instruction `seed` (and of nothing else) is
    `rewrite`."""

    seed = "Name a fruit."
    rewrite = ""

    def _generate(self, requests):
        out = super()._generate(requests)
        for r, g in zip(requests, out, strict=True):
            text = _text(r.prompt)
            if "Reply with the new instruction only" in text and text.endswith(f"Instruction: {self.seed}"):
                g.text = self.rewrite
        return out


class ScriptedEmbedder(Engine):
    """Bag-of-words embeddings: each word (split on whitespace, lower-cased) adds 1 to one of `dim` dimensions
    chosen by its hash, L2-normalised. Texts sharing words are close; a text's vector is the same in any call.
    `calls` records each call's size."""

    backend = "scripted-embed"

    def __init__(self, dim: int = 16) -> None:
        super().__init__("scripted-embed")
        self.dim = dim
        self.calls: list[int] = []

    def vector(self, text: str) -> list[float]:
        v = [0.0] * self.dim
        for word in text.lower().split():
            v[int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]

    def _embed(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(len(texts))
        return [self.vector(t) for t in texts]
