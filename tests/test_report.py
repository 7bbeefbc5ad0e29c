"""report.md / report.html / report.json from a ledger and scores; the copy-curve fit and the
copy-risk card (single run and sweep, full scale through the cost model); the HTML in headless
Chromium (renders, every image loads, nothing fetched from outside)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from replicate import files, meter
from replicate.config import load_pipeline
from replicate.report import build_report, write_report
from replicate.report.copy_curve import copy_curve, fit_many, fit_saturating, resampled_fit
from replicate.report.copy_risk import card_from_run, full_scale
from replicate.rundir import write_resolved

DEVICE = "cpu: test (2 cores)"


def _measured(run_dir: Path, stage: str, wall_s: float, usd: float, **tokens) -> None:
    row = {"stage": stage, "kind": "measured", "device": DEVICE, "num_devices": 1, "wall_s": wall_s,
           "device_hours": wall_s / 3600, "usd": usd, "prompt_tokens": 0, "output_tokens": 0, "trained_tokens": 0}
    row.update(tokens)
    files.append_jsonl(run_dir / meter.LEDGER, row)


def _scores(run_dir: Path, style: float, fidelity: float, capability: float, cap_half: float = 0.08) -> None:
    def stat(v: float, half: float = 0.08, **extra) -> dict:
        return {"mean": v, "ci": [v - half, v + half], **extra}

    scores = {
        "metrics": {
            "rougeL_f": {"family": "fidelity", "base": stat(0.1), "student": stat(0.1 + 0.2 * fidelity),
                         "teacher": stat(1.0), "resample": stat(0.3), "ceiling": "resample",
                         "student_minus_base": stat(0.2 * fidelity, 0.02), "ceiling_minus_base": stat(0.2, 0.03),
                         "gap_closed": stat(fidelity, gap_measurable=True)},
            "accuracy_ood": {"family": "capability", "base": stat(0.2), "student": stat(0.2 + 0.2 * capability),
                             "teacher": stat(0.4), "ceiling": "teacher", "student_minus_base": stat(0.2 * capability),
                             "ceiling_minus_base": stat(0.2, 0.25),
                             "gap_closed": stat(capability, cap_half, gap_measurable=False)},
        },
        "gap_closed": {"style": stat(style, gap_measurable=True), "fidelity": stat(fidelity, gap_measurable=True),
                       "capability": stat(capability, cap_half, gap_measurable=False)},
        "illusion_gap": stat(fidelity - capability, gap_measurable=False),
        "illusion_gap_style": stat(style - capability, gap_measurable=False),
        "counts": {"open_items": 40, "probes": 60},
    }
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "eval" / "scores.json").write_text(json.dumps(scores))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tiny"
    meter.write_estimate(d, "generate", device_hours=0.05, wall_s=180, usd=0.01, tokens_per_s=120.0)
    meter.write_estimate(d, "finetune", device_hours=0.08, wall_s=288, usd=0.02, tokens_per_s=900.0)
    meter.write_estimate(d, "evaluate", device_hours=0.03, wall_s=108, usd=0.006, tokens_per_s=150.0)
    # generate was killed once and resumed: two measured chunks that must add up
    _measured(d, "generate", 150, 0.008, output_tokens=20_000, prompt_tokens=50_000)
    _measured(d, "generate", 60, 0.003, output_tokens=7_000, prompt_tokens=10_000)
    _measured(d, "finetune", 360, 0.024, trained_tokens=270_000)
    _measured(d, "evaluate", 90, 0.006, output_tokens=12_000)
    _scores(d, style=0.6, fidelity=0.4, capability=0.05)
    return d


def test_report_compares_estimate_with_summed_measured_chunks(run_dir):
    rep = build_report(run_dir)
    gen = next(s for s in rep["stages"] if s["stage"] == "generate")
    assert gen["measured"]["chunks"] == 2
    assert gen["measured"]["wall_s"] == pytest.approx(210)
    assert gen["measured"]["tokens_per_s"] == pytest.approx(27_000 / 210)
    assert gen["ratio"]["wall_s"] == pytest.approx(210 / 180)
    ft = next(s for s in rep["stages"] if s["stage"] == "finetune")
    assert ft["measured"]["tokens_per_s"] == pytest.approx(750)  # trained tokens, not output tokens
    assert ft["ratio"]["usd"] == pytest.approx(1.2)
    assert rep["totals"]["measured"]["usd"] == pytest.approx(0.041)
    assert rep["totals"]["ratio"]["wall_s"] == pytest.approx(660 / 576)
    assert rep["evaluation"]["families"]["capability"]["gap_closed"] == pytest.approx(0.05)
    assert rep["evaluation"]["illusion_gap"] == pytest.approx(0.35)
    assert rep["evaluation"]["illusion_gap_style"] == pytest.approx(0.55)


def test_report_files_written_and_consistent(run_dir):
    (run_dir / "data").mkdir()
    (run_dir / "data" / "train.jsonl").write_text("{}\n" * 100)
    paths = write_report(run_dir)
    md = paths["md"].read_text()
    assert "| generate |" in md and "(1.17x)" in md  # 210 s measured / 180 s estimated
    # intervals and measurability everywhere: tables and the headline
    assert "| illusion gap (fidelity - capability) | 0.35 [0.27, 0.43] | not measurable |  |" in md
    assert "| accuracy_ood | capability |" in md and "+0.01 [-0.07, +0.09]" in md
    headline = md.split("\n")[4]
    assert "fidelity 0.40 [0.32, 0.48]" in headline and "capability 0.05 [-0.03, 0.13] (not measurable)" in headline
    assert "Copy risk:" in headline and "## Copy-risk card" in md
    data = json.loads(paths["json"].read_text())
    assert data["totals"]["measured"]["usd"] == pytest.approx(0.041)
    assert {r["family"] for r in data["copy_risk"]["rows"]} == {"style", "fidelity", "capability"}
    html = paths["html"].read_text()
    # self-contained: every image inline, no external URL anywhere
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "Copy-risk card" in html and "g_max = 1" in html  # the one-size warning is visible


def test_fit_recovers_a_known_saturating_curve():
    ns = np.array([25, 50, 100, 200, 400, 800])
    gs = 0.8 * ns / (ns + 120)
    fit = fit_saturating(ns, gs)
    assert fit["g_max"] == pytest.approx(0.8, rel=0.02)
    assert fit["n50"] == pytest.approx(120, rel=0.03)
    # g(n) = 0.5 at n = 0.5 * 120 / (0.8 - 0.5) = 200
    assert fit["examples_50"] == pytest.approx(200, rel=0.05)
    flat = fit_saturating(ns, 0.1 * ns / (ns + 50))
    assert "examples_50" not in flat and "not reached" in flat["why"]


def _sat(n: float, g_max: float, n50: float) -> float:
    return g_max * n / (n + n50)


def _sweep(tmp_path: Path) -> Path:
    root = tmp_path / "tiny-sweep"
    write_resolved(load_pipeline(Path(__file__).parent.parent / "pipelines" / "tiny-cpu.yaml"), root)
    _measured(root, "generate", 400, 0.04, output_tokens=40_000)
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.jsonl").write_text("{}\n" * 400)
    for n in (50, 100, 200, 400):
        sub = root / f"n{n}"
        meter.write_estimate(sub, "finetune", device_hours=n / 36000, wall_s=n / 10, usd=n * 1e-4, sweep_examples=n)
        _measured(sub, "finetune", n / 8, n * 1.2e-4, trained_tokens=n * 200)
        _measured(sub, "evaluate", 60, 0.005, output_tokens=5000)
        _scores(sub, style=_sat(n, 0.9, 60), fidelity=_sat(n, 0.7, 100), capability=_sat(n, 0.1, 50))
    return root


def test_sweep_copy_curve_points_costs_and_card(tmp_path):
    root = _sweep(tmp_path)
    sw = copy_curve(root)
    assert [p["examples"] for p in sw["points"]] == [50, 100, 200, 400]
    # n=100: its share of generation (100 of 400 rows of $0.04) + its fine-tune ($0.012)
    assert sw["points"][1]["usd"] == pytest.approx(0.01 + 0.012)
    fit = resampled_fit(sw["points"], "style")
    assert fit["g_max"] == pytest.approx(0.9, rel=0.05)
    rep = build_report(root)
    card = rep["copy_risk"]
    style50 = next(r for r in card["rows"] if r["family"] == "style" and r["target"] == 0.5)
    n, lo, hi = style50["examples"]
    assert n == pytest.approx(0.5 * 60 / 0.4, rel=0.1) and lo < n < hi  # 75 examples, with an interval
    a, b = sw["usd_per_example_fit"]
    assert style50["usd_here"][0] == pytest.approx(a + b * n)
    # full scale through the cost model's public function, in every dated price table
    assert style50["usd_full"][0] == pytest.approx(full_scale(load_pipeline(root / "pipeline.yaml"), n)[0])
    assert set(card["by_price_year"]["style"]) == {2023, 2024, 2025, 2026}
    cap = [r for r in card["rows"] if r["family"] == "capability"]
    assert all(r["examples"][0] == float("inf") for r in cap)  # g_max ~0.1: never closes 25 %
    assert any("capability 50%: not reached" in w for w in card["warnings"])
    md = write_report(root)["md"].read_text()
    assert "Copy curve" in md and "## Copy-risk card" in md and "not reached" in md and "Warnings:" in md


def test_a_collapsed_interval_does_not_decide_the_fit():
    """A size whose interval collapsed to [0, 0] used to get weight 1e6 and the curve went through
    it; now no size's standard error is below the median one, so it weighs like the others."""
    pts = []
    for n in (50, 100, 200, 400):
        g = 0.8 * n / (n + 100)
        pts.append({"examples": n, "families": {"fidelity": {"gap_closed": g, "ci": [g - 0.1, g + 0.1]}}})
    pts[1]["families"]["fidelity"] = {"gap_closed": 0.0, "ci": [0.0, 0.0], "gap_measurable": False}
    ns, gs = [50, 100, 200, 400], [p["families"]["fidelity"]["gap_closed"] for p in pts]
    old_gmax, old_n50, _ = (v[0] for v in fit_many(ns, [gs], [0.051, 1e-3, 0.051, 0.051]))
    assert old_gmax * 100 / (100 + old_n50) < 0.01  # the old weights: the curve passes through (100, 0)
    fit = resampled_fit(pts, "fidelity")
    assert fit["g_max"] * 100 / (100 + fit["n50"]) > 0.15 and fit["not_measurable_at"] == [100]


