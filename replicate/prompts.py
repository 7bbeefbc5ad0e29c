"""How an instruction is put to a model, in the two forms every stage shares.

Training, generation and evaluation must format prompts identically, so all of them import these:

    alpaca_prompt("Name a colour.")   -> "Below is an instruction ... ### Response:"
        the Alpaca training template (stanford_alpaca `train.py` PROMPT_DICT, exact strings);
        completion = output + EOS, appended directly after "### Response:" (no newline)
    user_message("Sum:", "2 3")       -> "Sum:\n\n2 3"
        what a chat model sees as the user turn (the tokenizer's chat template does the rest)
"""
from __future__ import annotations

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
RESPONSE_MARKER = "### Response:"
"""The prompt ends here; a model that learned the format answers after it and then stops."""


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The prompt the student sees, in training and at evaluation (base and student alike)."""
    if input and input.strip():
        return PROMPT_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def prompt_completion(row: dict) -> tuple[str, str]:
    """An Alpaca row -> (prompt, completion). The EOS token is added at the token level by the caller."""
    return alpaca_prompt(row["instruction"], row.get("input") or ""), row["output"]


def user_message(instruction: str, input: str = "") -> str:
    """What a chat model sees as the user turn: the instruction, then the input after a blank line."""
    return f"{instruction}\n\n{input}" if input and input.strip() else instruction
