"""Prompt templates: the official Alpaca-style templates (the only copy in the project) and a
multi-turn chat template built on them.

The official demo is single turn. A chat here continues the same format: every earlier
question/answer pair stays in the prompt and the new question follows as another
``### Instruction:`` block, so a one-turn chat is exactly the official prompt::

    <header>\\n\\n### Instruction:\\n{q1}\\n\\n### Response:{a1}\\n\\n### Instruction:\\n{q2}\\n\\n### Response:

When the conversation no longer fits the context, the oldest turns are dropped (the caller
is told how many) and never the question being asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .errors import InputError

HEADER_NO_INPUT = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
HEADER_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.")
PROMPT_NO_INPUT = HEADER_NO_INPUT + "\n\n### Instruction:\n{instruction}\n\n### Response:"
PROMPT_INPUT = HEADER_INPUT + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"

#: The pre-training instruction (stage 1 image-caption data).
CAPTION_INSTRUCTION = "Generate caption of this image"


def format_prompt(instruction: str, input: str | None = None) -> str:
    """The official ``format_prompt``: the input template when ``input`` is neither None nor ''."""
    if input is None or input == "":
        return PROMPT_NO_INPUT.format(instruction=instruction)
    return PROMPT_INPUT.format(instruction=instruction, input=input)


@dataclass
class Turn:
    question: str
    answer: str | None = None  # None for the turn being answered


def chat_prompt(turns: Sequence[Turn], context: str | None = None) -> str:
    """The prompt of a conversation whose last turn has no answer yet. ``context`` is the
    optional official "### Input:" text, attached to the first turn."""
    if not turns or turns[-1].answer is not None:
        raise ValueError("the last turn must be the question to answer")
    text = format_prompt(turns[0].question, context)
    for turn_index, turn in enumerate(turns):
        if turn_index > 0:
            text += f"\n\n### Instruction:\n{turn.question}\n\n### Response:"
        if turn.answer is not None:
            text += turn.answer
    return text


def validate_question(question: str) -> str:
    if not isinstance(question, str):
        raise InputError("question", f"expected text, got {type(question).__name__}", "a non-empty string")
    if not question.strip():
        raise InputError("question", "the question is empty", "a non-empty question")
    return question


def too_long(needed: int, budget: int) -> InputError:
    """The error for a prompt of ``needed`` tokens where ``budget`` fit beside the answer."""
    return InputError("question", f"the question is too long: its prompt needs {needed} tokens but at most "
                      f"{budget} fit beside the answer", "a shorter question, or fewer answer tokens")


def fit_chat(turns: Sequence[Turn], encode, budget: int, context: str | None = None) -> tuple[list[int], int]:
    """Token ids of the longest suffix of ``turns`` whose prompt fits ``budget`` tokens, and the
    number of dropped (oldest) turns. ``encode(text) -> ids`` adds BOS. Raises InputError when
    even the question alone does not fit."""
    validate_question(turns[-1].question)
    for dropped in range(len(turns)):
        kept = turns[dropped:]
        ids = encode(chat_prompt(kept, context if dropped == 0 else None))
        if len(ids) <= budget:
            return ids, dropped
    raise too_long(len(ids), budget)
