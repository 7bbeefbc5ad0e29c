"""Benchmark: the exact ROUGE-L filter on 52,000 instructions vs Alpaca's rouge_score loop.

    .venv/bin/python benchmarks/dedup_speed.py            # 52,000 instructions (~1 min)
    .venv/bin/python benchmarks/dedup_speed.py --n 5000   # quick look

Workload: the package's seed instructions, then N synthetic instructions filtered incrementally
(each checked against every instruction kept so far, as Alpaca does). The instructions come
from a word-level generator over ~50 templates with ~40 slot vocabularies; about 30% are
rewrites of an earlier instruction (a word swapped, dropped, added; a slot changed), so many are
near-duplicates, as real self-instruct output is.

Baseline: the rouge_score loop of Alpaca's generate_instruction.py (pre-tokenised,
`rouge_scorer._score_lcs(new, kept)` for every kept instruction, drop if max F > 0.7), run
single-process on the first --baseline-n candidates. Its decisions are checked against ours and
its time per pair is extrapolated to the pairs the full run would score (sum of kept-so-far).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replicate.generate.dedup import RougeDedup

W = {
    "form": "poem|haiku|short story|limerick|blog post|tweet|product description|cover letter|speech"
            "|news headline|slogan|song chorus|dialogue|essay outline|movie synopsis|riddle|toast|review",
    "topic": "climate change|the ocean|friendship|a rainy day|artificial intelligence|coffee|the moon"
             "|remote work|time management|electric cars|gardening|the Roman Empire|photosynthesis"
             "|social media|healthy eating|a lost dog|space travel|public libraries|recycling|jazz"
             "|the first day of school|volcanoes|honeybees|cryptocurrency|meditation|urban cycling"
             "|a small bakery|renewable energy|the water cycle|online privacy|chess|mountain hiking"
             "|a haunted house|video games|the stock market|migration of birds|street food|rainforests"
             "|teamwork|a job interview|winter holidays|quantum computing|vaccines|black holes|tea"
             "|ancient Egypt|a robot chef|the human brain|wind turbines|a marathon runner|origami"
             "|a city at night|fast fashion|coral reefs|a village election|the printing press|sleep"
             "|a mystery novel|board games|urban gardens|the history of jazz|a summer camp|glaciers"
             "|a talking cat|minimalism|electric guitars|a farmers market|dinosaurs|smartphones",
    "audience": "a five-year-old|a high school student|a busy parent|a software engineer|a retiree"
                "|a first-time manager|a tourist|a nurse|a small business owner|a college freshman",
    "tone": "formal|friendly|humorous|persuasive|neutral|enthusiastic|sarcastic|polite|optimistic|concise",
    "n": "two|three|four|five|six|seven|ten|3|5|10",
    "things": "ideas|names|questions|tips|reasons|examples|slogans|activities|facts|arguments|synonyms"
              "|gift ideas|interview questions|book titles|team names|dinner recipes|blog topics",
    "activity": "saving money|learning a new language|staying focused|sleeping better|running a marathon"
                "|writing a resume|public speaking|studying for exams|reducing stress|cooking at home"
                "|traveling on a budget|starting a podcast|keeping plants alive|negotiating a salary",
    "concept": "inflation|gravity|machine learning|the greenhouse effect|supply and demand|recursion"
               "|natural selection|compound interest|democracy|blockchain|the immune system|entropy"
               "|opportunity cost|plate tectonics|the scientific method|encryption|evolution",
    "doc": "article|paragraph|email|news story|review|essay|passage|report|conversation|text",
    "lang": "French|Spanish|German|Italian|Japanese|Portuguese|Dutch|Swedish|Turkish|Polish",
    "label": "positive or negative|spam or not spam|fact or opinion|formal or informal|true or false"
             "|a question or a statement|sarcastic or sincere|urgent or not urgent|fiction or nonfiction",
    "item": "sentence|tweet|headline|review|email subject|statement|comment|product title|message",
    "shape": "rectangle|circle|triangle|square|cylinder|cube|sphere|trapezoid",
    "quantity": "area|perimeter|volume|surface area|diagonal|circumference",
    "code": "Python|JavaScript|SQL|Java|C++|Rust|Go|Bash",
    "task": "reverses a string|checks whether a number is prime|sorts a list of names|counts vowels"
            "|finds the largest element in an array|removes duplicates from a list|merges two sorted"
            " lists|converts Celsius to Fahrenheit|validates an email address|computes a factorial",
    "person": "Albert Einstein|Marie Curie|Leonardo da Vinci|Ada Lovelace|Nelson Mandela|Isaac Newton"
              "|Frida Kahlo|Charles Darwin|Jane Austen|Mahatma Gandhi|Amelia Earhart|Alan Turing",
    "adj": "short|creative|detailed|funny|simple|catchy|brief|original|clear|vivid|thoughtful",
    "verb": "Write|Compose|Create|Draft|Generate|Come up with|Produce|Craft",
    "explain": "Explain|Describe|Summarize|Outline|Discuss|Clarify",
    "place": "Paris|Tokyo|a small village|the Sahara desert|New York|a space station|an island|Kenya",
    "event": "the French Revolution|the moon landing|the invention of the printing press|World War I"
             "|the fall of the Berlin Wall|the Industrial Revolution|the discovery of penicillin",
    "mod": "Keep it under {words} words.|Use simple language.|Make it rhyme.|Include a call to action."
           "|Use bullet points.|Avoid technical jargon.|Write it in the first person.|Be specific."
           "|Give one example for each.|End with a question.|Use at most {n} sentences."
           "|Make sure {audience} would enjoy it.|Mention {topic} at least once.|Do not use the letter e."
           "|Write in a {tone} style.|Start with a short anecdote about {place}.|Number each item."
           "|Explain your reasoning step by step.|Include a quote from {person}.|Add a title."
           "|The answer should fit on a postcard.|Use the present tense only.|Avoid clichés.",
    "words": "20|30|40|50|60|75|100|120|150|200",
    "clause": "in the style of {person}|set in {place}|for {audience}|with a focus on {topic}"
              "|using examples from {event}|in under {words} words|without mentioning {concept}"
              "|that a {adj} teacher could use|that would make {audience} laugh|in {lang}"
              "|from the perspective of someone living in {place}|that includes {n} {things}",
    "intro": "As a teacher,|For a school newsletter,|In your own words,|Using the input,"
             "|Imagine you work for a {adj} startup.|You are a {tone} assistant.|Pretend it is 1850."
             "|Given the text below,|Based on the information provided,|For a presentation to {audience},"
             "|Assume the reader knows nothing about {concept}.|Think about {place} first.|Quickly,"
             "|If you were {person},|Without using any numbers,|For a podcast episode about {topic},",
}
W = {k: v.split("|") for k, v in W.items()}

TEMPLATES = """{verb} a {adj} {form} about {topic}.
{verb} a {form} about {topic} for {audience}.
{explain} {concept} to {audience}.
{explain} how {concept} works in {n} sentences.
What is the difference between {concept} and {concept}?
How does {topic} affect {topic}?
Why is {concept} important for {audience}?
Give me {n} tips for {activity}.
List {n} {things} related to {topic}.
Suggest {n} {adj} {things} for a party about {topic}.
Classify the following {item} as {label}.
Decide whether the given {item} is {label}.
Is the following {item} {label}? Explain your answer.
Rewrite the given {item} in a {tone} tone.
Rewrite this {doc} so that {audience} can understand it.
Summarize the given {doc} in {n} sentences.
Extract the main idea of the {doc} below.
Find all the names of people mentioned in the {doc}.
Translate the following sentence into {lang}.
Translate the given {item} from English to {lang} and keep the {tone} tone.
Calculate the {quantity} of a {shape} with the given dimensions.
A {shape} has sides of {n} meters. What is its {quantity}?
Write a {code} function that {task}.
Fix the bug in the following {code} code that {task}.
Explain what the following {code} snippet does.
Describe a typical day in {place} from the point of view of {audience}.
Imagine you are {person}. {verb} a {form} about {topic}.
What would {person} think about {topic}?
{explain} the causes and effects of {event}.
Tell me {n} surprising facts about {event}.
Plan a {adj} weekend trip to {place} on a budget.
{verb} an email to {audience} about {topic}.
{verb} a {tone} reply to the customer complaint below.
Brainstorm {n} {things} for a startup working on {topic}.
Compare {topic} and {topic} in a short table.
Identify the logical fallacy in the given argument about {topic}.
Answer the following question about {concept} in one word.
Edit the following {doc} to fix grammar and spelling mistakes.
Convert the given {doc} into a list of bullet points.
Propose a {adj} name for a company that sells {things}.
Create a quiz with {n} questions about {event}.
Generate a {adj} title for an article about {topic}.
Sort the following {things} in alphabetical order.
Given a list of numbers, find the {n} largest ones.
Solve the following math word problem about {activity}.
Predict what will happen next in the {form} below.
Come up with a {tone} motto for {audience}.
How can {audience} get better at {activity}?
Provide {n} arguments for and against {topic}.
Describe the smell, taste and look of {topic} in a {form}.""".splitlines()

SYNONYMS = {"Write": "Compose", "Create": "Make", "short": "brief", "Give": "Provide", "tips": "ideas",
            "Explain": "Describe", "following": "given", "about": "on", "List": "Name", "big": "large",
            "important": "essential", "find": "identify", "simple": "easy", "Rewrite": "Rephrase"}


def synthetic_instructions(n: int, seed: int = 0) -> list[str]:
    """n realistic-looking instructions; ~30% are word-level rewrites of an earlier one."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < 0.3:
            out.append(_rewrite(rng.choice(out[-2000:]), rng))
            continue
        text = rng.choice(TEMPLATES)
        if rng.random() < 0.4:  # a clause inside the core sentence
            end = len(text.rstrip(".?"))
            text = text[:end] + " " + rng.choice(W["clause"]) + text[end:]
        if rng.random() < 0.4:  # context before the core task
            intro = rng.choice(W["intro"])
            text = intro + " " + (text[0].lower() + text[1:] if intro.endswith(",") else text)
        if rng.random() < 0.5:  # and constraints after it
            text += " " + rng.choice(W["mod"])
        if rng.random() < 0.3:
            text += " " + rng.choice(W["mod"])
        out.append(_fill(text, rng))
    return out


