"""Alpaca's self-instruct pieces: seed tasks, prompt, parse, filters, respond-mode prompts."""
from __future__ import annotations

import json
import random
import re

import pytest

from replicate.errors import UserError
from replicate.generate import selfinstruct as si
from replicate.generate.dedup import RougeDedup
from replicate.generate.selfinstruct import (
    STOP,
    Filters,
    FilterStats,
    build_prompt,
    chat_prompt,
    load_instructions,
    load_seed_tasks,
    parse_response,
    respond_prompt,
    respond_rows,
    rule_violation,
    sample_prompt,
    stop_strings,
)

# What a teacher writes after "4. Instruction:" (items 4-6, then a truncated item 7).
COMPLETION = """ Name three famous bridges and the cities they are in.
4. Input:
<noinput>
4. Output:
Golden Gate Bridge (San Francisco), Tower Bridge (London), Charles Bridge (Prague).
###
5. Instruction: Classify the sentence as polite or rude.
5. Input:
Give me that now.
5. Output:
Rude
###
this block lost its numbering
###
7. Instruction: Rewrite the sentence in a more formal tone.
7. Input:
hey, what's up with the late delivery?
7. Output:
Could you"""


def _write(tmp_path, lines: list[str], name: str = "data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- seed tasks -----------------------------------------------------------------------------

def test_packaged_seed_tasks_are_many_diverse_and_pass_the_filters():
    seeds = load_seed_tasks()
    assert len(seeds) >= 120
    assert len({s.id for s in seeds}) == len(seeds)
    assert 0.3 <= sum(bool(s.input) for s in seeds) / len(seeds) <= 0.5  # Alpaca: ~40% have input
    assert 15 <= sum(s.is_classification for s in seeds) <= 40
    assert all(s.output.strip() for s in seeds)
    assert [s.instruction for s in seeds if rule_violation(s.instruction)] == []
    # no seed is a near-duplicate of another, or the filter would reject the seeds' own style
    dedup = RougeDedup()
    assert all(dedup.add_if_novel(s.instruction) for s in seeds)
    assert len({s.instruction.split()[0].lower() for s in seeds}) >= 40  # many different verbs


@pytest.mark.parametrize("lines, message", [
    (['{"instruction": "Name a color.", "output": "Red"}', "{oops", '{"instruction": "x", "output": "y"}'],
     ":2: not valid JSON"),
    (['{"instruction": "Name a color.", "output": "Red"}', '["a", "list"]'], ":2: expected a JSON object"),
    (['{"instruction": "Name a color.", "output": "Red"}', "", '{"output": "Blue"}'], ":3: missing or empty 'instruction'"),
    (['{"instruction": "Name a color.", "output": ""}'], ":1: missing or empty 'output'"),
    (['{"instruction": "Name a color.", "output": "Red", "input": 5}'], ":1: 'input' must be a string"),
    (['{"instruction": "Name a color.", "output": "Red", "is_classification": "yes"}'], ":1: is_classification"),
    (['{"instruction": "Name a color.", "output": "Red"}'], "1 seed tasks; a prompt needs at least 3"),
    (["["], ":1: not valid JSON"),
])
def test_malformed_seed_file_names_the_line(tmp_path, lines, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[")) as err:
        load_seed_tasks(_write(tmp_path, lines))
    assert "\n" not in str(err.value)


def test_missing_duplicate_and_binary_seed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_seed_tasks(tmp_path / "nope.jsonl")
    row = '{"id": "a", "instruction": "Name a color.", "output": "Red"}'
    with pytest.raises(UserError, match=":2: duplicate seed task id 'a'"):
        load_seed_tasks(_write(tmp_path, [row, row]))
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="not UTF-8"):
        load_seed_tasks(tmp_path / "bin.jsonl")
    # a line separator inside a JSON string is no line break
    rows = [json.dumps({"instruction": f"Say\u2028hi {i} times.", "output": "hi"}, ensure_ascii=False)
            for i in range(3)]
    assert len(load_seed_tasks(_write(tmp_path, rows))) == 3


def test_alpaca_seed_format_is_read(tmp_path):
    row = {"id": "seed_task_1", "name": "antonym", "instruction": "Give the antonym of the word.",
           "instances": [{"input": "hot", "output": "cold"}], "is_classification": False}
    path = _write(tmp_path, [json.dumps({**row, "id": f"s{i}"}) for i in range(3)])
    seeds = load_seed_tasks(path)
    assert [(s.id, s.input, s.output) for s in seeds] == [("s0", "hot", "cold"), ("s1", "hot", "cold"),
                                                          ("s2", "hot", "cold")]


# -- prompt -------------------------------------------------------------------------------

def test_prompt_lists_three_numbered_seeds_and_ends_at_item_four():
    seeds = load_seed_tasks()
    prompt, ids = sample_prompt(seeds, random.Random(0))
    assert len(ids) == 3 == len(set(ids))
    assert prompt.endswith("###\n4. Instruction:")
    assert "List of 20 tasks:\n###\n1. Instruction: " in prompt
    assert prompt.count("###\n") == 4
    by_id = {s.id: s for s in seeds}
    for number, seed_id in enumerate(ids, start=1):
        seed = by_id[seed_id]
        block = (f"{number}. Instruction: {seed.instruction.rstrip(':')}\n{number}. Input:\n"
                 f"{seed.input or '<noinput>'}\n{number}. Output:\n{seed.output}\n")
        assert block in prompt
    # only the rng decides: the same state gives the same prompt (resume)
    rng = random.Random(7)
    state = rng.getstate()
    first = [sample_prompt(seeds, rng) for _ in range(3)]
    rng.setstate(state)
    assert [sample_prompt(seeds, rng) for _ in range(3)] == first


def test_prompt_normalises_instruction_whitespace_and_colon():
    seeds = load_seed_tasks()[:2]
    odd = type(seeds[0])(id="x", instruction="  List   three\nfruits:", input="", output="apple",
                         is_classification=False)
    assert "3. Instruction: List three fruits\n3. Input:\n<noinput>\n" in build_prompt(seeds + [odd])
    assert build_prompt(seeds + [odd], num_tasks=10).count("List of 10 tasks:") == 1
    assert stop_strings(10) == ["\n10", "10."] and STOP == ["\n20", "20."]


def test_chat_prompt_continue_the_list_with_the_real_chat_template(teacher_dir):
    from transformers import AutoTokenizer

    prompt, _ = sample_prompt(load_seed_tasks(), random.Random(1))
    messages = chat_prompt(prompt)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"].endswith("List of 20 tasks:")
    assert messages[1]["content"].startswith("###\n1. Instruction:")
    assert messages[0]["content"] + "\n" + messages[1]["content"] == prompt
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False,
                                         continue_final_message=True)
    assert text.endswith("###\n4. Instruction:")  # the teacher's next token continues item 4
    assert "<|im_start|>assistant\n###\n1. Instruction:" in text


# -- parse ----------------------------------------------------------------------------------

def test_parse_response_follows_alpaca_rules():
    stats = FilterStats()
    rows = parse_response(COMPLETION, "length", stats)
    assert rows == [
        {"instruction": "Name three famous bridges and the cities they are in.", "input": "",
         "output": "Golden Gate Bridge (San Francisco), Tower Bridge (London), Charles Bridge (Prague)."},
        {"instruction": "Classify the sentence as polite or rude.", "input": "Give me that now.", "output": "Rude"},
    ]
    assert (stats.responses, stats.parsed, stats.unparsable, stats.truncated) == (1, 2, 1, 1)
    # Finished normally, the last item is kept. Chunk k must carry number k + 4, so the block
    # that lost its numbering (item 6) is unparsable while item 7 still parses, as in Alpaca.
    rows = parse_response(COMPLETION.replace("Could you", "Could you explain the delay?"), "stop")
    assert [r["instruction"] for r in rows][-1] == "Rewrite the sentence in a more formal tone."
    assert rows[-1]["output"] == "Could you explain the delay?"


def test_parse_response_garbage_and_empty():
    stats = FilterStats()
    assert parse_response("", "stop", stats) == []
    assert parse_response("lorem ipsum ### dolor", "stop", stats) == []
    assert parse_response(None, "length", stats) == []
    assert (stats.responses, stats.parsed, stats.truncated) == (3, 0, 1)
    # a completion stopped at "\n20" leaves an empty tail after the last ###: not counted
    stats = FilterStats()
    text = " Say hi in French.\n4. Input:\n<noinput>\n4. Output:\nBonjour\n###\n"
    assert len(parse_response(text, "stop", stats)) == 1 and stats.unparsable == 0


# -- filters --------------------------------------------------------------------------------

@pytest.mark.parametrize("instruction, reason", [
    ("Name three fruits", "too_short"),  # 3 words
    ("Name three red fruits", None),  # 4 words
    (" ".join(["word"] * 150), None),
    (" ".join(["word"] * 151), "too_long"),
    ("Describe the image below in detail.", "blacklisted"),
    ("Create a MAP of the city center.", "blacklisted"),
    ("Tell me how to go to the station.", "blacklisted"),
    ("Explain what data mapping means.", None),  # word boundary: "mapping" is not "map"
    ("Write a program that sorts numbers.", "write_a_program"),
    ("write a program that sorts numbers.", None),  # case-sensitive, as Alpaca
    ("\"Quote\" this sentence back to me.", "punctuation_start"),
    ("¿Qué hora es ahora mismo?", "non_ascii_start"),
    ("Écris une phrase en français.", "non_ascii_start"),
])
def test_rule_filters(instruction, reason):
    assert rule_violation(instruction) == reason


def test_filters_count_every_reason_and_dedup_against_seeds_and_batch():
    seeds = ["Give three tips for staying healthy.", "Describe a sunset over the ocean."]
    filters = Filters(seeds)
    rows = [
        {"instruction": "Give three tips for staying healthy!", "input": "", "output": "x"},  # = seed
        {"instruction": "Explain how rainbows form in the sky.", "input": "", "output": "x"},
        {"instruction": "Explain how rainbows form in the sky please.", "input": "", "output": "x"},  # batch dup
        {"instruction": "Draw a cat.", "input": "", "output": "x"},
        {"instruction": "Listen to this music track carefully.", "input": "", "output": "x"},
        {"instruction": "Write a program to add two numbers.", "input": "", "output": "x"},
        {"instruction": "List five animals that live in deserts.", "input": "", "output": "x"},
    ]
    assert [filters.keep(r) for r in rows] == [False, True, False, False, False, False, True]
    # A task with nothing after "N. Output:" (SmolLM2 wrote one in 222 rows): nothing to train
    # on, and it does not block a later task with the same instruction and a real output.
    empty = {"instruction": "Name three rivers that flow through Africa.", "input": "", "output": "  "}
    assert not filters.keep(empty) and filters.keep(empty | {"output": "The Nile, the Congo, the Niger."})
    assert filters.stats.to_dict() == {
        "responses": 0, "truncated": 0, "unparsable": 0, "parsed": 0, "too_short": 1, "too_long": 0,
        "blacklisted": 1, "write_a_program": 1, "punctuation_start": 0, "non_ascii_start": 0,
        "empty_output": 1, "contaminated": 0, "similar": 2, "kept": 3}
    # resume: rows kept by an earlier run are compared against too, and counts carry on
    restored = Filters(seeds, kept=["Explain how rainbows form in the sky."],
                       stats=FilterStats.from_dict(filters.stats.to_dict() | {"unknown": 5}))
    assert not restored.keep(rows[1]) and restored.stats.similar == 3
    # one completion's rows at once, seeds given as SeedTask objects, resume via remember()
    batch = Filters(load_seed_tasks()[:3] + seeds)
    batch.remember(rows[6])
    assert batch.apply(rows) == ([rows[1]], {"similar": 3, "too_short": 1, "blacklisted": 1,
                                             "write_a_program": 1})


# -- respond mode ---------------------------------------------------------------------------

def test_load_instructions_and_prompts(tmp_path):
    path = _write(tmp_path, ['{"instruction": "Name a prime number.", "output": "ignored"}', "",
                             '{"instruction": "Translate to French.", "input": "Good morning"}'])
    rows = load_instructions(path)
    assert rows == [{"instruction": "Name a prime number.", "input": ""},
                    {"instruction": "Translate to French.", "input": "Good morning"}]
    assert respond_prompt(rows[0]) == [{"role": "user", "content": "Name a prime number."}]
    assert respond_prompt(rows[1]) == [{"role": "user", "content": "Translate to French.\n\nGood morning"}]
    assert respond_prompt(rows[1], chat=False).endswith("### Input:\nGood morning\n\n### Response:\n")
    assert "### Input" not in respond_prompt(rows[0], chat=False)
    with pytest.raises(UserError, match=r":3: missing or empty 'output'"):
        load_instructions(path, require_output=True)


def test_load_instructions_errors(tmp_path):
    with pytest.raises(UserError, match=r":2: missing or empty 'instruction'"):
        load_instructions(_write(tmp_path, ['{"instruction": "ok"}', '{"input": "no instruction"}']))
    with pytest.raises(UserError, match=r":1: not valid JSON.*JSONL"):
        load_instructions(_write(tmp_path, ["[", '{"instruction": "ok"}', "]"]))
    with pytest.raises(UserError, match="no instructions"):
        load_instructions(_write(tmp_path, [""]))
    with pytest.raises(UserError, match="not found"):
        load_instructions(tmp_path / "missing.jsonl")


def test_respond_rows():
    stats = FilterStats()
    row = {"instruction": "Name the capital of France.", "input": ""}
    assert respond_rows(row, "  Paris.  ", "stop", stats) == (1, [{**row, "output": "Paris."}], {})
    assert respond_rows(row, "Paris is the capi", "length", stats) == (0, [], {"truncated": 1})
    assert respond_rows(row, "   ", "stop", stats) == (0, [], {"unparsable": 1})
    assert respond_rows(row, None, "stop", stats) == (0, [], {"unparsable": 1})
    # a base teacher that ran on into a new "###" heading: the answer ended there, so it is kept
    assert respond_rows(row, "Paris.\n### Instruction:\nName the", "length", stats)[1][0]["output"] == "Paris."
    assert (stats.responses, stats.parsed, stats.truncated, stats.unparsable) == (5, 2, 1, 2)


def _item(rng, k: int, first: bool) -> tuple[str, dict]:
    """A random item that the structured-output regex accepts (and its parsed row)."""
    alphabet = "abcdefghij XYZ,.:;'()-!?<>/"
    text = lambda n: "".join(rng.choice(alphabet) for _ in range(n)).strip() or "x"
    instruction = "Write " + text(rng.randint(8, 60))
    inp = "<noinput>" if rng.random() < 0.5 else text(rng.randint(1, 80))
    lines = [rng.choice(["42 ", "1990s were ", "x"]) + text(rng.randint(0, 80))]
    lines += [rng.choice(["- ", "* ", "7 days "]) + text(rng.randint(0, 40)) for _ in range(rng.randint(0, 4))]
    head = "" if first else f"\n{k}. Instruction:"
    body = f"{head} {instruction}\n{k}. Input:\n{inp}\n{k}. Output:\n" + "\n".join(lines) + "\n###"
    return body, {"instruction": instruction.strip(), "input": "" if inp == "<noinput>" else inp.strip(),
                  "output": "\n".join(lines).strip()}


def test_structured_output_regex_accepts_only_what_the_parser_reads():
    """Every completion the regex allows parses into exactly its items (no 'unparsable'), and
    the forms that break Alpaca's parser are not allowed."""
    regex = re.compile(si.list_regex())
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, si.NUM_TASKS - 4)
        parts = [_item(rng, k, k == 4) for k in range(4, 4 + n)]
        text = "".join(p for p, _ in parts)
        assert regex.fullmatch(text), text
        stats = si.FilterStats()
        assert si.parse_response(text, "stop", stats) == [row for _, row in parts]
        assert stats.unparsable == 0
    good, _ = _item(rng, 4, True)
    for bad in (good.replace("4. Output:", "4. Answer:"),            # a heading the parser does not know
                good.replace("\n###", "\n5. Oops"),                   # an item that does not end
                good + "\n6. Instruction: skipped five\n6. Input:\n<noinput>\n6. Output:\nx\n###",  # wrong number
                good.replace("\n4. Output:\n", "\n4. Output:\n4. Input: a heading again\n"),  # read as a heading
                good.replace("\n###", "\n5. Instruction: a line that starts an item\n###"),
                " Hi\n4. Input:\n<noinput>\n4. Output:\nx\n###"):     # an instruction of < 8 characters
        assert not regex.fullmatch(bad), bad


