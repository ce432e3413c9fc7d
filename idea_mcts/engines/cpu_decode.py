"""What keeps a transformers decode step cheap on a CPU: attention that shares the key/value heads, a KV cache
that grows in place.

Profiled on SmolLM2-135M (2 cores, 64 rows, a 448-token cache), 77 % of a decode step was copying memory, not
computing: transformers' `sdpa` attention copies every layer's keys and values to the query heads' count
(`repeat_kv`, 3 -> 9 heads: transformers lets SDPA share grouped heads only when there is no mask), and its
`DynamicLayer` appends a step's token by concatenating the whole cache (`torch.cat`). The matmuls of the model were
6.5 % of the step. Both copies grow with rows x cache width, so the continuous batch, whose cache is as wide as its
longest row, paid them most. The two replacements below give the same bits as `sdpa` + `DynamicLayer`
(tests/test_cpu_decode.py) and are used by `TransformersEngine`; `bench/decode_step.py` measures the step.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

GQA_SDPA = "idea_mcts_gqa_sdpa"
"""The registered name of `gqa_sdpa_attention` (an `attn_implementation`, with `sdpa`'s masks)."""


def gqa_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' `sdpa` attention, with grouped key/value heads shared by SDPA (`enable_gqa`) instead of
    copied to every query head first. On a CPU SDPA takes grouped heads with a mask; on CUDA a mask would send
    `enable_gqa` to the math kernel, so `TransformersEngine` uses this only on a CPU. What this does not cover (a
    position bias, transformers' paged cache) goes to transformers' own `sdpa`."""
    if kwargs.get("position_bias") is not None or kwargs.get("cache") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=bool(causal and query.shape[2] > 1 and attention_mask is None),
        enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(GQA_SDPA, gqa_sdpa_attention)
AttentionMaskInterface.register(GQA_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def share_kv_heads(model: torch.nn.Module) -> bool:
    """Switch a CPU model on `sdpa` attention to `gqa_sdpa_attention`; whether it was switched (a model that
    does not dispatch through `AttentionInterface` keeps its own)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    can = getattr(model, "_can_set_attn_implementation", None)
    if can is None or not can():
        return False
    model.set_attn_implementation(GQA_SDPA)
    return config._attn_implementation == GQA_SDPA


class RoomyLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are the front of a larger buffer: a step's token is written in
    place, and the whole cache is copied only when the room runs out (every `ROOM` tokens) or after someone set
    `keys`/`values` to other tensors (`batch_select_indices`, the continuous batch's merges), which it adopts."""

    ROOM = 64
    """Tokens of room added at each copy."""

    _kbuf: torch.Tensor | None = None
    _vbuf: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, k = self.get_seq_length(), key_states.shape[-2]
        kbuf, vbuf = self._kbuf, self._vbuf
        if (kbuf is None or vbuf is None or n + k > kbuf.shape[-2] or not _front_of(self.keys, kbuf, n)
                or not _front_of(self.values, vbuf, n)):
            shape = [*key_states.shape[:-2], n + k + self.ROOM, key_states.shape[-1]]
            kbuf, vbuf = key_states.new_empty(shape), value_states.new_empty(shape)
            if n:
                kbuf[..., :n, :] = self.keys
                vbuf[..., :n, :] = self.values
            self._kbuf, self._vbuf = kbuf, vbuf
        kbuf[..., n : n + k, :] = key_states
        vbuf[..., n : n + k, :] = value_states
        self.keys, self.values = kbuf[..., : n + k, :], vbuf[..., : n + k, :]
        return self.keys, self.values

    def reset(self) -> None:
        self._kbuf = self._vbuf = None
        super().reset()


def _front_of(t: torch.Tensor, buf: torch.Tensor, n: int) -> bool:
    """Whether `t` is `buf[..., :n, :]` (the layer's own view, not a tensor set from outside)."""
    return (n > 0 and t.data_ptr() == buf.data_ptr() and t.shape[:-2] == buf.shape[:-2]
            and t.shape[-2] == n and t.stride() == buf.stride())


def roomy_cache() -> DynamicCache:
    """An empty `DynamicCache` whose layers are `RoomyLayer`s."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = RoomyLayer
    return cache
