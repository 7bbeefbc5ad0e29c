"""The cost model: a pipeline -> device-hours, wall-clock and dollars per stage, without running it.

Pure arithmetic on the tables in budgets/ (no torch, no engine, no stage)."""
from replicate.cost.estimate import estimate_pipeline

__all__ = ["estimate_pipeline"]
