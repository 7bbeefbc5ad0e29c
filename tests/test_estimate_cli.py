"""`replicate estimate` / `replicate plan` end to end: output, exit codes, speed, no torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from replicate.cli import main

ROOT = Path(__file__).resolve().parent.parent
ALPACA = str(ROOT / "pipelines" / "published" / "alpaca-2023.yaml")

# Run the CLI in a fresh interpreter and time it from inside (the interpreter's own start-up is
# not the estimator's; five engineers share these 2 cores, so the wall clock of the process is noisy).
TIMED = """
import sys, time, json
t0 = time.perf_counter()
from replicate.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "s": time.perf_counter() - t0, "torch": "torch" in sys.modules,
                  "vllm": "vllm" in sys.modules, "transformers": "transformers" in sys.modules}), file=sys.stderr)
"""


def run_timed(*args: str) -> tuple[dict, str, str]:
    p = subprocess.run([sys.executable, "-c", TIMED, *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=60, check=False)
    info = json.loads(p.stderr.strip().splitlines()[-1])
    return info, p.stdout, "\n".join(p.stderr.strip().splitlines()[:-1])


def test_estimate_under_a_second_without_torch():
    best = None
    for _ in range(3):  # best of three: the machine is shared
        info, out, _ = run_timed("estimate", ALPACA, "--json")
        assert info["rc"] == 0
        assert not (info["torch"] or info["vllm"] or info["transformers"])
        best = min(best or info["s"], info["s"])
        if best < 1.0:
            break
    assert best < 1.0, f"estimate took {best:.2f} s"
    d = json.loads(out)
    assert {"name", "total", "stages"} <= d.keys() and {"usd", "gpu_hours", "wall_hours"} <= d["total"].keys()
    assert [s["name"] for s in d["stages"]] == ["generate", "finetune", "evaluate"]
    assert all({"name", "usd", "gpu_hours", "wall_hours"} <= s.keys() for s in d["stages"])


def test_bad_input_exits_2_with_one_line_in_a_real_process():
    p = subprocess.run([sys.executable, "-m", "replicate", "estimate", ALPACA, "--set", "finetune.hardware.gpu=a100"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert p.returncode == 2
    assert p.stderr.strip() == (f"replicate: error: {ALPACA}: finetune.hardware.gpu: unknown GPU 'a100' (known: a10, "
                                "a100-40gb, a100-80gb, a10g, a40, cpu, h100-pcie, h100-sxm, h200, l4, l40s, rtx-4090, "
                                "rtx-a6000, v100)")


@pytest.mark.parametrize("args, message", [
    (["--prices", "1999"], "--prices: no price table for 1999"),
    (["--set", "generate.examples=0"], "generate.examples: Input should be greater than 0"),
    (["--set", "finetune.epochs=-3"], "finetune.epochs: Input should be greater than 0"),
    (["--set", "finetune.hardware.count=0"], "finetune.hardware.count: Input should be greater than 0"),
    (["--set", "finetune.warp_speed=9"], "finetune.warp_speed: unknown key"),
    (["--set", "student.model=llama-12b"], "student.model: unknown model 'llama-12b'"),
    (["--set", "student.model=llama-65b", "--set", "finetune.hardware={gpu: a10g, count: 1}"],
     "finetune.hardware: full fine-tuning of llama-65b needs"),
    (["--set", "teacher={model: llama-3.1-405b, backend: vllm, hardware: {gpu: a100-80gb, count: 2}}"],
     "teacher.hardware: llama-3.1-405b needs 812 GB"),
    (["--calibration", "no-such-calibration.yaml"], "no-such-calibration.yaml: no such calibration file"),
])
def test_bad_input_exits_2_naming_the_yaml_path(capsys, args, message):
    assert main(["estimate", ALPACA, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("replicate: error: ") and message in err, err


def test_table_output_and_published_comparison(capsys):
    assert main(["estimate", ALPACA]) == 0
    out = capsys.readouterr().out
    for text in ("generate", "finetune", "total", "api:text-davinci-003", "8x a100-80gb", "published:"):
        assert text in out


def test_prices_2023_vs_2026_same_copy_today(capsys):
    totals = {}
    for year in ("2023", "2026"):
        assert main(["estimate", ALPACA, "--prices", year, "--json"]) == 0
        totals[year] = json.loads(capsys.readouterr().out)
        assert totals[year]["prices"] == int(year)
    assert totals["2026"]["total"]["gpu_hours"] == pytest.approx(totals["2023"]["total"]["gpu_hours"])
    assert totals["2026"]["total"]["usd"] < totals["2023"]["total"]["usd"] / 4  # retired teacher -> its replacement
    assert "retired" in " ".join(totals["2026"]["notes"])


def test_calibration_file_narrows_the_range(tmp_path, capsys):
    cal = tmp_path / "cal.yaml"
    cal.write_text("devices:\n  cpu:\n    train_mfu: 0.3\n    finetune_startup_s: 20\n")
    tiny = str(ROOT / "pipelines" / "tiny-cpu.yaml")
    assert main(["estimate", tiny, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["estimate", tiny, "--calibration", str(cal), "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["calibrated"] and not plain["calibrated"]
    f0, f1 = plain["stages"][1], fitted["stages"][1]
    assert f1["wall_hours"] != f0["wall_hours"] and f1["usd_high"] / f1["usd"] < f0["usd_high"] / f0["usd"]


def test_plan_ranks_options_within_budget(capsys):
    assert main(["plan", "--budget", "300", "--prices", "2026", "--json", "--top", "5"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["candidates"] >= 10_000 and 0 < len(d["options"]) <= 5
    scores = [o["score"] for o in d["options"]]
    assert scores == sorted(scores, reverse=True)
    for o in d["options"]:
        assert o["usd"] <= 300 and o["limit"]
        assert o["usd"] == pytest.approx(o["generate_usd"] + o["finetune_usd"])
    assert main(["plan", "--budget", "300"]) == 0
    assert "limited by" in capsys.readouterr().out


def test_plan_bad_input(capsys):
    assert main(["plan", "--budget", "0"]) == 2
    assert "--budget: must be positive" in capsys.readouterr().err
    assert main(["plan", "--budget", "100", "--teacher", "gpt-17"]) == 2
    assert "unknown model 'gpt-17'" in capsys.readouterr().err
    assert main(["plan", "--budget", "100", "--prices", "2023"]) == 2  # gpt-4o-mini did not exist yet
    assert main(["plan", "--budget", "100", "--prices", "2023", "--teacher", "gpt-3.5-turbo", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["options"]
