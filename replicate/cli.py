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

    cfg = load_pipeline(args.pipeline, args.overrides)  # --prices None: the pipeline's own `prices`
    est = estimate_pipeline(cfg, prices_year=args.prices, calibration=load_calibration(args.calibration),
                            source=args.pipeline, software=args.software).to_dict()
    if cfg.published is not None:
        est["published"] = cfg.published.model_dump(exclude_none=True)
    if args.json:
        print(json.dumps(est, indent=2, default=float))
    else:
        print_estimate(est)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from replicate.cost.catalog import newest_price_year
    from replicate.cost.plan import plan
    from replicate.report.estimate import print_plan

    if args.top <= 0:
        raise UserError(f"--top: must be positive, got {args.top}")
    result = plan(args.budget, args.prices or newest_price_year(), args.teacher, args.top, max_hours=args.max_hours,
                  objective=args.objective, software=args.software)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_plan(result)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from replicate.config import load_pipeline
    from replicate.generate import run_generate
    from replicate.pipeline import budget_left, record_stage_estimate, with_budget
    from replicate.rundir import default_run_dir, run_lock

    cfg = with_budget(load_pipeline(args.pipeline, args.overrides), args.max_usd)
    run_dir = default_run_dir(cfg.name, args.run_dir)
    # --max-usd (or budget.max_usd) caps ALL measured spending in the run directory, as `replicate
    # run` does: this call may spend what is left, so a rerun with the same limit does not spend more.
    with run_lock(run_dir):
        record_stage_estimate(cfg, run_dir, "generate")
        s = run_generate(cfg, run_dir, max_usd=budget_left(cfg, run_dir, "generate"))
    s["export"] = _export(args, run_dir)
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    print(f"generate: {s['train_rows']} train + {s['held_out_rows']} held-out rows from {s['requests']} requests, "
          f"{s['output_tokens']:,} output tokens, ${s['usd']:.4f} -> {run_dir / 'data'}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from replicate.config import load_pipeline
    from replicate.finetune import run_finetune
    from replicate.finetune.resume import read_metrics
    from replicate.pipeline import budget_left, finetune_seeds, record_stage_estimate, with_budget
    from replicate.rundir import default_run_dir, run_lock

    cfg = with_budget(load_pipeline(args.pipeline, args.overrides), args.max_usd)
    run_dir = default_run_dir(cfg.name, args.run_dir)
    with run_lock(run_dir):
        record_stage_estimate(cfg, run_dir, "finetune")
        if cfg.finetune.seeds > 1:  # every seed's student, as `run` trains them (the estimate counts them all)
            finetune_seeds(cfg, run_dir, (cfg, run_dir))
            m = read_metrics(run_dir / "student" / "train_metrics.json")
        else:
            m = run_finetune(cfg, run_dir, max_usd=budget_left(cfg, run_dir, "finetune"))
    if args.json:
        print(json.dumps(m, indent=2, default=str))
        return 0
    print(f"finetune: {m.get('global_step')} steps, {m.get('trained_tokens'):,} tokens, "
          f"{m.get('tokens_per_s')} tok/s, MFU {m.get('mfu')}, ${m.get('usd', 0):.4f} this run -> {m.get('merged')}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from replicate.config import evaluation_pipeline
    from replicate.evaluate import run_evaluate
    from replicate.pipeline import budget_left, record_stage_estimate, student_dirs, with_budget
    from replicate.report.evaluation import print_summary, write_summary
    from replicate.rundir import default_run_dir, run_lock

    cfg = with_budget(evaluation_pipeline(args.pipeline, args.overrides, teacher=args.teacher, base=args.base,
                                          student=args.student), args.max_usd)
    run_dir = default_run_dir(cfg.name, args.run_dir)
    with run_lock(run_dir):
        if args.pipeline:  # three models named on the command line have no pipeline to estimate
            record_stage_estimate(cfg, run_dir, "evaluate")
        # a pipeline's run: every fine-tuning seed's student (their spread enters the intervals)
        seeds = [d / "merged" for d in student_dirs(cfg, run_dir)] if args.pipeline and not args.student else None
        scores = run_evaluate(cfg, run_dir, student_dir=Path(args.student) if args.student else None,
                              student_dirs=seeds, max_usd=budget_left(cfg, run_dir, "evaluate"))
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
    run_dir = default_run_dir(cfg.name, args.run_dir)
    paths = run_pipeline(cfg, run_dir, calibration=load_calibration(args.calibration))
    _export(args, run_dir)
    return _print_report(paths, args.json)


def cmd_sweep(args: argparse.Namespace) -> int:
    from replicate.config import load_pipeline
    from replicate.cost.params import load_calibration
    from replicate.pipeline import with_budget
    from replicate.rundir import default_run_dir
    from replicate.sweep import parse_sizes, run_sweep

    cfg = with_budget(load_pipeline(args.pipeline, args.overrides), args.max_usd)
    paths = run_sweep(cfg, default_run_dir(cfg.name, args.run_dir, "-sweep"), parse_sizes(args.examples),
                      calibration=load_calibration(args.calibration))
    return _print_report(paths, args.json)


def cmd_report(args: argparse.Namespace) -> int:
    from replicate.report import rebuild_report

    return _print_report(rebuild_report(Path(args.run_dir)), args.json)


def _export(args: argparse.Namespace, run_dir: Path) -> dict | None:
    """--save-to-disk / --push-to-hub: the run's dataset in the datasets library's formats."""
    if not (args.save_to_disk or args.push_to_hub):
        return None
    from replicate.cards import export_dataset

    out = export_dataset(run_dir / "data", save_to_disk=args.save_to_disk, push_to_hub=args.push_to_hub,
                         private=not args.public)
    for k in ("saved_to", "pushed_to"):
        if k in out:
            print(f"dataset {k.replace('_', ' ')} {out[k]}", file=sys.stderr)
    return out


def _print_report(paths: dict, as_json: bool) -> int:
    """A command whose result is a report: report.json's content with --json, else the files' paths."""
    from replicate import files

    if as_json:
        print(json.dumps({**files.read_json(paths["json"], ""), "files": {k: str(v) for k, v in paths.items()}},
                         indent=2, default=str))
    else:
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
    if args.json:
        print(json.dumps({**result, "output": str(out)}, indent=2, default=str))
        return 0
    for key, rep in result["fit"].items():
        runs = "; ".join(f"{r['run']}: measured {r['measured_s']} s, default {r['default_s']} s, "
                         f"calibrated {r['calibrated_s']} s" for r in rep["runs"])
        print(f"{key}: speed x{rep['speed_factor']:.3g}, startup {rep['startup_s']:.3g} s ({runs})")
    print(out)
    return 0


def cmd_launchers(args: argparse.Namespace) -> int:
    from replicate.config import load_pipeline
    from replicate.finetune.nodes import write_launchers
    from replicate.pipeline import budget_left, with_budget
    from replicate.rundir import default_run_dir

    cfg = with_budget(load_pipeline(args.pipeline, args.overrides), args.max_usd)
    run_dir = default_run_dir(cfg.name, args.run_dir)
    # The job may spend what is left now of the run directory's ceiling (a rerun of `launchers`
    # after a partial job gives it less).
    paths = write_launchers(cfg, run_dir, main_ip=args.main_ip, port=args.port, nodes=args.nodes,
                            max_usd=budget_left(cfg, run_dir, "the multi-node fine-tune"))
    if args.json:
        print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    else:
        for p in paths.values():
            print(p)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from replicate.pipeline import run_demo

    return _print_report(run_demo(args.run_dir, args.overrides, args.max_usd), args.json)


# ---- the parser ------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, except that a bad option is the program's one error line (exit 2), not a usage dump."""

    def error(self, message: str):
        self.exit(2, f"replicate: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _finite(text: str, unit: str, example: str, fits, range_text: str) -> float:
    """A finite number in range (`nan`, `inf` and `abc` are refused, each with one clear line)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {unit}, e.g. {example}, got {text!r}") from None
    if not math.isfinite(x) or not fits(x):
        raise argparse.ArgumentTypeError(f"expected {range_text}, got {text!r}")
    return x


def _dollars(text: str) -> float:
    return _finite(text, "dollars", "2.50", lambda x: 0 <= x <= 1e12, "a finite amount of dollars between 0 and 1e12")


def _hours(text: str) -> float:
    return _finite(text, "hours", "24", lambda x: 0 < x <= 1e6, "a finite number of hours above 0")


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= n <= 10_000:
        raise argparse.ArgumentTypeError(f"expected 1 to 10000, got {n}")
    return n


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port, 1 to 65535, got {text!r}")
    return int(text)


def _year(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a year, e.g. 2026, got {text!r}") from None


MAX_USD_HELP = ("a hard ceiling on the measured dollars in the run directory (default: the YAML's budget.max_usd); "
                "stops cleanly and resumably before spending would pass it")


def _max_usd_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-usd", type=_dollars, metavar="USD", help=MAX_USD_HELP)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has one worth showing) and keeps the examples' layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if "%(default)" in text or d in (None, False, [], argparse.SUPPRESS) or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


def _command(sub, name: str, summary: str, example: str, func) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary, an example in its --help, and -v/-q."""
    p = sub.add_parser(name, help=summary, description=summary, epilog=f"example:\n  {example}",
                       formatter_class=_HelpFormatter)
    _verbosity(p, argparse.SUPPRESS)
    p.set_defaults(func=func)
    return p


def _verbosity(p: argparse.ArgumentParser, default) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1, default=default,
                   help="more detail: debug lines, and vLLM's and transformers'/TRL's own logs")
    g.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=default,
                   help="warnings and errors only; no progress")


def _pipeline_arg(p: argparse.ArgumentParser, optional: bool = False) -> None:
    if optional:
        p.add_argument("pipeline", nargs="?", help="pipeline YAML (or give --student/--teacher/--base)")
    else:
        p.add_argument("pipeline", help="pipeline YAML (see pipelines/, docs/runs.md)")
    _set_arg(p)


def _set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a YAML value, e.g. --set generate.examples=100 (repeatable)")


def _json_arg(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout (status lines stay on stderr)")


def _prices_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prices", type=_year, metavar="YEAR",
                   help="price table budgets/prices-YEAR.yaml (default: the pipeline's `prices`, else the newest table)")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--save-to-disk", metavar="DIR", help="also save the dataset with datasets' save_to_disk")
    p.add_argument("--push-to-hub", metavar="REPO", help="also push the dataset and its card to a Hub dataset "
                   "repository (token: `hf auth login` or HF_TOKEN)")
    p.add_argument("--public", action="store_true", help="with --push-to-hub: a public repository (default private)")


def _calibration_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", metavar="YAML", help="cost-model constants fitted by `replicate calibrate`")


def _run_dir_arg(p: argparse.ArgumentParser, default: str = "runs/<name>") -> None:
    p.add_argument("--run-dir", help=f"where the run lives (default: {default})")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="replicate", formatter_class=_HelpFormatter,
                description="Cheap-replication cost simulator: estimate, run and measure "
                "Alpaca-style copies of a teacher model.",
                epilog="start here:\n  replicate estimate pipelines/published/alpaca-2023.yaml\n"
                "  replicate demo\nrecipes: docs/quickstart.md")
    ap.add_argument("--version", action="version", version=f"replicate {__version__}")
    _verbosity(ap, 0)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = _command(sub, "models", "list the packaged offline models and whether they are converted",
                 "replicate models --convert", cmd_models)
    p.add_argument("--convert", action="store_true", help="convert both packaged models now")
    _json_arg(p, "the list")

    p = _command(sub, "estimate", "predict a pipeline's cost without running it",
                 "replicate estimate pipelines/published/alpaca-2023.yaml --prices 2026", cmd_estimate)
    _pipeline_arg(p)
    _prices_arg(p)
    _calibration_arg(p)
    p.add_argument("--software", type=int, choices=(2023, 2026),
                   help="re-cost fine-tuning with that year's stack and recipe (docs/cost-model.md, Software)")
    _json_arg(p, "the estimate")

    p = _command(sub, "plan", "the best replications a budget buys, ranked",
                 "replicate plan --budget 100 --teacher gpt-4o-mini --top 5", cmd_plan)
    p.add_argument("--budget", type=_dollars, required=True, help="dollars")
    _prices_arg(p)
    p.add_argument("--teacher", default="gpt-4o-mini", help="teacher (API model or catalog model)")
    p.add_argument("--top", type=_count, default=10, help="options shown")
    p.add_argument("--max-hours", type=_hours, default=24.0, help="wall-clock limit, data + fine-tuning")
    p.add_argument("--objective", default="quality", choices=("quality", "cost", "time"),
                   help="how options are ranked (docs/cost-model.md, `replicate plan`)")
    p.add_argument("--software", type=int, default=2026, choices=(2023, 2026), help="training stack and recipe year")
    _json_arg(p, "the ranked options")

    p = _command(sub, "generate", "stage 1: generate instruction data from the teacher",
                 "replicate generate pipelines/tiny-cpu.yaml --max-usd 0.50", cmd_generate)
    _pipeline_arg(p)
    _run_dir_arg(p)
    _max_usd_arg(p)
    _export_args(p)
    _json_arg(p, "the stage's statistics")

    p = _command(sub, "finetune", "stage 2: fine-tune the student on the generated data",
                 "replicate finetune pipelines/tiny-cpu.yaml --set finetune.epochs=1", cmd_finetune)
    _pipeline_arg(p)
    _run_dir_arg(p)
    _max_usd_arg(p)
    _json_arg(p, "the training metrics")

    p = _command(sub, "evaluate", "stage 3: compare base, student and teacher",
                 "replicate evaluate pipelines/tiny-cpu.yaml --set evaluate.examples=40", cmd_evaluate)
    _pipeline_arg(p, optional=True)
    _run_dir_arg(p)
    p.add_argument("--student", help="student model folder")
    p.add_argument("--teacher", help="teacher model reference")
    p.add_argument("--base", help="base model reference")
    _max_usd_arg(p)
    _json_arg(p, "scores.json")

    p = _command(sub, "run", "the whole replication: estimate, generate, finetune, evaluate, report",
                 "replicate run pipelines/tiny-cpu.yaml --set generate.examples=100", cmd_run)
    _pipeline_arg(p)
    _run_dir_arg(p)
    _calibration_arg(p)
    _max_usd_arg(p)
    _export_args(p)
    _json_arg(p, "the report (report.json)")

    p = _command(sub, "sweep", "copy curve: fine-tune and evaluate on nested subsets of one generation",
                 "replicate sweep pipelines/tiny-cpu.yaml --examples 50,100,200,400", cmd_sweep)
    _pipeline_arg(p)
    p.add_argument("--examples", required=True, help="comma-separated sizes, e.g. 50,100,200,400")
    _run_dir_arg(p, "runs/<name>-sweep")
    _calibration_arg(p)
    _max_usd_arg(p)
    _json_arg(p, "the sweep's report (report.json)")

    p = _command(sub, "report", "report.md/.html/.json from a run directory", "replicate report runs/tiny-cpu",
                 cmd_report)
    p.add_argument("run_dir", help="a run directory (runs/<name>) or a sweep's (runs/<name>-sweep)")
    _json_arg(p, "the report (report.json)")

    p = _command(sub, "calibrate", "fit the cost model's efficiencies to measured runs",
                 "replicate calibrate runs/tiny-cpu runs/tiny-cpu-big -o calibration.yaml", cmd_calibrate)
    p.add_argument("run_dirs", nargs="+", help="finished run directories (two or more sizes fit start-up apart)")
    p.add_argument("-o", "--output", default="calibration.yaml", help="the calibration file to write")
    _json_arg(p, "the fit")

    p = _command(sub, "launchers", "multi-node fine-tuning: an accelerate launcher per node and a Slurm script",
                 "replicate launchers pipelines/big.yaml --main-ip 10.0.0.1", cmd_launchers)
    _pipeline_arg(p)
    _run_dir_arg(p)
    p.add_argument("--main-ip", default="127.0.0.1", help="address of node 0, where the processes meet")
    p.add_argument("--port", type=_port, default=29500, help="node 0's rendezvous port")
    p.add_argument("--nodes", type=int, help="nodes (default: finetune.hardware.count / the device's gpus_per_node)")
    _max_usd_arg(p)
    _json_arg(p, "the files written")

    p = _command(sub, "demo", "the offline default replication (what `make demo` runs)",
                 "replicate demo --set generate.examples=20", cmd_demo)
    _set_arg(p)
    _run_dir_arg(p, "runs/tiny-cpu")
    _max_usd_arg(p)
    _json_arg(p, "the report (report.json)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # a bad option (its one line is printed), or --help / --version
        return e.code if isinstance(e.code, int) else 2
    from replicate import log

    log.setup(args.verbosity)
    if not getattr(args, "func", None):
        ap.print_help()
        return 0
    return exit_code(args.func, args)  # every failure: one line and an exit code (errors.py)


if __name__ == "__main__":
    sys.exit(main())
