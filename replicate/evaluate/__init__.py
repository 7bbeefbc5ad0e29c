"""Stage 3: base, student and teacher answer the same prompts; how much of the teacher was copied."""
from replicate.evaluate.stage import run_evaluate

__all__ = ["run_evaluate"]
