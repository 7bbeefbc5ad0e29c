"""The Hugging Face ecosystem's formats: dataset and model cards, save_to_disk, push_to_hub.

    data/README.md            dataset card: the Hub's YAML front matter (configs, task, size,
                              tags) over the provenance table generate writes
    student/merged/README.md  model card: base model, data, method, cost (finetune writes it)
    student/adapter/          adapter_config.json names a PORTABLE base model (a hub id), not the
                              local cache folder the run trained from

`load_dataset("runs/<name>/data")` must tell runs apart: the datasets cache keys a local folder
on its name (`data`, the same for every run) and the card's config name, so the config name
is `<run name>-<12 hex digits of the rows' SHA-256>`: another run, or the same run's rewritten
rows, is another config and never comes back from the cache.

huggingface_hub is imported inside functions (a light, pure-Python dependency of the base install).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from replicate.errors import UserError
from replicate.tables import money, num

SPLITS = {"train": "train.jsonl", "held_out": "held_out.jsonl"}


def config_name(run_name: str, data_dir: Path) -> str:
    """`<run>-<sha256 of train.jsonl + held_out.jsonl, 12 hex>`: unique per run and per content."""
    h = hashlib.sha256()
    for f in SPLITS.values():
        path = Path(data_dir) / f
        h.update(path.read_bytes() if path.is_file() else b"")
        h.update(b"\0")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in run_name)
    return f"{safe}-{h.hexdigest()[:12]}"


def _size_category(n: int) -> str:
    """The Hub's size_categories bucket."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def dataset_card(data_dir: Path, run_name: str, rows: int, teacher: str, body: str) -> str:
    """The dataset card's text: DatasetCardData's YAML front matter, then `body` (Markdown)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        pretty_name=f"{run_name}: instruction data written by {teacher}", language=["en"],
        task_categories=["text-generation"], size_categories=[_size_category(rows)],
        tags=["alpaca", "synthetic", "self-instruct", "replicate"],
        configs=[{"config_name": config_name(run_name, data_dir),
                  "data_files": [{"split": s, "path": f} for s, f in SPLITS.items()]}],
    )
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def refresh_config(data_dir: Path, run_name: str) -> None:
    """Give a copied card (a sweep's subset) the config name of its own rows."""
    from huggingface_hub import DatasetCard

    path = Path(data_dir) / "README.md"
    if not path.is_file():
        return
    card = DatasetCard.load(path)
    for c in card.data.get("configs") or []:
        c["config_name"] = config_name(run_name, data_dir)
    card.save(path)


def load(data_dir: Path):
    """The run's dataset as a datasets.DatasetDict (train, held_out), through its card."""
    import datasets

    from replicate import log

    if not log.verbose():  # its bars would bury the status lines (-v shows them)
        datasets.disable_progress_bars()
    return datasets.load_dataset(str(data_dir))


def export_dataset(data_dir: Path, *, save_to_disk: str | None = None, push_to_hub: str | None = None,
                   private: bool = True) -> dict:
    """`--save-to-disk DIR` (Arrow, `datasets.load_from_disk`) and `--push-to-hub REPO` (a dataset
    repository with the card; the token comes from `hf auth login` or HF_TOKEN, never from YAML)."""
    data_dir = Path(data_dir)
    if not (data_dir / SPLITS["train"]).is_file():
        raise UserError(f"{data_dir}: no train.jsonl to export (run `replicate generate` first)")
    ds = load(data_dir)
    out: dict = {"rows": {k: len(v) for k, v in ds.items()}}
    if save_to_disk:
        ds.save_to_disk(save_to_disk)
        out["saved_to"] = str(save_to_disk)
    if push_to_hub:
        from huggingface_hub import DatasetCard

        try:
            ds.push_to_hub(push_to_hub, private=private)
            DatasetCard.load(data_dir / "README.md").push_to_hub(push_to_hub, repo_type="dataset")
        except Exception as e:  # noqa: BLE001 - network, auth, offline: all end as one line
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"--push-to-hub {push_to_hub}: {first} (needs hub access and a token: "
                            "`hf auth login` or HF_TOKEN)") from None
        out["pushed_to"] = f"https://huggingface.co/datasets/{push_to_hub}"
    return out


def model_card(*, run_name: str, base_model: str, method: str, metrics: dict, library: str, body_extra: str = "") -> str:
    """The student's model card: ModelCardData front matter (base_model, library, tags) and a
    short account of how it was made and what it cost."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(base_model=base_model, library_name=library, pipeline_tag="text-generation",
                         tags=["alpaca", "distillation", "replicate", method], language=["en"])
    m = metrics
    body = f"""# {run_name}: student ({method} fine-tune of {base_model})

Made with `replicate` (a cheap-replication cost simulator): a base model fine-tuned on instruction
data its teacher wrote (Alpaca-style self-instruct). The run's own data card is
`runs/{run_name}/data/README.md`; the evaluation against base and teacher is `runs/{run_name}/report.md`.

| | |
|---|---|
| base model | `{base_model}` |
| method | {method} (learning rate {m.get('learning_rate')}) |
| trained tokens | {num(m.get('trained_tokens'))} over {m.get('global_step')} optimizer steps |
| final training loss | {num(m.get('final_loss'))} |
| device | {m.get('device')} x {m.get('num_devices')} |
| fine-tuning cost | {money(m.get('usd'))} at {money(m.get('usd_per_device_hour'))}/device-hour |

Prompt format (the Alpaca template it was trained on): `replicate/prompts.py`.
{body_extra}"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))
