"""Capability probes: is a short reply right? (lenient and strict), what would chance score,
and did the student learn the teacher's answers or its mistakes.

    accuracy (lenient)   the accepted answer anywhere in the reply's first paragraph (at most 40
                         tokens): "Sure! The capital is Paris." is right
    strict_match         the reply's first sentence IS the answer: a format score, reported apart

Both normalise SQuAD-style (lowercase, no accents, punctuation or articles), numbers by value
(1,000 = 1000, 350.0 = 350, "seven" = 7) and units after a number by symbol (5 kilometres = 5 km). Rules that stop a
model from collecting credit without knowing: a numeric answer must be the reply's last number,
or be followed only by numbers the probe itself states ("6000 grams (6 kg)"); naming a rejected
alternative ("positive or negative") is wrong; text copied from the probe's input (runs of >= 5
tokens) does not count as answering (docs/evaluation.md#capability).
"""
from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"-?\d+(?:\.\d+)?|[a-z0-9]+")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_ARTICLES = {"a", "an", "the"}
COPY_RUN = 5  # >= 5 consecutive tokens of the probe's input: copied, not answered
REPLY_TOKENS = 40  # the lenient span: the first paragraph, at most this many normalised tokens
_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")
_TENS = ("thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(_ONES)} | {w: str(10 * i) for i, w in enumerate(_TENS, start=3)}
_UNITS = {  # spelled-out unit -> the symbol, so "84 inches" and "84 in" compare equal
    "km": ("kilometer", "kilometers", "kilometre", "kilometres", "kms"),
    "m": ("meter", "meters", "metre", "metres"),
    "cm": ("centimeter", "centimeters", "centimetre", "centimetres"),
    "mm": ("millimeter", "millimeters", "millimetre", "millimetres"),
    "kg": ("kilogram", "kilograms", "kilo", "kilos", "kgs"),
    "g": ("gram", "grams", "gr"),
    "lb": ("pound", "pounds", "lbs"),
    "oz": ("ounce", "ounces"),
    "ft": ("foot", "feet"),
    "in": ("inch", "inches"),
    "mi": ("mile", "miles"),
    "l": ("liter", "liters", "litre", "litres"),
    "ml": ("milliliter", "milliliters", "millilitre", "millilitres"),
    "h": ("hour", "hours", "hr", "hrs"),
    "min": ("minute", "minutes", "mins"),
    "s": ("second", "seconds", "sec", "secs"),
    "percent": ("pct",),
}
_UNIT_OF = {w: sym for sym, words in _UNITS.items() for w in words}


def answer_tokens(text: str) -> list[str]:
    """Normalised tokens: lowercase ASCII, no punctuation or articles, numbers by value, units by symbol."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text).replace("%", " percent ")
    out: list[str] = []
    for tok in _WORD.findall(text):
        if tok in _ARTICLES:
            continue
        tok = _NUMBER_WORDS.get(tok, tok)
        if out and _NUMBER.match(out[-1]):  # a unit only after a number: "6 feet", not "the word foot"
            tok = _UNIT_OF.get(tok, tok)
        if _NUMBER.match(tok) and "." in tok:
            tok = tok.rstrip("0").rstrip(".")
        out.append(tok)
    return out


def is_number(tok: str) -> bool:
    return bool(_NUMBER.match(tok))


def _contains(hay: list, needle: list) -> bool:
    n = len(needle)
    return n > 0 and any(hay[i : i + n] == needle for i in range(len(hay) - n + 1))


def first_sentence(output: str) -> str:
    """The first non-empty line, up to its first sentence end ('. ', '! ', '? '; not a decimal point)."""
    line = next((ln.strip() for ln in output.splitlines() if ln.strip()), "")
    m = re.search(r"[.!?](\s|$)", line)
    return line[: m.start()] if m and m.start() > 0 else line


def reply_span(output: str, probe: dict) -> list[str | None]:
    """The lenient span: the first paragraph's first REPLY_TOKENS normalised tokens, with every
    token that belongs to a >= COPY_RUN-token run copied from the probe's input masked (None)."""
    para = re.split(r"\n\s*\n", output.strip(), maxsplit=1)[0] if output.strip() else ""
    span: list[str | None] = answer_tokens(para)[:REPLY_TOKENS]
    source = answer_tokens(probe.get("input", ""))
    if len(source) >= COPY_RUN:
        grams = {tuple(source[i : i + COPY_RUN]) for i in range(len(source) - COPY_RUN + 1)}
        copied = set()
        for i in range(len(span) - COPY_RUN + 1):
            if tuple(span[i : i + COPY_RUN]) in grams:
                copied.update(range(i, i + COPY_RUN))
        span = [None if i in copied else t for i, t in enumerate(span)]
    return span


def _segments(span: list[str | None]) -> list[list[str]]:
    out, cur = [], []
    for t in span:
        if t is None:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(t)
    return out + ([cur] if cur else [])


def probe_correct(output: str, probe: dict) -> bool:
    """Lenient exact-answer match (module docstring)."""
    span = reply_span(output, probe)
    segments = _segments(span)
    words = [t for t in span if t is not None]
    if not words:
        return False
    for bad in probe.get("reject", ()):
        if any(_contains(seg, answer_tokens(bad)) for seg in segments):
            return False
    stated = {t for t in answer_tokens(f"{probe.get('instruction', '')} {probe.get('input', '')}") if is_number(t)}
    numbers = [t for t in words if is_number(t)]
    for ans in probe["answers"]:
        a = answer_tokens(ans)
        if len(a) == 1 and is_number(a[0]):
            # the answer, then nothing but numbers the probe stated ("6000 grams (6 kg)")
            for i, t in enumerate(numbers):
                if t == a[0] and all(u in stated or u == a[0] for u in numbers[i + 1:]):
                    return True
        elif any(_contains(seg, a) for seg in segments):
            return True
    return False


def probe_strict(output: str, probe: dict) -> bool:
    """Strict exact match: the normalised first sentence equals an accepted answer."""
    span = answer_tokens(first_sentence(output))
    return any(span == answer_tokens(a) for a in probe["answers"])


def given_answer(output: str, probe: dict) -> str:
    """The answer a reply gives, for comparing two models' (wrong) answers: the last number for a
    numeric probe, else the normalised first sentence; "" when there is none."""
    if all(len(a) == 1 and is_number(a[0]) for a in (answer_tokens(x) for x in probe["answers"])):
        numbers = [t for t in reply_span(output, probe) if t is not None and is_number(t)]
        return numbers[-1] if numbers else ""
    return " ".join(answer_tokens(first_sentence(output)))


# ------------------------------------------------------------------ chance floors


def floors(probes: list[dict]) -> dict:
    """What a model scores without knowing anything, on these probes:

    best_constant   the best single reply given to every probe (each accepted answer of the set is
                    tried as that reply): the majority-label baseline
    random_label    the expected accuracy of picking uniformly among a classification probe's
                    labels (its answers' first alias and its rejects); 0 for open answers"""
    if not probes:
        return {"best_constant": None, "best_constant_reply": None, "random_label": None}
    candidates = sorted({p["answers"][0] for p in probes})
    scored = [(sum(probe_correct(c, p) for p in probes) / len(probes), c) for c in candidates]
    best, reply = max(scored, key=lambda s: (s[0], s[1]))
    labels = [1 / (1 + len(p["reject"])) if p.get("reject") else 0.0 for p in probes]
    return {"best_constant": best, "best_constant_reply": reply, "random_label": sum(labels) / len(probes)}
