"""Bad input as a careless or hostile user gives it, through the installed CLI in fresh processes.

Every case is one command line (and the files it is handed) built from a table: numbers that mean
nothing in every section and on every command, `--set` values that are not YAML, pipeline files
that are not YAML or not UTF-8, run names that try to leave runs/, options that are not numbers,
run directories that cannot be, and run directories whose state files a crash or a hand
corrupted. Each must end in exit code 2 with exactly one `replicate: error:` line on stderr that
names what is wrong (the case's pattern), no traceback, and nothing written outside the run
directory (every case runs in a folder of its own, compared before and after).

No engine starts: a case that slipped past the checks would reach the teacher, an OpenAI-style
URL where nothing listens (max_retries 0), and fail with a message the pattern does not match.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

DEAD_URL = "http://127.0.0.1:9/v1"  # the discard port: nothing answers there
GOOD = {
    "name": "good",
    "teacher": {"model": "gpt-4o-mini", "backend": "openai", "base_urls": [DEAD_URL], "max_retries": 0, "chat": False},
    "student": {"model": "packaged:gemma-3-270m"},
    "generate": {"examples": 10, "max_tokens": 64},
    "evaluate": {"examples": 4, "probes": 4, "backend": "transformers", "embedding": False},
    "budget": {"max_usd": 1.0},
}
MEASURED = {"stage": "generate", "kind": "measured", "device": "api: gpt-4o-mini", "num_devices": 1, "wall_s": 2.0,
            "device_hours": 2 / 3600, "usd": 0.001, "usd_per_device_hour": 0.0, "prompt_tokens": 1000,
            "output_tokens": 500, "trained_tokens": 0, "started_at": "2026-01-01T00:00:00+00:00",
            "ended_at": "2026-01-01T00:00:02+00:00", "requests": 2}


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: str  # a regex the error line must match: it names what is wrong
    files: dict[str, str | bytes | dict] = field(default_factory=dict)  # relative path -> content
    run_dir: str = "runs/good"  # where the command may write


def _deep(base: dict, **sections) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in sections.items():
        node, *path = key.split("__")
        target = out
        for p in [node, *path][:-1]:
            target = target.setdefault(p, {})
        target[[node, *path][-1]] = value
    return out


def pipe(**sections) -> dict:
    """The good pipeline with some keys replaced (`teacher__base_urls=[...]`)."""
    return {"p.yaml": _deep(GOOD, **sections)}


def run_state(**files) -> dict:
    """A finished-looking run directory r/ (resolved pipeline, a ledger) plus `files` inside it."""
    from replicate.config import parse_pipeline

    resolved = parse_pipeline(GOOD).model_dump(mode="json")
    state = {"r/pipeline.yaml": resolved, "r/ledger.jsonl": json.dumps(MEASURED) + "\n"}
    state.update({f"r/{k}": v for k, v in files.items()})
    return state


def student_settings(**changes) -> dict:
    from replicate.config import parse_pipeline
    from replicate.finetune.resume import _settings

    return _settings(parse_pipeline(_deep(GOOD, **changes)), Path("r/data/train.jsonl"))


def settings(**changes) -> dict:
    from replicate.config import parse_pipeline
    from replicate.generate.stage import _settings

    return _settings(parse_pipeline(_deep(GOOD, **changes)))


# ---- the table --------------------------------------------------------------------------------------

NUMBER_KEYS = ["generate.examples", "generate.temperature", "generate.top_p", "generate.max_tokens",
               "finetune.epochs", "finetune.learning_rate", "finetune.batch_size", "finetune.lora_r",
               "data.prompt_tokens", "data.keep_rate", "teacher.request_timeout_s", "teacher.max_concurrency",
               "teacher.hardware.count", "evaluate.examples", "budget.max_usd", "prices"]
NUMBER_VALUES = [".inf", ".nan", "-.inf", "1e30", "-1", "abc", "[1, 2]", "{a: 1}", "true", '"5"']
NUMBER_ERROR = r"Input should be (a finite number|a valid (number|integer)|greater than|less than)"
PIPELINE_COMMANDS = [["estimate"], ["generate"], ["finetune"], ["evaluate"], ["run"], ["sweep", "--examples", "5"]]


def number_cases() -> list[Case]:
    """Every numeric key once, the bad values and the commands rotating through their lists."""
    cases = []
    for i, key in enumerate(NUMBER_KEYS):
        for j in range(1):
            value = NUMBER_VALUES[(i + j) % len(NUMBER_VALUES)]
            cmd = PIPELINE_COMMANDS[(i + j) % len(PIPELINE_COMMANDS)]
            cases.append(Case(f"number-{key}-{value}-{cmd[0]}", [cmd[0], "p.yaml", *cmd[1:], "--set", f"{key}={value}"],
                              rf"p\.yaml: {re.escape(key)}: {NUMBER_ERROR}", pipe()))
    return cases


SET_SYNTAX = [
    ("generate.examples=[1,2", r"--set generate\.examples: not valid YAML: expected ',' or ']'"),
    ("generate.seed_tasks_file=a: b: c", r"--set generate\.seed_tasks_file: not valid YAML: mapping values"),
    ('generate.seed=!!python/object/apply:os.system ["touch pwned"]', r"not valid YAML: could not determine a constructor"),
    ("generate.seed=!!python/name:os.system", r"not valid YAML: could not determine a constructor"),
    ("noequals", r"--set noequals: expected key=value"),
    ("=5", r"expected KEY=VALUE with a dotted key"),
    ("generate..examples=1", r"expected KEY=VALUE with a dotted key"),
    ("generate.examples.x=1", r"--set generate\.examples\.x: examples is not a section"),
    ("nosuch.key=1", r"nosuch: unknown key"),
    ("finetune.lr=1", r"finetune\.lr: unknown key"),
    ("generate=5", r"generate: Input should be a valid dictionary"),
    ("teacher.hardware=[1]", r"teacher\.hardware: Input should be a valid dictionary"),
    ("name=", r"name: Input should be a valid string"),
    ("generate.mode=self_instruct", r"generate\.mode: Input should be 'self-instruct', 'respond' or 'none'"),
    ("teacher.chat=yes please", r"teacher\.chat: Input should be a valid boolean"),
    ("generate.examples={{{{", r"not valid YAML"),
]


def set_cases() -> list[Case]:
    return [Case(f"set-{i}-{cmd[0]}", [cmd[0], "p.yaml", *cmd[1:], "--set", item], expect, pipe())
            for i, (item, expect) in enumerate(SET_SYNTAX)
            for cmd in [PIPELINE_COMMANDS[i % len(PIPELINE_COMMANDS)]]]


NESTED = "a: " + "[" * 5000
FILE_CASES = [
    ("missing", {}, "nope.yaml", r"nope\.yaml: no such pipeline file"),
    ("folder", {"d/x": "x"}, "d", r"d: is a folder, not a file"),
    ("binary", {"p.yaml": bytes(range(256)) * 4}, "p.yaml", r"p\.yaml: not UTF-8 text"),
    ("latin-1", {"p.yaml": "name: caf\xe9\n".encode("latin-1")}, "p.yaml", r"p\.yaml: not UTF-8 text"),
    ("empty", {"p.yaml": ""}, "p.yaml", r"p\.yaml: expected a mapping at the top level"),
    ("list", {"p.yaml": "- name: x\n"}, "p.yaml", r"expected a mapping at the top level"),
    ("duplicate-key", {"p.yaml": yaml.safe_dump(GOOD) + "name: other\n"}, "p.yaml", r"duplicate key 'name'"),
    ("nested-duplicate", {"p.yaml": yaml.safe_dump(GOOD).replace("examples: 10", "examples: 10\n  examples: 20")},
     "p.yaml", r"duplicate key 'examples'"),
    ("unknown-top", pipe(budgett={"max_usd": 1}), "p.yaml", r"budgett: unknown key"),
    ("unknown-nested", pipe(finetune__hardware__gpus=2), "p.yaml", r"finetune\.hardware\.gpus: unknown key"),
    ("tab-indent", {"p.yaml": "name: x\nteacher:\n\tmodel: y\n"}, "p.yaml", r"not valid YAML: found character '\\t'"),
    ("no-teacher", {"p.yaml": {k: v for k, v in GOOD.items() if k != "teacher"}}, "p.yaml", r"teacher: Field required"),
    ("teacher-string", pipe(teacher="gpt-4o-mini"), "p.yaml", r"teacher: Input should be a valid dictionary"),
    ("deep-nesting", {"p.yaml": NESTED}, "p.yaml", r"not valid YAML"),
    ("python-tag", {"p.yaml": "name: !!python/object/apply:os.getcwd []\n"}, "p.yaml", r"could not determine a constructor"),
    ("judge-string", pipe(evaluate__judge="gpt-4o"), "p.yaml", r"evaluate\.judge: Input should be a valid dictionary"),
    ("lora-targets-empty", pipe(finetune__lora_target_modules=[]), "p.yaml", r"lora_target_modules: List should have"),
    ("model-empty", pipe(student__model=""), "p.yaml", r"student\.model: String should have at least 1 character"),
    ("url-plain", pipe(teacher__base_urls=["not-a-url"]), "p.yaml", r"base_urls\.0: 'not-a-url' is not an http\(s\) URL"),
    ("url-ftp", pipe(teacher__base_urls=["ftp://host/v1"]), "p.yaml", r"base_urls\.0: .* is not an http\(s\) URL"),
    ("url-bad-port", pipe(teacher__base_urls=["http://h:99999/v1"]), "p.yaml", r"base_urls\.0: .* has a bad port"),
    ("key-env", pipe(teacher__api_key_env="MY KEY"), "p.yaml", r"api_key_env: 'MY KEY' is not an environment variable"),
    ("mode-case", pipe(generate__mode="Respond"), "p.yaml", r"generate\.mode: Input should be"),
]
BAD_NAMES = ["../../x", "/tmp/abs", "..", "", ".", "a\nb", "x" * 300, "-rf"]


def file_cases() -> list[Case]:
    cases = []
    for i, (cid, files, arg, expect) in enumerate(FILE_CASES):
        cmd = PIPELINE_COMMANDS[i % len(PIPELINE_COMMANDS)]
        cases.append(Case(f"file-{cid}-{cmd[0]}", [cmd[0], arg, *cmd[1:]], expect, files))
    for i, name in enumerate(BAD_NAMES):
        cmd = PIPELINE_COMMANDS[i % len(PIPELINE_COMMANDS)]
        expect = r"name: .* is not a run name"
        cases.append(Case(f"name-{i}-{cmd[0]}", [cmd[0], "p.yaml", *cmd[1:]], expect, pipe(name=name)))
    return cases


BAD_DOLLARS = ["nan", "inf", "-1", "abc", "1e999", "1e13", ""]
MAX_USD_COMMANDS = [["generate", "p.yaml"], ["finetune", "p.yaml"], ["evaluate", "p.yaml"], ["run", "p.yaml"],
                    ["sweep", "p.yaml", "--examples", "5"], ["demo"]]
OPTION_CASES = [
    (["plan", "--budget", "nan"], r"argument --budget: expected a finite amount"),
    (["plan", "--budget", "-5"], r"argument --budget: expected a finite amount"),
    (["plan", "--budget", "five"], r"argument --budget: expected dollars"),
    (["plan", "--budget", "0"], r"--budget: must be positive"),
    (["plan", "--budget", "10", "--top", "0"], r"argument --top: expected 1 to 10000"),
    (["plan", "--budget", "10", "--max-hours", "nan"], r"argument --max-hours: expected a finite number of hours"),
    (["plan", "--budget", "10", "--max-hours", "0"], r"argument --max-hours: expected a finite number of hours"),
    (["plan", "--budget", "10", "--top", "x"], r"argument --top: expected a whole number"),
    (["plan", "--budget", "10", "--prices", "1999"], r"no price table for 1999"),
    (["plan", "--budget", "10", "--prices", "20x6"], r"argument --prices: expected a year"),
    (["plan", "--budget", "10", "--teacher", "gpt-17"], r"unknown model 'gpt-17'"),
    (["plan"], r"the following arguments are required: --budget"),
    (["estimate", "p.yaml", "--prices", "abc"], r"argument --prices: expected a year"),
    (["estimate", "p.yaml", "--calibration", "nope.yaml"], r"nope\.yaml: no such calibration file"),
    (["estimate", "p.yaml", "--calibration", "cal-nan.yaml"], r"cal-nan\.yaml: devices\.cpu\.train_mfu: expected a finite"),
    (["estimate", "p.yaml", "--calibration", "cal-inf.yaml"], r"cal-inf\.yaml: devices\.cpu\.train_mfu: expected a finite"),
    (["estimate", "p.yaml", "--calibration", "cal-gpu.yaml"], r"cal-gpu\.yaml: devices\.b300: unknown GPU"),
    (["estimate", "p.yaml", "--calibration", "cal-mfu.yaml"], r"cal-mfu\.yaml: devices\.cpu\.train_mfu: a fraction"),
    (["estimate", "p.yaml", "--calibration", "cal-list.yaml"], r"cal-list\.yaml: expected a mapping with a `devices:`"),
    (["estimate", "p.yaml", "--calibration", "cal-key.yaml"], r"cal-key\.yaml: devices\.cpu\.speed: not a fittable"),
    (["sweep", "p.yaml", "--examples", "a,b"], r"--examples a,b: expected comma-separated whole numbers"),
    (["sweep", "p.yaml", "--examples", "0"], r"--examples 0: sizes must be between 1 and"),
    (["sweep", "p.yaml", "--examples", "-5,10"], r"argument --examples: expected one argument"),
    (["sweep", "p.yaml", "--examples", ","], r"sizes must be between 1 and"),
    (["sweep", "p.yaml", "--examples", "1000000000"], r"sizes must be between 1 and"),
    (["sweep", "p.yaml"], r"the following arguments are required: --examples"),
    (["frobnicate"], r"argument COMMAND: invalid choice: 'frobnicate'"),
    (["estimate", "p.yaml", "--no-such-option"], r"unrecognized arguments: --no-such-option"),
    (["estimate"], r"the following arguments are required: pipeline"),
    (["evaluate"], r"evaluate: give a pipeline YAML, or all of --student, --teacher, --base"),
    (["evaluate", "--student", "s", "--teacher", ""], r"missing --teacher, --base"),
    (["evaluate", "--student", "s", "--teacher", "", "--base", "b"], r"missing --teacher\)"),
    (["evaluate", "--student", "s", "--teacher", "t", "--base", "b", "--set", "evaluate.probes=-1"],
     r"--teacher/--base/--set: evaluate\.probes: Input should be greater than"),
]
CALIBRATIONS = {"cal-nan.yaml": "devices:\n  cpu:\n    train_mfu: .nan\n",
                "cal-inf.yaml": "devices:\n  cpu:\n    train_mfu: .inf\n",
                "cal-gpu.yaml": "devices:\n  b300:\n    train_mfu: 0.3\n",
                "cal-mfu.yaml": "devices:\n  cpu:\n    train_mfu: 6.755\n",
                "cal-list.yaml": "- devices\n",
                "cal-key.yaml": "devices:\n  cpu:\n    speed: 2\n"}


def option_cases() -> list[Case]:
    cases = [Case(f"option-{i}-{'-'.join(a[:2])}", a, e, {**pipe(), **CALIBRATIONS}, "runs/evaluate")
             for i, (a, e) in enumerate(OPTION_CASES)]
    for i, cmd in enumerate(MAX_USD_COMMANDS):
        for j in range(1):
            value = BAD_DOLLARS[(i + j) % len(BAD_DOLLARS)]
            expect = r"argument --max-usd: expected (a finite amount of )?dollars"
            cases.append(Case(f"max-usd-{cmd[0]}-{value or 'empty'}", [*cmd, "--max-usd", value], expect, pipe()))
    return cases


LONG = "d" * 300
RUN_DIR_CASES = [
    (["generate", "p.yaml", "--run-dir", "afile"], r"afile: exists and is not a folder", "afile"),
    (["run", "p.yaml", "--run-dir", "afile/sub"], r"afile/sub: cannot be made a run directory", "afile"),
    (["finetune", "p.yaml", "--run-dir", "/proc/replicate-run"], r"/proc/replicate-run: cannot be made a run directory",
     "afile"),
    (["evaluate", "p.yaml", "--run-dir", LONG], r"d{300}: cannot be made a run directory \(File name too long\)",
     "afile"),
    (["sweep", "p.yaml", "--examples", "5", "--run-dir", "/dev/null"], r"/dev/null: exists and is not a folder",
     "afile"),
    (["report", "afile"], r"afile: no such run directory", "afile"),
    (["report", "missing-run"], r"missing-run: no such run directory", "afile"),
    (["report", "."], r"\.: no ledger\.jsonl yet", "afile"),
]


def run_dir_cases() -> list[Case]:
    return [Case(f"run-dir-{i}-{a[0]}", a, e, {**pipe(), "afile": "not a folder\n"}, rd)
            for i, (a, e, rd) in enumerate(RUN_DIR_CASES)]


def ledger_line(**changes) -> str:
    return json.dumps({**MEASURED, **changes}) + "\n"


# (id, files in r/, command, pattern): corrupt state a crash or a hand left behind
STATE_CASES = [
    ("ledger-list", {"ledger.jsonl": "[1, 2]\n"}, "report", r"r/ledger\.jsonl:1: expected a JSON object, got list"),
    ("ledger-usd-text", {"ledger.jsonl": ledger_line(usd="abc")}, "report", r"ledger\.jsonl:1: usd: Input should be"),
    ("ledger-usd-negative", {"ledger.jsonl": ledger_line(usd=-1.0)}, "report", r"ledger\.jsonl:1: usd: .*greater than"),
    ("ledger-nan", {"ledger.jsonl": ledger_line().replace('"usd": 0.001', '"usd": NaN')}, "report",
     r"ledger\.jsonl:1: not valid JSON: NaN is not a JSON number"),
    ("ledger-overflow", {"ledger.jsonl": ledger_line().replace('"usd": 0.001', '"usd": 1e999')}, "report",
     r"ledger\.jsonl:1: not valid JSON: 1e999 does not fit a float"),
    ("ledger-bytes", {"ledger.jsonl": b'{"stage": "generate\xff\xfe"}\n'}, "report", r"ledger\.jsonl: not UTF-8 text"),
    ("ledger-garbage-mid", {"ledger.jsonl": "garbage\n" + ledger_line()}, "report", r"ledger\.jsonl:1: not valid JSON"),
    ("ledger-no-usd", {"ledger.jsonl": json.dumps({k: v for k, v in MEASURED.items() if k != "usd"}) + "\n"},
     "report", r"ledger\.jsonl:1: a measured line needs usd"),
    ("ledger-stage", {"ledger.jsonl": ledger_line(stage="train")}, "report", r"ledger\.jsonl:1: stage: Input should be"),
    ("ledger-empty-object", {"ledger.jsonl": "{}\n"}, "report", r"ledger\.jsonl:1: stage: Field required"),
    ("ledger-deep", {"ledger.jsonl": "[" * 100000 + "\n"}, "report", r"ledger\.jsonl:1: not valid JSON: nested too deeply"),
    ("scores-list", {"eval/scores.json": "[1, 2]\n"}, "report", r"scores\.json: expected a JSON object"),
    ("scores-empty", {"eval/scores.json": "{}\n"}, "report", r"scores\.json: .*(missing|required)"),
    ("calib-pipeline-yaml", {"pipeline.yaml": "name: [\n"}, "calibrate", r"r/pipeline\.yaml: not valid YAML"),
    ("calib-pipeline-key", {"pipeline.yaml": {**GOOD, "colour": "red"}}, "calibrate",
     r"r/pipeline\.yaml: colour: unknown key"),
    ("calib-pipeline-list", {"pipeline.yaml": "- a\n"}, "calibrate", r"r/pipeline\.yaml: expected the run's settings"),
    ("calib-ledger-field", {"ledger.jsonl": json.dumps({k: v for k, v in MEASURED.items() if k != "wall_s"}) + "\n"},
     "calibrate", r"ledger\.jsonl:1: a measured line needs wall_s"),
    ("calib-ledger-type", {"ledger.jsonl": ledger_line(prompt_tokens="many")}, "calibrate",
     r"ledger\.jsonl:1: prompt_tokens: Input should be"),
    ("calib-no-run", {}, "calibrate-missing", r"nowhere: no pipeline\.yaml \(not a `replicate run` directory\)"),
    ("calib-out-folder", {}, "calibrate-out-folder", r"-o r: is a folder"),
    ("calib-out-missing", {}, "calibrate-out-missing", r"-o no/such/cal\.yaml: no folder no/such"),
    ("gen-settings-json", {"data/generation.json": "{not json"}, "generate", r"generation\.json: not valid JSON"),
    ("gen-settings-list", {"data/generation.json": "[]"}, "generate", r"generation\.json: expected a JSON object"),
    ("gen-done-corrupt", {"data/done.json": "{\"train_rows\": 1"}, "generate", r"done\.json: not valid JSON"),
    ("gen-done-empty", {"data/done.json": "{}"}, "generate", r"done\.json: train_rows: Field required"),
    ("gen-done-type", {"data/done.json": json.dumps({"train_rows": "10", "held_out_rows": 1, "requests": 3,
                                                     "output_tokens": 30, "usd": 0.1})}, "generate", r"done\.json: train_rows: Input should"),
    ("gen-log-empty-object", {"data/log.jsonl": "{}\n"}, "generate", r"log\.jsonl:1: index: Field required"),
    ("gen-log-garbage", {"data/log.jsonl": "\x00\x01garbage\n{}\n"}, "generate", r"log\.jsonl:1: not valid JSON"),
    ("gen-stale-temperature", {"data/generation.json": settings(), "data/done.json": json.dumps(
        {"train_rows": 10, "held_out_rows": 0, "requests": 3, "output_tokens": 30, "usd": 0.1})}, "generate-hot",
     r"r/data holds generated data made with other settings \(temperature: 1\.0 -> 0\.5\)"),
    ("gen-stale-teacher", {"data/generation.json": settings(teacher__model="gpt-4o")}, "generate",
     r"other settings \(teacher: 'gpt-4o' -> 'gpt-4o-mini'\)"),
    ("finetune-stale", {"student/settings.json": student_settings(finetune__epochs=1.0),
                        "student/train_metrics.json": "{}"}, "finetune",
     r"r/student holds a student made with other settings \(finetune\.epochs: 1\.0 -> 3\.0\)"),
    ("finetune-metrics-empty", {"student/settings.json": student_settings(), "student/train_metrics.json": "{}"},
     "finetune", r"r/student/train_metrics\.json: global_step: Field required"),
    ("run-other-teacher", {"pipeline.yaml": _deep(GOOD, teacher__model="gpt-4o")}, "run",
     r"r was started with a different pipeline \(teacher\.model: 'gpt-4o' -> 'gpt-4o-mini'\)"),
    ("run-pipeline-corrupt", {"pipeline.yaml": b"\xff\xfe\x00"}, "run", r"r/pipeline\.yaml: not UTF-8 text"),
    ("run-ledger-corrupt", {"ledger.jsonl": "{\"stage\": 1}\n"}, "run", r"ledger\.jsonl:1: stage: Input should be"),
    ("finetune-ledger-corrupt", {"ledger.jsonl": "[]\n"}, "finetune", r"ledger\.jsonl:1: expected a JSON object"),
    ("evaluate-ledger-corrupt", {"ledger.jsonl": ledger_line(kind="spent")}, "evaluate",
     r"ledger\.jsonl:1: kind: Input should be"),
    ("budget-spent", {"ledger.jsonl": ledger_line(usd=2.0)}, "generate",
     r"the budget \(--max-usd / budget\.max_usd = \$1\) is spent before generate"),
    ("budget-spent-finetune", {"ledger.jsonl": ledger_line(usd=5.5)}, "finetune",
     r"the budget \(--max-usd / budget\.max_usd = \$5\) is spent before finetune"),
    ("budget-spent-evaluate", {"ledger.jsonl": ledger_line(usd=5.0)}, "evaluate",
     r"the budget \(--max-usd / budget\.max_usd = \$5\) is spent before evaluate"),
    ("budget-unsettled", {"ledger.jsonl": ledger_line(usd=0.5, unsettled_usd=0.6, interrupted=True)}, "generate",
     r"is spent before generate: \$1\.1 measured"),
]
STATE_COMMANDS = {
    "report": ["report", "r"], "calibrate": ["calibrate", "r", "-o", "cal.yaml"],
    "calibrate-missing": ["calibrate", "nowhere", "-o", "cal.yaml"],
    "calibrate-out-folder": ["calibrate", "r", "-o", "r"],
    "calibrate-out-missing": ["calibrate", "r", "-o", "no/such/cal.yaml"],
    "generate": ["generate", "p.yaml", "--run-dir", "r"],
    "generate-hot": ["generate", "p.yaml", "--run-dir", "r", "--set", "generate.temperature=0.5"],
    "run": ["run", "p.yaml", "--run-dir", "r"], "finetune": ["finetune", "p.yaml", "--run-dir", "r", "--max-usd", "5"],
    "evaluate": ["evaluate", "p.yaml", "--run-dir", "r", "--max-usd", "5"],
}


def state_cases() -> list[Case]:
    return [Case(f"state-{cid}", STATE_COMMANDS[cmd], expect, {**pipe(), **run_state(**files)}, "r")
            for cid, files, cmd, expect in STATE_CASES]


CASES = number_cases() + set_cases() + file_cases() + option_cases() + run_dir_cases() + state_cases()


# ---- running them -----------------------------------------------------------------------------------


def _write(root: Path, files: dict) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            content = yaml.safe_dump(content) if rel.endswith(".yaml") else json.dumps(content)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def _snapshot(root: Path, run_dir: Path) -> dict:
    """Every file and folder under root except the run directory's contents: path -> (size, mtime)."""
    out = {}
    for p in root.rglob("*"):
        if run_dir == p or run_dir in p.parents:
            continue
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, p.is_dir())
    return out


