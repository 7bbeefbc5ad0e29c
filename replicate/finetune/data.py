"""Alpaca JSONL -> token rows the trainer consumes: prompt masked, EOS appended, packed or padded.

    rows = read_alpaca(path)                                  # UserError names the file and line
    examples, stats = tokenize_examples(rows, tok, max_length=512, too_long="truncate")
    rows = pack_examples(examples, max_length) if packing else examples
    collate = Collator(pad_id, packed=packing)                # -> input_ids, labels, position_ids|attention_mask

Packing puts several examples in one row of at most `max_length` tokens (best-fit decreasing) and
restarts `position_ids` at every example. With no attention_mask, transformers 5.x derives a
block-diagonal causal mask per row from those position ids (`find_packed_sequence_indices`), for
sdpa, eager, flex and flash attention alike: examples never see each other. Rows stay separate, so
attention costs B x L^2, not (B x L)^2 as when TRL's padding-free mode flattens a batch into one row.

No torch/transformers import at module level: the GPU benchmark imports this on a bare image.
"""
from __future__ import annotations

import bisect
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from replicate.errors import UserError
from replicate.files import jsonl_rows
from replicate.prompts import prompt_completion

IGNORE = -100  # label of a position that contributes no loss (prompt, padding)


def read_alpaca(path: str | Path) -> list[dict]:
    """Rows {instruction, input, output} of an Alpaca JSONL file; a bad line is a UserError naming it."""
    path = Path(path)
    rows = []
    for lineno, row in jsonl_rows(path, "training data not found (run `replicate generate` first, or set train_file)"):
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise UserError(f"{path}:{lineno}: `{key}` must be a non-empty string")
        if not isinstance(row.get("input", ""), str):
            raise UserError(f"{path}:{lineno}: `input` must be a string")
        rows.append({"instruction": row["instruction"], "input": row.get("input") or "", "output": row["output"]})
    if not rows:
        raise UserError(f"{path}: no training examples (the file is empty)")
    return rows


@dataclass
class DataStats:
    rows: int = 0
    examples: int = 0
    """Kept after the length policy."""
    too_long: int = 0
    """Examples longer than max_length (prompt + completion + EOS)."""
    truncated: int = 0
    dropped: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    """Supervised tokens (output + EOS): the loss tokens of one epoch."""

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_examples(rows: list[dict], tokenizer, *, max_length: int,
                      too_long: Literal["truncate", "drop"] = "truncate") -> tuple[list[dict], DataStats]:
    """Tokenize prompt and prompt+completion (special tokens as vLLM adds them at evaluation), mask
    the prompt, append EOS so the student learns to stop. Too-long examples are counted and
    truncated (keep the start, as Alpaca's train.py) or dropped."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the student's tokenizer has no EOS token: it could never learn to stop")
    stats = DataStats(rows=len(rows))
    out = []
    for start in range(0, len(rows), 1000):  # batched calls: the fast tokenizer runs in Rust
        chunk = rows[start:start + 1000]
        pairs = [prompt_completion(r) for r in chunk]
        prompt_ids = tokenizer([p for p, _ in pairs])["input_ids"]
        full_ids = tokenizer([p + c for p, c in pairs])["input_ids"]
        for p_ids, ids in zip(prompt_ids, full_ids):
            # Where the tokenized prompt stops being a prefix (a merge across the boundary), the
            # completion starts: it is what the model must produce after the prompt.
            n_prompt = _common_prefix(p_ids, ids)
            ids = list(ids) if ids[-1:] == [eos] else [*ids, eos]
            labels = [IGNORE] * n_prompt + ids[n_prompt:]
            if len(ids) > max_length:
                stats.too_long += 1
                if too_long == "drop" or n_prompt >= max_length:  # nothing supervised would remain
                    stats.dropped += 1
                    continue
                ids, labels = ids[:max_length], labels[:max_length]
                stats.truncated += 1
            stats.prompt_tokens += n_prompt
            stats.completion_tokens += len(ids) - n_prompt
            out.append({"input_ids": ids, "labels": labels})
    stats.examples = len(out)
    if not out:
        raise UserError(f"no training example fits max_length={max_length} tokens "
                        f"({stats.too_long} of {stats.rows} are longer); raise finetune.max_length")
    return out, stats


def pack_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: example indices per row, each row's total <= capacity. Deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted: bisect finds the tightest fit
    for i in order:
        n = lengths[i]
        j = bisect.bisect_left(free, (n, -1))
        if j == len(free):
            bins.append([i])
            room, b = capacity - n, len(bins) - 1
        else:
            room, b = free.pop(j)
            bins[b].append(i)
            room -= n
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


def pack_examples(examples: list[dict], max_length: int) -> list[dict]:
    """Rows of whole examples (never split) with `seq_lengths` recording the boundaries."""
    rows = []
    for members in pack_bins([len(e["input_ids"]) for e in examples], max_length):
        ids, labels, lens = [], [], []
        for i in members:
            ids += examples[i]["input_ids"]
            labels += examples[i]["labels"]
            lens.append(len(examples[i]["input_ids"]))
        rows.append({"input_ids": ids, "labels": labels, "seq_lengths": lens})
    return rows


def padding_fraction(rows: list[dict], batch_size: int, multiple: int = 1) -> float:
    """Share of positions that would be padding when `rows` are batched in order, padded to the longest."""
    real = total = 0
    for s in range(0, len(rows), batch_size):
        lens = [len(r["input_ids"]) for r in rows[s:s + batch_size]]
        width = -(-max(lens) // multiple) * multiple
        real += sum(lens)
        total += width * len(lens)
    return 1 - real / total if total else 0.0


@dataclass
class Collator:
    """Rows -> one micro-batch. Packed rows get per-example position_ids and no attention_mask
    (block-diagonal attention, see the module docstring); plain rows get right padding and a mask.

    Also returns `meter`: the batch's non-padding and loss token counts and a CRC of its token ids
    (the trainer pops it before the forward; the meter uses it to count tokens and check data order)."""

    pad_id: int
    packed: bool
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)  # padding keeps 0: each pad is its own 1-token block
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            input_ids[i, :k] = torch.tensor(r["input_ids"])
            labels[i, :k] = torch.tensor(r["labels"])
            mask[i, :k] = 1
            at = 0
            for seq in r.get("seq_lengths") or [k]:
                pos[i, at:at + seq] = torch.arange(seq)
                at += seq
        batch = {"input_ids": input_ids, "labels": labels}
        if self.packed:
            batch["position_ids"] = pos
        else:
            batch["attention_mask"] = mask
        batch["meter"] = {
            "tokens": int(mask.sum()),
            "loss_tokens": int((labels[:, 1:] != IGNORE).sum()),  # the positions the shifted loss scores
            "positions": n * width,
            "crc": zlib.crc32(input_ids.numpy().tobytes()),
        }
        return batch
