"""The copy curve: how much of the teacher a copy gets per teacher example, and per dollar.

    replicate sweep pipelines/tiny-cpu.yaml --examples 50,100,200,400   # into runs/tiny-cpu-sweep/

One generation pass of the largest size (root/data/), then for each size N a sub-run n<N>/ whose
data/train.jsonl is the FIRST N rows of the root's (nested subsets: n100 contains n50), fine-tuned
and evaluated like any run (each n<N>/ is a complete run directory with its own ledger and report).
The root report draws gap_closed (style, fidelity, capability) against N with 95% intervals, fits
g(n) = g_max * n / (n + n50) per family, and its copy-risk card says how many dollars and
GPU-hours close 25/50/80 % of each gap, here (measured) and at the pipeline's full-scale hardware
and prices (cost model). `--set finetune.seeds=3` fine-tunes every size three times: the
intervals then include the spread between training runs.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from replicate import cards, files, options
from replicate.config import MAX_COUNT, Pipeline, with_examples
from replicate.cost.estimate import stage_usd
from replicate.errors import UserError
from replicate.pipeline import (
    estimate,
    evaluate_students,
    finetune_seeds,
    record_estimate,
    refuse_over_budget,
    run_stage,
    say,
)
from replicate.rundir import run_lock, write_resolved


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--examples {text}: expected comma-separated whole numbers, e.g. 50,100,200,400") from None
    if not sizes or sizes[0] <= 0 or sizes[-1] > MAX_COUNT:
        raise UserError(f"--examples {text}: sizes must be between 1 and {MAX_COUNT:,}")
    return sizes


def make_subset(root: Path, sub: Path, n: int, train: list[dict]) -> None:
    """sub/data/: the first n training rows and the same held-out split; done.json written last."""
    data = sub / "data"
    if (data / "done.json").is_file():
        return
    files.write_jsonl(data / "train.jsonl", train[:n])
    for name in ("held_out.jsonl", "README.md"):
        if (root / "data" / name).is_file():
            shutil.copyfile(root / "data" / name, data / name)
    cards.refresh_config(data, f"{root.name}-{sub.name}")  # its own rows: its own datasets config
    held = files.read_jsonl(data / "held_out.jsonl") if (data / "held_out.jsonl").is_file() else []
    # done.json in the generate stage's form (dataset.Done): this data cost nothing more here.
    done = {"subset_of": str(root / "data" / "train.jsonl"), "examples": n, "source_rows": len(train),
            "train_rows": n, "held_out_rows": len(held), "requests": 0, "output_tokens": 0, "usd": 0.0,
            "complete": True}
    files.write_json(data / "done.json", done)


def share_eval_cache(done: Path | None, sub: Path) -> None:
    """Teacher and base answer the same items at every size: start a size's evaluation with the
    previous size's teacher/base generations (evaluate checks each cache's model and settings,
    and regenerates anything that does not match)."""
    if done is None or (sub / "eval" / "scores.json").is_file():
        return
    for role in ("teacher", "base"):
        src, dst = done / "eval" / "generations" / f"{role}.jsonl", sub / "eval" / "generations" / f"{role}.jsonl"
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst.with_suffix(".tmp"))
            dst.with_suffix(".tmp").replace(dst)


def run_sweep(cfg: Pipeline, root: Path, sizes: list[int], *, calibration: dict | None = None) -> dict:
    gen_cfg = with_examples(cfg, max(sizes))  # generate.examples counts train rows (held-out apart)
    gen_est = estimate(gen_cfg, calibration)
    size_ests = {n: estimate(with_examples(cfg, n), calibration) for n in sizes}
    # The sweep pays one generation of the largest size plus a fine-tune and an evaluation per size.
    total = stage_usd(gen_est, "generate") + sum(stage_usd(e, "finetune", "evaluate") for e in size_ests.values())
    say(f"estimate: sweep over {sizes} examples: ${total:,.4f}")
    refuse_over_budget(total, cfg, f"sweep over {sizes} examples")
    options.check_pipeline(cfg)
    budget = (cfg, root)  # the budget covers the whole sweep: root ledger + every n<N>/ ledger
    with run_lock(root):
        from replicate import generate  # heavy (torch): only once the lock is ours
        from replicate.report import write_report

        write_resolved(gen_cfg, root)
        record_estimate(root, gen_est, stages=("generate",))
        run_stage("generate", 1, root, lambda left: generate.run_generate(gen_cfg, root, max_usd=left), budget=budget)
        train = files.read_jsonl(root / "data" / "train.jsonl", "no training data")
        if len(train) < max(sizes):
            raise UserError(f"{root}/data/train.jsonl has {len(train)} rows, fewer than the largest size "
                            f"{max(sizes)}; lower --examples or raise generation")
        evaluated = None  # the last size whose evaluation finished
        for n in sizes:
            sub = root / f"n{n}"
            cfg_n = with_examples(cfg, n)
            with run_lock(sub):  # a stage command on n<N>/ at the same time would refuse
                make_subset(root, sub, n, train)
                write_resolved(cfg_n, sub)
                record_estimate(sub, size_ests[n], stages=("finetune", "evaluate"), sweep_examples=n)
                say(f"-- size {n} ({sub})")
                finetune_seeds(cfg_n, sub, budget)
                share_eval_cache(evaluated, sub)
                evaluate_students(cfg_n, sub, budget)
                evaluated = sub
                write_report(sub)
        paths = write_report(root)
    say(f"sweep report: {paths['md']}  {paths['html']}")
    return paths
