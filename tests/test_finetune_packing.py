"""Packing without cross-contamination: an example's logits inside a packed row equal its logits
alone, for the attention kernels and model families the stage uses (tiny random-init models)."""
from __future__ import annotations

import pytest
import torch

from replicate.finetune.data import IGNORE, Collator, pack_examples


def tiny(family: str, attn: str):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, Qwen2Config

    if family == "qwen2":
        cfg = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2)
    else:  # gemma3: sliding-window and global layers, the packaged student's family
        cfg = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=4,
                               layer_types=["sliding_attention", "full_attention"])
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("family,attn", [("qwen2", "sdpa"), ("qwen2", "eager"), ("gemma3", "sdpa")])
def test_packed_examples_do_not_see_each_other(family, attn):
    model = tiny(family, attn)
    g = torch.Generator().manual_seed(1)
    examples = [{"input_ids": torch.randint(3, 300, (n,), generator=g).tolist()} for n in (9, 5, 7, 3)]
    for e in examples:
        e["labels"] = [IGNORE] + e["input_ids"][1:]
    rows = pack_examples(examples, 16)  # 9+7 and 5+3: two examples per row
    assert all(len(r["seq_lengths"]) == 2 for r in rows)
    batch = Collator(pad_id=0, packed=True)(rows)
    batch.pop("meter")
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for r, row in enumerate(rows):
            at = 0
            for n in row["seq_lengths"]:
                ids = torch.tensor([row["input_ids"][at:at + n]])
                alone = model(input_ids=ids).logits[0]
                torch.testing.assert_close(packed[r, at:at + n], alone, atol=1e-4, rtol=1e-4)
                at += n
        # The check can fail: without position_ids (or with a KV cache, which turns the detection off)
        # the second example attends to the first.
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits
        n0 = rows[0]["seq_lengths"][0]
        assert not torch.allclose(leaky[0, n0:n0 + 3], packed[0, n0:n0 + 3], atol=1e-3)
