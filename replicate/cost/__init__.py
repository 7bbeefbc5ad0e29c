"""The cost model: a pipeline -> device-hours, wall-clock and dollars per stage, without running it.

Pure arithmetic on the tables in budgets/ (no torch, no engine, no stage). `estimate_pipeline` is
imported on first use, so `replicate plan` (which needs no pipeline schema) skips pydantic."""

__all__ = ["estimate_pipeline"]


def __getattr__(name: str):
    if name == "estimate_pipeline":
        from replicate.cost.estimate import estimate_pipeline

        return estimate_pipeline
    raise AttributeError(f"module 'replicate.cost' has no attribute {name!r}")
