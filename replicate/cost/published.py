"""The published replications (pipelines/published/*.yaml) against the cost model's predictions.

    python -m replicate.cost.published          # the markdown tables in docs/cost-model.md

Two ratios per run, predicted / published fine-tuning wall-clock: in-sample (params.DEFAULTS, fitted
to every run) and leave-one-out (cost/fit.py refits the FIT constants without the run, then
predicts it). tests/test_costmodel.py checks the targets (LOO within 1.5x for >= 80 % of the runs,
within 2x for all) and that docs/cost-model.md carries exactly these tables.
"""
from __future__ import annotations

from pathlib import Path

from replicate import files
from replicate.config import load_pipeline
from replicate.cost.estimate import estimate_pipeline
from replicate.tables import fixed, num

NR = "n/r"  # not reported by the source


def published_dir() -> Path:
    return files.shipped("pipelines") / "published"


def rows(loo: dict | None = None) -> list[dict]:
    out = []
    for path in sorted(published_dir().glob("*.yaml")):
        cfg = load_pipeline(path)
        est = estimate_pipeline(cfg, source=str(path))
        ft, pub = est.stage("finetune"), cfg.published
        out.append({
            "name": cfg.name, "setup": f"{cfg.student.model} {cfg.finetune.method}, {ft.device}",
            "software": ft.detail["software"], "disputed": pub.disputed,
            "published_wall_hours": pub.wall_hours, "wall_hours": ft.wall_hours,
            "wall_ratio": ft.wall_hours / pub.wall_hours if pub.wall_hours else None,
            "loo_ratio": (loo or {}).get(cfg.name),
            "published_gpu_hours": pub.gpu_hours, "gpu_hours": ft.gpu_hours,
            "published_usd": pub.usd, "usd": est.total["usd"], "prices": est.prices,
            "mfu": ft.detail["mfu"], "padding": ft.detail["padded_tokens"] / ft.detail["trained_tokens"],
        })
    return out


def loo_ratios() -> dict[str, float]:
    from replicate.cost.fit import fit, repo_sweeps

    return fit(sweeps=repo_sweeps())["loo"]


def markdown(loo: dict | None = None) -> str:
    loo = loo_ratios() if loo is None else loo
    lines = [("| run | student, method, hardware | stack | wall published (h) | wall predicted (h) | in-sample "
              "| leave-one-out | GPU-h published | GPU-h predicted | $ published | $ predicted (prices) "
              "| predicted MFU | padded/real tokens |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows(loo):
        lo = "disputed" if r["disputed"] else fixed(r["loo_ratio"], 2, NR)
        lines.append(
            f"| {r['name']} | {r['setup']} | {r['software']} | {fixed(r['published_wall_hours'], 2, NR)} "
            f"| {r['wall_hours']:.2f} | {fixed(r['wall_ratio'], 2, NR)} | {lo} "
            f"| {fixed(r['published_gpu_hours'], 0, NR)} | {r['gpu_hours']:.1f} "
            f"| {num(r['published_usd'], 1, NR)} | {r['usd']:,.0f} ({r['prices']}) | {r['mfu']:.1%} "
            f"| {r['padding']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
