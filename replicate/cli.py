"""Every subcommand: parse, call one library function, print, set the exit code.

Heavy imports (torch, vllm, trl) happen inside the stages, and the handlers import the stages
inside themselves, so `estimate` starts fast. Every error a user can cause is a UserError: one
line on stderr (`replicate: error: ...`), exit code 2; a bad option is the same one line.
Ctrl-C and SIGTERM unwind the stage (engines stopped, everything finished saved): exit 130/143.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from replicate import __version__
from replicate.errors import UserError, exit_code

# ---- handlers, in data-flow order ----------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from replicate import weights
    from replicate.tables import console_table

    if args.convert:
        for name in weights.PACKAGED:
            weights.ensure_packaged(name)
    rows = weights.packaged_status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    body = [[r["ref"], r["role"], f"{r['params'] / 1e6:.1f}M", "yes" if r["installed"] else f"no: {r['install']}",
             "yes" if r["converted"] else "no", f"{r['bytes'] / 1e6:.0f} MB" if r["bytes"] else "-",
             r["path"] or "(converted on first use)"] for r in rows]
    # Paths are the point of this listing: console_table does not let a narrow pipe truncate them.
    console_table("packaged offline models", ["reference", "role", "params", "installed", "converted", "size",
                                              "where"], body)
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from replicate.config import load_pipeline
    from replicate.cost import estimate_pipeline
    from replicate.cost.params import load_calibration
    from replicate.report.estimate import print_estimate

    cfg = load_pipeline(args.pipeline, args.overrides)
    est = estimate_pipeline(cfg, prices_year=args.prices, calibration=load_calibration(args.calibration),
                            source=args.pipeline).to_dict()
    if cfg.published is not None:
        est["published"] = cfg.published.model_dump(exclude_none=True)
    if args.json:
        print(json.dumps(est, indent=2, default=float))
    else:
        print_estimate(est)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from replicate.cost.plan import plan
    from replicate.report.estimate import print_plan

    if args.top <= 0:
        raise UserError(f"--top: must be positive, got {args.top}")
    result = plan(args.budget, args.prices, args.teacher, args.top)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_plan(result)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from replicate.config import load_pipeline
    from replicate.generate import run_generate
    from replicate.pipeline import budget_left, with_budget
    from replicate.rundir import default_run_dir, run_lock

    cfg = with_budget(load_pipeline(args.pipeline, args.overrides), args.max_usd)
    run_dir = default_run_dir(cfg.name, args.run_dir)
    # --max-usd (or budget.max_usd) caps ALL measured spending in the run directory, as `replicate
    # run` does: this call may spend what is left, so a rerun with the same limit does not spend more.
    with run_lock(run_dir):
        s = run_generate(cfg, run_dir, max_usd=budget_left(cfg, run_dir, "generate"))
    print(f"generate: {s['train_rows']} train + {s['held_out_rows']} held-out rows from {s['requests']} requests, "
          f"{s['output_tokens']:,} output tokens, ${s['usd']:.4f} -> {run_dir / 'data'}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from replicate.config import load_pipeline
    from replicate.finetune import run_finetune
    from replicate.pipeline import budget_left, with_budget
    from replicate.rundir import default_run_dir, run_lock

    cfg = with_budget(load_pipeline(args.pipeline, args.overrides), args.max_usd)
    run_dir = default_run_dir(cfg.name, args.run_dir)
    with run_lock(run_dir):
        m = run_finetune(cfg, run_dir, max_usd=budget_left(cfg, run_dir, "finetune"))
    print(f"finetune: {m.get('global_step')} steps, {m.get('trained_tokens'):,} tokens, "
          f"{m.get('tokens_per_s')} tok/s, MFU {m.get('mfu')}, ${m.get('usd', 0):.4f} this run -> {m.get('merged')}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from replicate.config import evaluation_pipeline
    from replicate.evaluate import run_evaluate
    from replicate.pipeline import budget_left, with_budget
    from replicate.report.evaluation import print_summary, write_summary
    from replicate.rundir import default_run_dir, run_lock

    cfg = with_budget(evaluation_pipeline(args.pipeline, args.overrides, teacher=args.teacher, base=args.base,
                                          student=args.student), args.max_usd)
    run_dir = default_run_dir(cfg.name, args.run_dir)
    with run_lock(run_dir):
        scores = run_evaluate(cfg, run_dir, student_dir=Path(args.student) if args.student else None,
                              max_usd=budget_left(cfg, run_dir, "evaluate"))
        write_summary(run_dir / "eval", scores)
    if args.json:
        print(json.dumps(scores, indent=2, default=float))
    else:
        print_summary(scores)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from replicate.config import load_pipeline
    from replicate.cost.params import load_calibration
    from replicate.pipeline import run_pipeline, with_budget
    from replicate.rundir import default_run_dir

    cfg = with_budget(load_pipeline(args.pipeline, args.overrides), args.max_usd)
    run_pipeline(cfg, default_run_dir(cfg.name, args.run_dir), calibration=load_calibration(args.calibration))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from replicate.config import load_pipeline
    from replicate.cost.params import load_calibration
    from replicate.pipeline import with_budget
    from replicate.rundir import default_run_dir
    from replicate.sweep import parse_sizes, run_sweep

    cfg = with_budget(load_pipeline(args.pipeline, args.overrides), args.max_usd)
    run_sweep(cfg, default_run_dir(cfg.name, args.run_dir, "-sweep"), parse_sizes(args.examples),
              calibration=load_calibration(args.calibration))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from replicate.report import write_report
    from replicate.rundir import run_lock

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if not (run_dir / "ledger.jsonl").is_file():  # before the lock: a folder that is no run gets no .lock
        raise UserError(f"{run_dir}: no ledger.jsonl yet (run `replicate run` first)")
    with run_lock(run_dir):
        paths = write_report(run_dir)
    for p in paths.values():
        print(p)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from replicate import files, meter
    from replicate.cost.calibrate import calibrate

    out = Path(args.output)
    if out.is_dir():
        raise UserError(f"-o {out}: is a folder; name the calibration file, e.g. -o {out / 'calibration.yaml'}")
    if not out.parent.is_dir():
        raise UserError(f"-o {out}: no folder {out.parent}; create it first or write elsewhere")
    result = calibrate([Path(d) for d in args.run_dirs])
    files.write_yaml(out, result, header=f"# written by `replicate calibrate {' '.join(args.run_dirs)}` on "
                     f"{meter.now_iso()}\n# use: replicate estimate PIPELINE.yaml --calibration {out}\n")
    for key, rep in result["fit"].items():
        runs = "; ".join(f"{r['run']}: measured {r['measured_s']} s, default {r['default_s']} s, "
                         f"calibrated {r['calibrated_s']} s" for r in rep["runs"])
        print(f"{key}: speed x{rep['speed_factor']:.3g}, startup {rep['startup_s']:.3g} s ({runs})")
    print(out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from replicate.pipeline import run_demo

    run_demo(args.run_dir, args.max_usd)
    return 0


# ---- the parser ------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, except that a bad option is the program's one error line (exit 2), not a usage dump."""

    def error(self, message: str):
        self.exit(2, f"replicate: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _dollars(text: str) -> float:
    """A dollar amount: a finite number >= 0 (`nan`, `inf`, `-1`, `abc` are refused)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected dollars, e.g. 2.50, got {text!r}") from None
    if not math.isfinite(x) or x < 0 or x > 1e12:
        raise argparse.ArgumentTypeError(f"expected a finite amount of dollars between 0 and 1e12, got {text!r}")
    return x


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= n <= 10_000:
        raise argparse.ArgumentTypeError(f"expected 1 to 10000, got {n}")
    return n


def _year(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a year, e.g. 2026, got {text!r}") from None


MAX_USD_HELP = ("a hard ceiling on the measured dollars in the run directory (default: the YAML's budget.max_usd); "
                "stops cleanly and resumably before spending would pass it")


def _max_usd_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-usd", type=_dollars, metavar="USD", help=MAX_USD_HELP)


def _pipeline_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipeline YAML (see pipelines/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a YAML value, e.g. --set generate.examples=100 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="replicate", description="Cheap-replication cost simulator: estimate, run "
                                 "and measure Alpaca-style copies of a teacher model.")
    ap.add_argument("--version", action="version", version=f"replicate {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the packaged offline models and whether they are converted")
    p.add_argument("--convert", action="store_true", help="convert both packaged models now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("estimate", help="predict a pipeline's cost without running it")
    _pipeline_arg(p)
    p.add_argument("--prices", type=_year, help="price year (default: the YAML's `prices`)")
    p.add_argument("--calibration", help="YAML written by `replicate calibrate`")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("plan", help="the best replications a budget buys, ranked")
    p.add_argument("--budget", type=_dollars, required=True, help="dollars")
    p.add_argument("--prices", type=_year, default=2026)
    p.add_argument("--teacher", default="gpt-4o-mini", help="teacher (API model or catalog model)")
    p.add_argument("--top", type=_count, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("generate", help="stage 1: generate instruction data from the teacher")
    _pipeline_arg(p)
    p.add_argument("--run-dir", help="default: runs/<name>")
    _max_usd_arg(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("finetune", help="stage 2: fine-tune the student on the generated data")
    _pipeline_arg(p)
    p.add_argument("--run-dir", help="default: runs/<name>")
    _max_usd_arg(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="stage 3: compare base, student and teacher")
    p.add_argument("pipeline", nargs="?", help="pipeline YAML (or give --student/--teacher/--base)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run-dir", help="default: runs/<name>")
    p.add_argument("--student", help="student model folder")
    p.add_argument("--teacher", help="teacher model reference")
    p.add_argument("--base", help="base model reference")
    _max_usd_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("run", help="the whole replication: estimate, generate, finetune, evaluate, report")
    _pipeline_arg(p)
    p.add_argument("--run-dir", help="default: runs/<name>")
    p.add_argument("--calibration", help="YAML written by `replicate calibrate` (for the recorded estimate)")
    _max_usd_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="copy curve: fine-tune and evaluate on nested subsets of one generation")
    _pipeline_arg(p)
    p.add_argument("--examples", required=True, help="comma-separated sizes, e.g. 50,100,200,400")
    p.add_argument("--run-dir", help="default: runs/<name>-sweep")
    p.add_argument("--calibration", help="YAML written by `replicate calibrate` (for the recorded estimates)")
    _max_usd_arg(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="report.md/.html/.json from a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("calibrate", help="fit the cost model's efficiencies to measured runs")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("-o", "--output", default="calibration.yaml")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("demo", help="the offline default replication (what `make demo` runs)")
    p.add_argument("--run-dir", help="default: runs/tiny-cpu")
    _max_usd_arg(p)
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # a bad option (its one line is printed), or --help / --version
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        ap.print_help()
        return 0
    return exit_code(args.func, args)  # every failure: one line and an exit code (errors.py)


if __name__ == "__main__":
    sys.exit(main())
