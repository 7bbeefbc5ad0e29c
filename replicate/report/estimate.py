"""`replicate estimate` and `replicate plan`: print the cost model's answer (table or --json).

No torch, no vLLM: this answers in well under a second (tests/test_estimate_cli.py checks both).
"""
from __future__ import annotations

import argparse
import json

from replicate.config import load_pipeline
from replicate.errors import UserError


def _usd(x: float) -> str:
    return f"${x:,.2f}" if x < 100 else f"${x:,.0f}"


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.2f} h"


def _stage_detail(s: dict) -> str:
    if s["device"] == "none":
        return s.get("note", "")
    if s["name"] == "finetune":
        return (f"{s['method']}, {s['trained_tokens'] / 1e6:.2f}M tokens ({s['padded_tokens'] / 1e6:.2f}M padded), "
                f"{s['tokens_per_s']:,.0f} tok/s, MFU {s['mfu']:.1%}, {s['memory_gb_per_device']:.0f} GB/device")
    if s["name"] == "generate":
        text = f"{s['requests']:,.0f} requests, {s['prompt_tokens'] / 1e6:.2f}M in + {s['output_tokens'] / 1e6:.2f}M out"
        if s.get("tokens_per_s"):
            text += f", {s['tokens_per_s']:,.0f} out tok/s ({s['decode_bound']}-bound)"
        return text
    return f"{s['outputs']:,} prompts x 3 models" + (f", {s['judged_pairs']:,} judged pairs" if s.get("judged_pairs") else "")


def cli_estimate(args: argparse.Namespace) -> int:
    from replicate.cost.estimate import estimate_pipeline

    cfg = load_pipeline(args.pipeline, args.overrides)
    calibration = None
    if args.calibration:
        from replicate.cost.calibration import load_calibration

        calibration = load_calibration(args.calibration)
    est = estimate_pipeline(cfg, prices_year=args.prices, calibration=calibration, source=args.pipeline).to_dict()
    if cfg.published is not None:
        est["published"] = cfg.published.model_dump(exclude_none=True)
    if args.json:
        print(json.dumps(est, indent=2, default=float))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{est['name']}: estimated cost at {est['prices']} prices"
              + (" (calibrated)" if est["calibrated"] else ""))
    for col, just in (("stage", "left"), ("device", "left"), ("GPU-h", "right"), ("wall", "right"),
                      ("cost", "right"), ("low-high", "right")):
        t.add_column(col, justify=just, no_wrap=True)
    for s in est["stages"]:
        t.add_row(s["name"], s["device"], f"{s['gpu_hours']:,.1f}", _hours(s["wall_hours"]), _usd(s["usd"]),
                  f"{_usd(s['usd_low'])}-{_usd(s['usd_high'])}")
    tot = est["total"]
    t.add_row("total", "", f"{tot['gpu_hours']:,.1f}", _hours(tot["wall_hours"]), _usd(tot["usd"]),
              f"{_usd(tot['usd_low'])}-{_usd(tot['usd_high'])}", style="bold")
    console = Console(width=max(Console().width, 110))
    console.print(t)
    for s in est["stages"]:
        console.print(f"{s['name']}: {_stage_detail(s)}")
    for note in est["notes"]:
        console.print(f"note: {note}")
    pub = est.get("published")
    if pub:
        ft = next(s for s in est["stages"] if s["name"] == "finetune")
        parts = []
        if pub.get("wall_hours"):
            parts.append(f"fine-tuning wall {_hours(pub['wall_hours'])} (predicted {_hours(ft['wall_hours'])}, "
                         f"x{ft['wall_hours'] / pub['wall_hours']:.2f})")
        if pub.get("usd"):
            parts.append(f"total ${pub['usd']:,.0f} (predicted {_usd(tot['usd'])})")
        console.print(f"published: {'; '.join(parts) or 'no figures'} [{pub['source']}]")
    return 0


def cli_plan(args: argparse.Namespace) -> int:
    from replicate.cost.plan import plan

    if args.top <= 0:
        raise UserError(f"--top: must be positive, got {args.top}")
    result = plan(args.budget, args.prices, args.teacher, args.top)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 110))
    if not result["options"]:
        console.print(f"nothing fits ${result['budget_usd']:,.2f}: even the smallest student with "
                      "1,000 examples costs more")
        return 0
    t = Table(title=f"best replications for ${result['budget_usd']:,.0f} at {result['prices']} prices "
              f"(teacher {result['teacher']})")
    for col in ("#", "student", "examples", "method", "hardware", "cost", "wall"):
        t.add_column(col, no_wrap=True)
    for i, o in enumerate(result["options"], 1):
        t.add_row(str(i), f"{o['student']} ({o['params'] / 1e9:.1f}B)", f"{o['examples']:,}", o["method"],
                  f"{o['count']}x {o['gpu']}", _usd(o["usd"]), _hours(o["wall_hours"]))
    console.print(t)
    for i, o in enumerate(result["options"], 1):
        console.print(f"{i}. data {_usd(o['generate_usd'])} + fine-tuning {_usd(o['finetune_usd'])}; "
                      f"limited by: {o['limit']}")
    console.print(f"{result['feasible']:,} (student, examples) pairs fit of {result['candidates']:,} setups costed. "
                  "Ranking: log10(params) + 0.5 log10(examples) + a small bonus for full fine-tuning "
                  "(a heuristic, docs/cost-model.md); evaluation not included.")
    return 0
    console.print(t)
    console.print("ranking: log10(params) + 0.5 log10(examples) + small bonus for full fine-tuning "
                  "(a heuristic; see docs/cost-model.md). Evaluation is not included.")
    return 0
