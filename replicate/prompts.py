"""How an instruction is put to a model, in the two forms every stage shares.

Training, generation and evaluation must format prompts identically, so all of them import these:

    alpaca_prompt("Name a colour.")   -> "Below is an instruction ... ### Response:"
        the Alpaca training template (stanford_alpaca `train.py` PROMPT_DICT, exact strings);
        completion = output + EOS, appended directly after "### Response:" (no newline)
    user_message("Sum:", "2 3")       -> "Sum:\n\n2 3"
        what a chat model sees as the user turn (the tokenizer's chat template does the rest)
    self_instruct_prompt(seeds)       -> requirements, 3 numbered examples, "4. Instruction:"
        the generate stage's self-instruct prompt; with `answer=(instruction, input)` it ends at
        "4. Output:" instead, so the teacher answers that task exactly as it wrote its training
        rows (the evaluation's reference in the training format)
    continue_as_assistant(prompt)     -> [user: requirements, assistant: the list so far]
        the same prompt for a chat teacher (continue_final_message)
"""
from __future__ import annotations

import re
from collections.abc import Sequence

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
ALPACA_STOP = ("\n### Instruction:", "\n### Input:", "\n### Response:")
"""Where an answer to the Alpaca prompt ends for a model that did not learn to stop (a base model
writes the template's next section, then answers that): the template's own headers, not any "###",
which a teacher's markdown answer may hold as a heading."""


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


# Our wording of Alpaca's requirements (prompt.txt): diverse verbs, phrasing and task types; doable
# by a text model; English; 1-2 sentences; a realistic input <= 100 words or <noinput>; output < 100 words.
SELF_INSTRUCT_HEADER = """\
You are asked to write {num_tasks} varied task instructions. A language model will be asked to \
carry out each one, and its answers will be judged.

Requirements:
1. Vary the verbs: do not start two instructions with the same verb.
2. Vary the phrasing as well: mix direct commands with questions.
3. Vary the kind of task: open-ended writing, classification, editing, rewriting, extraction, \
reasoning, math, coding, brainstorming, advice and more.
4. Every task must be possible for a text-only model: nothing to see or hear as output, and no \
actions in the world such as setting an alarm or sending a message.
5. Write in English.
6. Keep each instruction to one or two sentences, either a command or a question.
7. When a task needs an input, give a concrete, realistic one (not a placeholder) of at most 100 \
words. When it needs none, as for a general knowledge question, write <noinput> as the input.
8. Give a fitting output for the instruction and input, in fewer than 100 words.

List of {num_tasks} tasks:"""
SELF_INSTRUCT_STOP = ("###", "\n5. Instruction")  # where an answer to item 4 ends


def self_instruct_prompt(seeds: Sequence, num_tasks: int = 20, answer: tuple[str, str] | None = None) -> str:
    """The completion prompt: requirements, then the seeds (anything with .instruction, .input,
    .output) as ###-separated numbered blocks, ending at the next item's "N. Instruction:" for the
    teacher to continue; or, given answer=(instruction, input), at that item's "N. Output:"."""
    prompt = SELF_INSTRUCT_HEADER.format(num_tasks=num_tasks) + "\n"
    for number, task in enumerate(seeds, start=1):
        prompt += "###\n" + _item(number, task.instruction, task.input) + f"\n{task.output}\n"
    nxt = len(seeds) + 1
    if answer is None:
        return prompt + f"###\n{nxt}. Instruction:"
    return prompt + "###\n" + _item(nxt, *answer)


def _item(number: int, instruction: str, input: str) -> str:
    instruction = re.sub(r"\s+", " ", instruction).strip().rstrip(":")
    return f"{number}. Instruction: {instruction}\n{number}. Input:\n{input or '<noinput>'}\n{number}. Output:"


def continue_as_assistant(prompt: str) -> list[dict]:
    """The self-instruct prompt for a chat teacher: the requirements as the user's message, the
    numbered list so far as the start of the assistant's reply. Apply the chat template with
    continue_final_message=True, add_generation_prompt=False (vLLM `LLM.chat` and `vllm serve`
    take both), so the teacher continues the list. Base teachers get `prompt` as is."""
    split = prompt.index("\n###\n")
    return [{"role": "user", "content": prompt[:split]},
            {"role": "assistant", "content": prompt[split + 1:]}]
