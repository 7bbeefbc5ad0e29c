"""Stage 2: fine-tune the base student on the teacher's data with TRL."""
from replicate.finetune.train import run_finetune

__all__ = ["run_finetune"]
