"""The cost model's answers for people: `replicate estimate` and `replicate plan` tables.

No torch, no vLLM: these answer in well under a second (tests/test_estimate_cli.py checks both).
"""
from __future__ import annotations

from rich.console import Console

from replicate.tables import console_table, hours, money, num, tokens


def _console() -> Console:
    return Console(width=max(Console().width, 110), highlight=False, soft_wrap=True)


def _stage_detail(s: dict) -> str:
    if s["device"] == "none":
        return s.get("note", "")
    if s["name"] == "finetune":
        return (f"{s['method']}, {tokens(s['trained_tokens'])} tokens ({tokens(s['padded_tokens'])} padded), "
                f"{num(s['tokens_per_s'])} tok/s, MFU {s['mfu']:.1%}, {num(s['memory_gb_per_device'], 2)} GB/device")
    if s["name"] == "generate":
        text = (f"{s['requests']:,.0f} requests, {tokens(s['prompt_tokens'])} tokens in + "
                f"{tokens(s['output_tokens'])} out")
        if s.get("tokens_per_s"):
            text += f", {num(s['tokens_per_s'])} out tok/s ({s['decode_bound']}-bound)"
        if s.get("replicas"):
            text += f", {s['replicas']} engine(s) x {s['tensor_parallel']} device(s) each"
        return text
    text = f"{s['outputs']:,} prompts x 3 models"
    if s.get("teacher_samples"):
        text += f" + {s['teacher_samples']:,} sampled teacher answers"
    return text + (f", {s['judged_pairs']:,} judged pairs" if s.get("judged_pairs") else "")


def print_estimate(est: dict) -> None:
    """The stage table, one line of detail per stage, the notes and the published comparison."""
    body = [[s["name"], s["device"], num(s["gpu_hours"]), hours(s["wall_hours"]), money(s["usd"]),
             f"{money(s['usd_low'])} to {money(s['usd_high'])}"] for s in est["stages"]]
    tot = est["total"]
    body.append(["total", "", num(tot["gpu_hours"]), hours(tot["wall_hours"]), money(tot["usd"]),
                 f"{money(tot['usd_low'])} to {money(tot['usd_high'])}"])
    title = f"{est['name']}: estimated cost at {est['prices']} prices" + (" (calibrated)" if est["calibrated"] else "")
    # device-hours: a GPU's or, for `gpu: cpu`, a whole CPU's hours (the ledger's word too)
    console_table(title, ["stage", "device", "device-hours", "wall", "cost", "range"], body,
                  bold_rows=[len(body) - 1])
    console = _console()
    for s in est["stages"]:
        console.print(f"{s['name']}: {_stage_detail(s)}", markup=False)
    for note in est["notes"]:
        console.print(f"note: {note}", markup=False)
    pub = est.get("published")
    if pub:
        ft = next(s for s in est["stages"] if s["name"] == "finetune")
        parts = []
        if pub.get("wall_hours"):
            parts.append(f"fine-tuning wall {hours(pub['wall_hours'])} (predicted {hours(ft['wall_hours'])}, "
                         f"x{ft['wall_hours'] / pub['wall_hours']:.2f})")
        if pub.get("usd"):
            parts.append(f"total {money(pub['usd'])} (predicted {money(tot['usd'])})")
        console.print(f"published: {'; '.join(parts) or 'no figures'}", markup=False)
        console.print(f"  source: {pub['source']}", markup=False)
        if pub.get("notes"):
            console.print(f"  notes: {pub['notes']}", markup=False)


def print_plan(result: dict) -> None:
    console = _console()
    if not result["options"]:
        console.print(f"nothing fits {money(result['budget_usd'])} within {hours(result['max_hours'])}: even the "
                      "smallest student with 1,000 examples costs more or takes longer", markup=False)
        return
    body = [[str(i), f"{o['student']} ({o['params'] / 1e9:.1f}B)", f"{o['examples']:,}", o["method"],
             f"{o['count']}x {o['gpu']}", money(o["usd"]), hours(o["wall_hours"])]
            for i, o in enumerate(result["options"], 1)]
    console_table(f"best replications for {money(result['budget_usd'])} within {hours(result['max_hours'])} at "
                  f"{result['prices']} prices (teacher {result['teacher']}, {result['software']} software, "
                  f"ranked by {result['objective']})",
                  ["#", "student", "examples", "method", "hardware", "cost", "wall"], body)
    for i, o in enumerate(result["options"], 1):
        front = ", ".join(f"{money(p['usd'])}/{hours(p['wall_hours'])} on {p['count']}x {p['gpu']}" for p in o["pareto"])
        console.print(f"{i}. data {money(o['generate_usd'])} + fine-tuning {money(o['finetune_usd'])}; "
                      f"dollars vs hours: {front}; limited by: {o['limit']}", markup=False)
    console.print(f"{result['feasible']:,} copies (student, examples, method) fit of {result['candidates']:,} setups "
                  "costed. Each row's setup is the cheapest on its Pareto front within the hour limit. Ranking "
                  "'quality' = log10(params) + 0.5 log10(examples) + a small bonus for full fine-tuning (a stated "
                  "heuristic, docs/cost-model.md); evaluation not included.", markup=False)
