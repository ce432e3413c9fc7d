"""An instant scripted engine for benchmarks of the search's own overhead (a copy of the idea of
tests/scripted.py: bench must not import tests/). Outputs are chosen by the kind of prompt and returned at once,
so everything a benchmark measures around it is the search, the dispatcher, the request cache, the node log and
the export."""

from __future__ import annotations

from idea_mcts.engines.base import Engine, Generation, GenerationRequest, Prompt, TokenLogprobs


def _text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


class InstantEngine(Engine):
    """Evolver prompts get `<instruction> +1`, responses echo the instruction, the complexity digit is
    1 + the number of '+1's (capped at 6), quality is always 4, tags are two per node. Counts its requests."""

    backend = "scripted"

    def __init__(self) -> None:
        super().__init__("instant")
        self.n_generate = 0
        self.n_logprobs = 0

    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        out = []
        for r in requests:
            text = _text(r.prompt)
            if "Reply with the new instruction only" in text:  # an evolution (the action templates' last line)
                original = text.rsplit("\n\nInstruction: ", 1)[1]
                out.append(Generation(text=f"{original} +1", completion_tokens=3))
            elif "tags of user intentions" in text:
                out.append(Generation(text='a", "explanation": "x"}, {"tag": "b", "explanation": "y"}]',
                                      completion_tokens=10))
            else:
                out.append(Generation(text=f"answer to: {text[:200]}", completion_tokens=5))
        self.n_generate += len(requests)
        return out

    def _next_token_logprobs(self, prompts: list[Prompt], candidates: list[str], top_k: int
                             ) -> list[TokenLogprobs]:
        out = []
        for p in prompts:
            text = _text(p)
            digit = str(min(6, 1 + text.count("+1"))) if "Complexity score" in text else "4"
            out.append(TokenLogprobs(logprobs={digit: 0.0}))
        self.n_logprobs += len(prompts)
        return out