def test_single_run_card_assumes_full_closure_and_says_so():
    ev = {"families": {"fidelity": {"gap_closed": 0.2, "ci": [0.1, 0.3], "gap_measurable": True},
                       "capability": {"gap_closed": 0.05, "ci": [-0.2, 0.3], "gap_measurable": False}}}
    cfg = load_pipeline(Path(__file__).parent.parent / "pipelines" / "tiny-cpu.yaml")
    card = card_from_run(ev, 100, 0.05, 0.5, cfg)
    row = {(r["family"], r["target"]): r for r in card["rows"]}
    # g = n / (n + n50) through (100, 0.2): n50 = 400; n_f = f n50 / (1 - f)
    assert row[("fidelity", 0.5)]["examples"][0] == pytest.approx(400)
    assert row[("fidelity", 0.25)]["examples"][0] == pytest.approx(400 / 3)
    assert row[("fidelity", 0.8)]["examples"][0] == pytest.approx(1600)
    lo, hi = row[("fidelity", 0.5)]["examples"][1:]
    assert lo == pytest.approx(100 * 0.7 / 0.3) and hi == pytest.approx(900)  # from g's interval [0.1, 0.3]
    assert row[("fidelity", 0.5)]["usd_here"][0] == pytest.approx(400 * 0.05 / 100)
    assert row[("capability", 0.5)]["examples"][2] == float("inf")  # its interval reaches below 0
    assert any("g_max = 1" in w for w in card["warnings"]) and any("capability: gap not measurable" in w
                                                                   for w in card["warnings"])
    json.dumps(card)


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