def test_the_demos_packaged_instruction_list_is_usable_training_input():
    """The demo answers `packaged:demo_instructions` (respond mode): enough rows for its 300
    training + 30 held-out rows after a sixth is lost to truncation, each passing Alpaca's rule
    filters, none a near-duplicate (ROUGE-L > 0.7) of another, of a seed task or of an evaluation
    item (which the contamination filter would drop, and which would leak the test set)."""
    from replicate.config import Evaluate
    from replicate.generate.contamination import Contamination, eval_items, task_text
    from replicate.generate.dataset import rows_needed

    rows = load_instructions("packaged:demo_instructions")
    assert len(rows) * 5 / 6 >= rows_needed(300, 0.1)
    assert [r for r in rows if rule_violation(r["instruction"])] == []
    evaluation = Contamination(eval_items(Evaluate()))
    assert [r for r in rows if evaluation.near(r)] == []
    seen = RougeDedup([task_text(s.__dict__) for s in load_seed_tasks()])
    assert [r for r in rows if not seen.add_if_novel(task_text(r))] == []


def test_packaged_files_are_named_and_an_unknown_one_is_a_clear_error(tmp_path):
    assert len(load_seed_tasks("packaged:seed_tasks")) == len(load_seed_tasks())
    with pytest.raises(UserError, match=r"^packaged:demo: no such packaged file \(packaged: demo_instructions, "):
        load_instructions("packaged:demo")
