"""Fine-tuning data: the Alpaca template, loss masks, EOS, length policy, packing, bad input.
Fast: a tokenizer only (the packaged teacher's SmolLM2 tokenizer), no model."""
from __future__ import annotations

import json
import random

import pytest

from replicate.errors import UserError
from replicate.finetune.data import (
    IGNORE,
    Collator,
    pack_bins,
    pack_examples,
    padding_fraction,
    read_alpaca,
    tokenize_examples,
)
from replicate.prompts import PROMPT_INPUT, PROMPT_NO_INPUT, alpaca_prompt


@pytest.fixture(scope="module")
def tok(teacher_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(teacher_dir)


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_template_is_alpacas_exact_strings():
    assert alpaca_prompt("Name a colour.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a colour.\n\n### Response:")
    with_input = alpaca_prompt("Add.", "2 and 3")
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input that provides "
                                 "further context.")
    assert with_input.endswith("### Input:\n2 and 3\n\n### Response:")
    assert alpaca_prompt("Add.", "   ") == PROMPT_NO_INPUT.format(instruction="Add.")  # blank input = no input
    assert PROMPT_INPUT.count("{") == 2


def test_bad_datasets_name_the_line(tmp_path):
    good = json.dumps({"instruction": "a", "input": "", "output": "b"})
    cases = {
        "not valid JSON": [good, "{oops"],
        "`output` must be a non-empty string": [good, good, json.dumps({"instruction": "a", "output": ""})],
        "expected a JSON object": [json.dumps(["a", "b"])],
        "`input` must be a string": [json.dumps({"instruction": "a", "input": 3, "output": "b"})],
    }
    for msg, lines in cases.items():
        with pytest.raises(UserError, match=rf"bad.jsonl:{len(lines)}: .*{msg[:20]}"):
            read_alpaca(write(tmp_path / "bad.jsonl", lines))
    with pytest.raises(UserError, match="empty"):
        read_alpaca(write(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(UserError, match="not found"):
        read_alpaca(tmp_path / "missing.jsonl")


@pytest.mark.slow  # the packaged teacher's tokenizer: converted once per machine
def test_prompt_is_masked_and_eos_appended(tok):
    rows = [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
            {"instruction": "Add.", "input": "2 and 3", "output": "5"}]
    examples, stats = tokenize_examples(rows, tok, max_length=512)
    for row, ex in zip(rows, examples):
        supervised = [t for t in ex["labels"] if t != IGNORE]
        assert supervised[-1] == tok.eos_token_id and ex["input_ids"][-1] == tok.eos_token_id
        assert tok.decode(supervised[:-1]) == row["output"]  # exactly the output, right after "### Response:"
        n_prompt = ex["labels"].index(supervised[0])
        assert tok.decode(ex["input_ids"][:n_prompt]) == alpaca_prompt(row["instruction"], row["input"])
    assert stats.completion_tokens == sum(sum(t != IGNORE for t in e["labels"]) for e in examples)
    assert stats.tokens == sum(len(e["input_ids"]) for e in examples)


@pytest.mark.slow
def test_too_long_examples_are_counted_then_truncated_or_dropped(tok):
    short = {"instruction": "Say hi.", "input": "", "output": "Hi."}
    long = {"instruction": "Repeat.", "input": "", "output": "word " * 200}
    huge_prompt = {"instruction": "x " * 400, "input": "", "output": "ok"}
    ex, st = tokenize_examples([short, long, huge_prompt], tok, max_length=100)
    assert (st.too_long, st.truncated, st.dropped, st.examples) == (2, 1, 1, 2)  # nothing supervised left: dropped
    assert max(len(e["input_ids"]) for e in ex) == 100
    ex, st = tokenize_examples([short, long, huge_prompt], tok, max_length=100, too_long="drop")
    assert (st.too_long, st.truncated, st.dropped, st.examples) == (2, 0, 2, 1)
    with pytest.raises(UserError, match="max_length=10"):
        tokenize_examples([short], tok, max_length=10)


def test_best_fit_packing_keeps_every_example_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(5, 120) for _ in range(500)]
    bins = pack_bins(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    fill = sum(lengths) / (128 * len(bins))
    assert fill > 0.95, fill  # best-fit decreasing wastes little
    assert pack_bins(lengths, 128) == bins  # deterministic: resume needs the same rows


def test_collator_restarts_positions_per_example_and_counts_tokens():
    ex = [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8, 9], "labels": [IGNORE, 9]},
          {"input_ids": [1, 2, 3, 4], "labels": [IGNORE, IGNORE, 3, 4]}]
    rows = pack_examples(ex, 6)
    b = Collator(pad_id=0, packed=True)(rows)
    assert "attention_mask" not in b  # transformers then builds the block-diagonal mask from position_ids
    assert b["input_ids"].shape == (2, 6)
    got = {tuple(r[:n].tolist()): tuple(p[:n].tolist()) for r, p, n in
           zip(b["input_ids"], b["position_ids"], (sum(x["seq_lengths"]) for x in rows))}
    assert got[(1, 2, 3, 4, 8, 9)] == (0, 1, 2, 3, 0, 1)
    assert got[(5, 6, 7)] == (0, 1, 2)
    assert b["meter"]["tokens"] == 9 and b["meter"]["positions"] == 12 and b["meter"]["loss_tokens"] == 5
    plain = Collator(pad_id=0, packed=False, pad_to_multiple_of=8)(ex)
    assert plain["attention_mask"].sum() == 9 and plain["input_ids"].shape == (3, 8)
    assert padding_fraction(ex, batch_size=3) == pytest.approx(1 - 9 / 12)
    assert padding_fraction(rows, batch_size=2) == pytest.approx(1 - 9 / 12)
