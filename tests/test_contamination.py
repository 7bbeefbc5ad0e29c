"""Contamination: the evaluation sets stay clear of the seed tasks, and generated training rows
too close to an evaluation item are dropped and counted (ROUGE-L F > 0.7, Alpaca's filter test)."""
from __future__ import annotations

import json

from replicate.config import Evaluate, Generate, Pipeline, Student, Teacher
from replicate.engines import Completion
from replicate.evaluate.items import INSTRUCTIONS, PROBES, read_rows
from replicate.generate.contamination import Contamination, eval_items, task_text
from replicate.generate.modes import Respond
from replicate.generate.selfinstruct import Filters, load_seed_tasks
from replicate.rouge import rouge_l_f


def test_eval_sets_are_far_from_every_seed_task():
    """No open instruction or probe repeats a seed task: the highest ROUGE-L between an eval item
    and a seed (instruction alone, and instruction + input) stays below 0.65, under the 0.7 filter."""
    seeds = load_seed_tasks()
    rows = read_rows(INSTRUCTIONS, ("instruction",)) + read_rows(PROBES, ("instruction",))
    worst = 0.0
    for r in rows:
        for s in seeds:
            seed = {"instruction": s.instruction, "input": s.input}
            worst = max(worst, rouge_l_f(task_text(r), task_text(seed)), rouge_l_f(r["instruction"], s.instruction))
    assert worst < 0.65


def test_no_probe_is_a_seed_task_with_its_answer():
    """A probe asking a seed's question (its input word, or its no-input question) with the seed's
    answer would be answered from the prompt the teacher saw, not from capability."""
    seeds = load_seed_tasks()
    for p in read_rows(PROBES, ("instruction", "answers")):
        text = task_text(p).lower()
        for s in seeds:
            if s.output.strip().rstrip(".").lower() not in {a.lower() for a in p["answers"]}:
                continue
            same_question = s.input.strip().lower() in text if s.input.strip() else \
                rouge_l_f(task_text(p), s.instruction) > 0.4
            assert not same_question, (p["id"], s.id)


def test_filters_drop_rows_near_an_eval_item_and_count_them():
    items = eval_items(Evaluate())
    assert len(items) == len(read_rows(INSTRUCTIONS, ("instruction",))) + len(read_rows(PROBES, ("instruction",)))
    probe = read_rows(PROBES, ("instruction",))[0]  # "What is the capital of France? ..."
    filters = Filters(load_seed_tasks(), eval_items=items)
    rows = [
        {"instruction": probe["instruction"], "input": "", "output": "Paris"},  # the item itself
        {"instruction": probe["instruction"].replace("France", "Portugal"), "input": "", "output": "Lisbon"},
        # the sentiment probes' instruction with another review: the same kind of task, not the item
        {"instruction": "Is the following review positive or negative? Answer with one word.",
         "input": "Absolutely loved this little café: friendly staff, great coffee, cosy chairs.", "output": "positive"},
        {"instruction": "Describe the life cycle of a frog in four short steps.", "input": "", "output": "Egg, ..."},
    ]
    kept, dropped = filters.apply(rows)
    assert dropped == {"contaminated": 2}
    assert [r["output"] for r in kept] == ["positive", "Egg, ..."]
    assert filters.stats.contaminated == 2 and filters.stats.kept == 2


def test_contamination_uses_the_configured_eval_files(tmp_path):
    ins, probes = tmp_path / "ins.jsonl", tmp_path / "probes.jsonl"
    ins.write_text(json.dumps({"instruction": "Translate the sentence into French.", "input": "Good morning."}) + "\n")
    probes.write_text("")
    c = Contamination(eval_items(Evaluate(instructions_file=str(ins), probes_file=str(probes))))
    assert c.near({"instruction": "Translate the sentence into French.", "input": "Good morning!"})
    assert not c.near({"instruction": "Translate the sentence into French.",
                       "input": "The library opens at nine and closes at five on weekdays."})


def test_respond_mode_drops_an_answer_to_an_eval_item(tmp_path):
    probe = read_rows(PROBES, ("instruction",))[1]
    path = tmp_path / "instructions.jsonl"
    path.write_text(json.dumps({"instruction": probe["instruction"]}) + "\n"
                    + json.dumps({"instruction": "Name a fruit that is yellow when ripe."}) + "\n")
    cfg = Pipeline(name="t", teacher=Teacher(model="x"), student=Student(model="y"),
                   generate=Generate(mode="respond", instructions_file=str(path)))
    mode = Respond(cfg)

    def done(i: int, text: str) -> Completion:
        return Completion(f"rs-{i}", text, "stop", 10, 3, 0.1)

    assert mode.rows(0, done(0, "Tokyo")) == (1, [], {"contaminated": 1})
    parsed, kept, dropped = mode.rows(1, done(1, "A banana."))
    assert parsed == 1 and kept[0]["output"] == "A banana." and dropped == {}