def _fill(text: str, rng: random.Random) -> str:
    while "{" in text:
        start = text.index("{")
        end = text.index("}", start)
        text = text[:start] + rng.choice(W[text[start + 1:end]]) + text[end + 1:]
    return text


def _rewrite(text: str, rng: random.Random) -> str:
    words = text.split()
    for _ in range(rng.choice((1, 1, 2))):
        op = rng.random()
        i = rng.randrange(len(words))
        if op < 0.3 and words[i] in SYNONYMS:
            words[i] = SYNONYMS[words[i]]
        elif op < 0.5 and len(words) > 5:
            del words[i]
        elif op < 0.7 and i > 0:
            words.insert(i, rng.choice(["also", "please", "really", "now", "then", "carefully"]))
        else:
            slot = rng.choice(["topic", "audience", "n", "things", "concept", "place"])
            words[i:i + 1] = rng.choice(W[slot]).split()
    return " ".join(words)


def rouge_score_loop(seeds: list[str], candidates: list[str]) -> tuple[list[bool], int, float]:
    """Alpaca's loop (single process): decisions, pairs scored, seconds."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept = [scorer._tokenizer.tokenize(s) for s in seeds]
    decisions, pairs = [], 0
    start = time.perf_counter()
    for text in candidates:
        new = scorer._tokenizer.tokenize(text)
        scores = [rouge_scorer._score_lcs(new, old).fmeasure for old in kept]
        pairs += len(kept)
        keep = max(scores, default=0.0) <= 0.7
        decisions.append(keep)
        if keep:
            kept.append(new)
    return decisions, pairs, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=52_000, help="synthetic instructions to filter")
    parser.add_argument("--baseline-n", type=int, default=600, help="candidates for the rouge_score loop")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from replicate.generate.selfinstruct import load_seed_tasks
    from replicate.meter import device_name

    load_before = os.getloadavg()[0]
    seeds = [task.instruction for task in load_seed_tasks()]
    candidates = synthetic_instructions(args.n, args.seed)

    dedup = RougeDedup(seeds)
    decisions, pairs_full = [], 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for text in candidates:
        pairs_full += len(dedup)  # the pairs the naive loop would score for this candidate
        decisions.append(dedup.add_if_novel(text))
    fast_s, fast_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    kept = sum(decisions)

    sample = candidates[: args.baseline_n]
    base_decisions, base_pairs, base_s = rouge_score_loop(seeds, sample)
    mismatches = sum(a != b for a, b in zip(base_decisions, decisions))
    per_pair_s = base_s / base_pairs
    extrapolated_s = per_pair_s * pairs_full

    print(f"machine: {device_name()[0]}; load average before/after: "
          f"{load_before:.2f} / {os.getloadavg()[0]:.2f} (other processes share the cores)")
    print(f"seeds {len(seeds)}, candidates {len(candidates):,}, kept {kept:,} "
          f"({kept / len(candidates):.0%}), dropped as near-duplicates {len(candidates) - kept:,}")
    print(f"exact LCS computations: {dedup.lcs_computed:,} of {pairs_full:,} pairs "
          f"({dedup.lcs_computed / max(pairs_full, 1):.2e})")
    print(f"decisions identical to rouge_score on the first {len(sample):,} candidates: "
          f"{mismatches == 0} ({mismatches} mismatches)\n")
    print("| method | candidates | pairs | seconds | speed-up |")
    print("|---|---:|---:|---:|---:|")
    print(f"| rouge_score loop (measured) | {len(sample):,} | {base_pairs:,} | {base_s:.1f} | |")
    print(f"| rouge_score loop (extrapolated: {per_pair_s * 1e6:.1f} us/pair) | {len(candidates):,} "
          f"| {pairs_full:,} | {extrapolated_s:,.0f} | 1.0x |")
    print(f"| RougeDedup (measured; CPU {fast_cpu_s:.1f} s) | {len(candidates):,} | {pairs_full:,} "
          f"| {fast_s:.1f} | {extrapolated_s / fast_s:,.0f}x |")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
