"""Subcommands: parse, call one library function, set the exit code.

Heavy imports (torch, vllm, trl) happen inside the stage modules, so `estimate` starts fast.
Every error a user can cause is a UserError: one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from replicate import __version__
from replicate.errors import UserError


def cmd_models(args: argparse.Namespace) -> int:
    from replicate import weights

    if args.convert:
        for name in weights.PACKAGED:
            weights.ensure_packaged(name)
    rows = weights.packaged_status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="packaged offline models")
    for col in ("reference", "role", "params", "installed", "converted", "size", "where"):
        t.add_column(col)
    for r in rows:
        size = f"{r['bytes'] / 1e6:.0f} MB" if r["bytes"] else "-"
        t.add_row(r["ref"], r["role"], f"{r['params'] / 1e6:.1f}M", "yes" if r["installed"] else f"no: {r['install']}",
                  "yes" if r["converted"] else "no", size, r["path"] or "(converted on first use)")
    # Paths are the point of this listing: don't let a narrow pipe truncate them.
    Console(width=None if sys.stdout.isatty() else 200).print(t)
    return 0


def _pipeline_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipeline YAML (see pipelines/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a YAML value, e.g. --set generate.examples=100 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="replicate", description="Cheap-replication cost simulator: estimate, run "
                                 "and measure Alpaca-style copies of a teacher model.")
    ap.add_argument("--version", action="version", version=f"replicate {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the packaged offline models and whether they are converted")
    p.add_argument("--convert", action="store_true", help="convert both packaged models now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("estimate", help="predict a pipeline's cost without running it")
    _pipeline_arg(p)
    p.add_argument("--prices", type=int, help="price year (default: the YAML's `prices`)")
    p.add_argument("--calibration", help="YAML written by `replicate calibrate`")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: _call("replicate.report.estimate", "cli_estimate", a))

    p = sub.add_parser("plan", help="the best replications a budget buys, ranked")
    p.add_argument("--budget", type=float, required=True, help="dollars")
    p.add_argument("--prices", type=int, default=2026)
    p.add_argument("--teacher", default="gpt-4o-mini", help="teacher (API model or catalog model)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: _call("replicate.report.estimate", "cli_plan", a))

    p = sub.add_parser("generate", help="stage 1: generate instruction data from the teacher")
    _pipeline_arg(p)
    p.add_argument("--run-dir", help="default: runs/<name>")
    p.add_argument("--max-usd", type=float, help="stop cleanly (resumable) before spending more")
    p.set_defaults(func=lambda a: _call("replicate.generate.stage", "cli_generate", a))

    p = sub.add_parser("finetune", help="stage 2: fine-tune the student on the generated data")
    _pipeline_arg(p)
    p.add_argument("--run-dir", help="default: runs/<name>")
    p.add_argument("--max-usd", type=float, help="stop cleanly (resumable, checkpoint saved) before spending more")
    p.set_defaults(func=lambda a: _call("replicate.finetune.train", "cli_finetune", a))

    p = sub.add_parser("evaluate", help="stage 3: compare base, student and teacher")
    p.add_argument("pipeline", nargs="?", help="pipeline YAML (or give --student/--teacher/--base)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run-dir", help="default: runs/<name>")
    p.add_argument("--student", help="student model folder")
    p.add_argument("--teacher", help="teacher model reference")
    p.add_argument("--base", help="base model reference")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: _call("replicate.evaluate.stage", "cli_evaluate", a))

    p = sub.add_parser("run", help="the whole replication: estimate, generate, finetune, evaluate, report")
    _pipeline_arg(p)
    p.add_argument("--run-dir", help="default: runs/<name>")
    p.add_argument("--calibration", help="YAML written by `replicate calibrate` (for the recorded estimate)")
    p.set_defaults(func=lambda a: _call("replicate.pipeline", "cli_run", a))

    p = sub.add_parser("sweep", help="copy curve: fine-tune and evaluate on nested subsets of one generation")
    _pipeline_arg(p)
    p.add_argument("--examples", required=True, help="comma-separated sizes, e.g. 50,100,200,400")
    p.add_argument("--run-dir", help="default: runs/<name>-sweep")
    p.add_argument("--calibration", help="YAML written by `replicate calibrate` (for the recorded estimates)")
    p.set_defaults(func=lambda a: _call("replicate.pipeline", "cli_sweep", a))

    p = sub.add_parser("report", help="report.md/.html/.json from a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=lambda a: _call("replicate.report.build", "cli_report", a))

    p = sub.add_parser("calibrate", help="fit the cost model's efficiencies to measured runs")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("-o", "--output", default="calibration.yaml")
    p.set_defaults(func=lambda a: _call("replicate.cost.calibrate", "cli_calibrate", a))

    p = sub.add_parser("demo", help="the offline default replication (what `make demo` runs)")
    p.add_argument("--run-dir", help="default: runs/tiny-cpu")
    p.set_defaults(func=lambda a: _call("replicate.pipeline", "cli_demo", a))
    return ap


def _call(module: str, func: str, args: argparse.Namespace) -> int:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("replicate"):
            raise UserError(f"`replicate {args.command}` is not available in this version") from None
        raise
    return getattr(mod, func)(args) or 0


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 0
    try:
        return args.func(args)
    except UserError as e:
        print(f"replicate: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("replicate: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
