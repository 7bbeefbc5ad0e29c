"""The embedding metric through sentence-transformers gives the published model's pooling: the same
vectors as mean pooling + L2 normalisation computed by hand with transformers."""
from __future__ import annotations

import numpy as np
import pytest

from replicate.evaluate.embed import MAX_TOKENS, Embedder, cosine_to_reference, model_path

pytestmark = pytest.mark.skipif(model_path() is None, reason="the eval extra is not installed")

TEXTS = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog. " * 60, "Paris is in France.", "x"]


def by_hand(texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path())
    model = AutoModel.from_pretrained(model_path(), dtype=torch.float32).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


def test_sentence_transformers_matches_mean_pooling_by_hand():
    e = Embedder(model_path())
    got = e.encode(TEXTS)
    assert got.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, by_hand(TEXTS), atol=1e-5)  # the long text is cut at 256 tokens in both
    ref = e.encode(["The capital of France is Paris."] * 3)
    cos = cosine_to_reference(e, ["Paris is the capital of France.", "Bananas are yellow.", "  "], ref)
    assert cos[0] > 0.9 and cos[1] < 0.3 and cos[2] == 0.0