PROBE = """<script>window.addEventListener('load', () => {
  const r = [...document.images].map(i => i.complete ? i.naturalWidth : -1);
  document.body.setAttribute('data-probe', JSON.stringify(r));
  document.body.setAttribute('data-tables', document.querySelectorAll('table').length);
});</script></body>"""


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium_with_every_image_loaded(tmp_path):
    root = _sweep(tmp_path)
    html = write_report(root)["html"].read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE))
    out = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=90, check=False)
    m = re.search(r"data-probe=\"([^\"]*)\"", out.stdout)
    assert m, f"Chromium did not run the page: {out.stderr[-500:]}"
    widths = json.loads(m.group(1).replace("&quot;", '"'))
    assert len(widths) == 3  # cost breakdown, estimate vs measured, copy curve
    assert all(w > 300 for w in widths), widths  # decoded PNGs, not broken-image placeholders
    assert int(re.search(r"data-tables=\"(\d+)\"", out.stdout).group(1)) == 3  # costs, sweep points, fits


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine (apt-get install -y chromium)")
def test_html_screenshot_of_a_run_report(run_dir, tmp_path):
    """A PNG of the whole page as a reader sees it (kept in the test's tmp folder to look at): the
    cost table's units, every empty cell explained, the charts' legends."""
    html_path = write_report(run_dir)["html"]
    shot = tmp_path / "report.png"
    out = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--window-size=1200,2600", f"--screenshot={shot}", html_path.as_uri()],
                         capture_output=True, text=True, timeout=90, check=False)
    assert shot.is_file() and shot.stat().st_size > 50_000, out.stderr[-500:]
    import matplotlib.image

    px = matplotlib.image.imread(shot)
    assert px.shape[0] == 2600 and px.shape[1] == 1200
    assert (px[..., :3].std(axis=(0, 1)) > 0.05).any()  # not a blank page
    text = html_path.read_text()
    assert "cost (USD)" in text and "$0.011" in text and "e-0" not in re.sub(r"base64,[^\"]+", "", text)
    assert "output tokens/s" in text and "(output_tokens)" not in text


def test_every_empty_cell_is_explained_and_money_has_units(tmp_path):
    d = tmp_path / "partial"
    meter.write_estimate(d, "generate", device_hours=0.05, wall_s=180, usd=0.01, tokens_per_s=120.0)
    _measured(d, "generate", 150, 0.000862, output_tokens=20_000)
    _measured(d, "finetune", 360, 0.024, trained_tokens=270_000)  # run on its own, no estimate
    rep = build_report(d)
    assert any(n.startswith("finetune: no estimate recorded") for n in rep["notes"])
    assert any(n.startswith("total: no measured/estimated ratio") for n in rep["notes"])
    md = write_report(d)["md"].read_text()
    assert "the estimate was $0.01 (for generate only)." in md and "the estimate was $0 " not in md
    assert "| $0.01 / $0.000862 (0.09x) |" in md and "8.62e-04" not in md
    assert "- finetune: no estimate recorded" in md and "(trained_tokens)" not in md
