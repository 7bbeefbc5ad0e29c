"""Stage 1: instruction data from the teacher (self-instruct, respond, or reuse)."""
from replicate.generate.stage import run_generate

__all__ = ["run_generate"]