def _cli() -> list[str]:
    """The installed console script (what a user runs), else the module."""
    script = Path(sys.executable).with_name("replicate")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "replicate"]


def _run(case: Case, root: Path) -> dict:
    home = root / case.id.replace("/", "_")[:80]
    home.mkdir()
    _write(home, case.files)
    run_dir = (home / case.run_dir).resolve() if not os.path.isabs(case.run_dir) else Path(case.run_dir)
    before = _snapshot(home, run_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("REPLICATE_DEBUG", None)
    p = subprocess.run([*_cli(), *case.argv], cwd=home, capture_output=True, text=True, timeout=120, env=env,
                       check=False)
    return {"rc": p.returncode, "stderr": p.stderr, "stdout": p.stdout, "before": before,
            "after": _snapshot(home, run_dir)}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    """All cases, two or three processes at a time (each is a fresh interpreter: ~1 s of imports)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        return dict(zip([c.id for c in CASES], pool.map(lambda c: _run(c, root), CASES), strict=True))


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_and_exit_2(case: Case, results):
    r = results[case.id]
    err = r["stderr"]
    assert "Traceback" not in err, err[-3000:]
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert r["rc"] == 2 and len(error_lines) == 1, f"rc {r['rc']}, stderr:\n{err[-3000:]}"
    assert error_lines[0].startswith("replicate: error: "), error_lines[0]
    assert re.search(case.expect, error_lines[0]), f"{error_lines[0]!r} does not match {case.expect!r}"
    assert r["after"] == r["before"], "something was written outside the run directory: " + ", ".join(
        sorted(set(r["after"].items()) ^ set(r["before"].items()), key=str)[:5].__repr__())
