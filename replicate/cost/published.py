"""The published replications (pipelines/published/*.yaml) against the cost model's predictions.

    python -m replicate.cost.published          # the markdown table in docs/cost-model.md

tests/test_costmodel.py checks every ratio (one set of constants, wall-clock within 1.5x) and that
docs/cost-model.md carries exactly this table.
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


def rows() -> list[dict]:
    out = []
    for path in sorted(published_dir().glob("*.yaml")):
        cfg = load_pipeline(path)
        est = estimate_pipeline(cfg, source=str(path))
        ft, pub = est.stage("finetune"), cfg.published
        out.append({
            "name": cfg.name, "setup": f"{cfg.student.model} {cfg.finetune.method}, {ft.device}",
            "published_wall_hours": pub.wall_hours, "wall_hours": ft.wall_hours,
            "wall_ratio": ft.wall_hours / pub.wall_hours if pub.wall_hours else None,
            "published_gpu_hours": pub.gpu_hours, "gpu_hours": ft.gpu_hours,
            "published_usd": pub.usd, "usd": est.total["usd"], "prices": est.prices,
            "mfu": ft.detail["mfu"], "padding": ft.detail["padded_tokens"] / ft.detail["trained_tokens"],
        })
    return out


def markdown() -> str:
    lines = [("| run | student, method, hardware | wall published (h) | wall predicted (h) | ratio | GPU-h published "
              "| GPU-h predicted | $ published | $ predicted (prices) | predicted MFU | padded/real tokens |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows():
        lines.append(
            f"| {r['name']} | {r['setup']} | {fixed(r['published_wall_hours'], 2, NR)} | {r['wall_hours']:.2f} "
            f"| {fixed(r['wall_ratio'], 2, NR)} | {fixed(r['published_gpu_hours'], 0, NR)} | {r['gpu_hours']:.1f} "
            f"| {num(r['published_usd'], 1, NR)} | {r['usd']:,.0f} ({r['prices']}) | {r['mfu']:.1%} "
            f"| {r['padding']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
