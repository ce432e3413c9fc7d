"""The CPU decode step's two replacements (idea_mcts/engines/cpu_decode.py) compute what transformers' `sdpa`
attention and `DynamicCache` compute, to the bit, without their copies."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from idea_mcts.config import EngineConfig
from idea_mcts.engines import build_engine
from idea_mcts.engines.cpu_decode import GQA_SDPA, RoomyLayer, roomy_cache, share_kv_heads


def decode_trace(model, cache, steps: int, select_at: int, slice_at: int) -> list[torch.Tensor]:
    """Logits of a left-padded 5-row prefill and `steps` greedy decode steps; at step `select_at` row 1 leaves
    (`batch_select_indices`), at `slice_at` the first cache column is cut off as the continuous batch does."""
    g = torch.Generator().manual_seed(0)
    rows, width = 5, 40
    ids = torch.randint(5, model.config.vocab_size, (rows, width), generator=g)
    mask = torch.ones(rows, width, dtype=torch.long)
    for b, pad in enumerate([0, 3, 11, 25, 39]):
        mask[b, :pad] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    trace = []
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        logits, pos = out.logits[:, -1], pos[:, -1:]
        for step in range(steps):
            trace.append(logits.clone())
            nxt = logits.argmax(-1)
            if step == select_at:
                idx = torch.tensor([0, 2, 3, 4])
                cache.batch_select_indices(idx)
                mask, pos, nxt = mask[idx], pos[idx], nxt[idx]
            if step == slice_at:
                mask = mask[:, 1:]
                for layer in cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, 1:], layer.values[:, :, 1:]
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
            pos = pos + 1
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                        use_cache=True)
            logits = out.logits[:, -1]
    return trace


def same_bits(model_dir, steps: int = 150) -> None:
    stock = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ours = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert stock.config._attn_implementation == "sdpa"
    assert stock.config.num_key_value_heads < stock.config.num_attention_heads  # grouped heads: the case at stake
    assert share_kv_heads(ours) and ours.config._attn_implementation == GQA_SDPA
    want = decode_trace(stock, DynamicCache(), steps, select_at=30, slice_at=100)
    got = decode_trace(ours, roomy_cache(), steps, select_at=30, slice_at=100)
    for step, (a, b) in enumerate(zip(want, got, strict=True)):
        assert torch.equal(a, b), f"logits differ at step {step}: max {float((a - b).abs().max())}"


def test_shared_heads_and_the_roomy_cache_give_the_stock_bits(tiny_model_dir):
    # 150 steps cross RoomyLayer.ROOM twice, after a row left and after a column was cut
    same_bits(tiny_model_dir)


@pytest.mark.smollm2
def test_shared_heads_and_the_roomy_cache_give_the_stock_bits_on_smollm2(smollm2_dir):
    same_bits(smollm2_dir, steps=70)


def test_a_decode_step_writes_into_the_cache_in_place(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    cache = roomy_cache()
    ids = torch.randint(5, 100, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        layer = cache.layers[0]
        assert isinstance(layer, RoomyLayer)
        where = layer.keys.data_ptr()
        copies = 0
        for step in range(2 * RoomyLayer.ROOM + 10):
            nxt = out.logits[:, -1].argmax(-1)
            out = model(input_ids=nxt[:, None], past_key_values=cache, use_cache=True)
            assert layer.keys.shape[-2] == 11 + step and layer.values.shape[-2] == 11 + step
            copies += layer.keys.data_ptr() != where
            where = layer.keys.data_ptr()
    assert copies == 2  # when the prefill's room ran out (74 tokens) and ROOM tokens after that; not one a step


def test_the_cpu_engine_shares_kv_heads_and_grows_its_cache_in_place(tiny_model_dir):
    engine = build_engine(EngineConfig(model=str(tiny_model_dir), max_batch_size=3, max_model_len=256))
    assert engine.model.config._attn_implementation == GQA_SDPA
    *_, cache = engine._prefill([[5, 6, 7], [8, 9]])
    assert all(isinstance(layer, RoomyLayer) for layer in cache.layers)


def test_a_position_bias_goes_to_the_stock_attention():
    """What the shared-heads attention does not implement (an additive position bias) is computed by
    transformers' own `sdpa`, not dropped."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from idea_mcts.engines.cpu_decode import gqa_sdpa_attention

    g = torch.Generator().manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    q, k, v = (torch.randn(2, h, 5, 8, generator=g) for h in (4, 2, 2))
    bias = torch.randn(1, 4, 5, 5, generator=g)
    want, _ = sdpa_attention_forward(module, q, k, v, None, position_bias=bias)
    got, _ = gqa_sdpa_attention(module, q, k, v, None, position_bias=bias)
    without, _ = gqa_sdpa_attention(module, q, k, v, None)
    assert torch.equal(got, want) and not torch.equal(got, without)
