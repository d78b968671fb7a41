"""Reasoning-format answers: ``<think>...</think>`` (or ``<thinking>...</thinking>``) and then the answer.

Reasoning models, and GRPO models trained to reason first, write their chain of thought in a tagged block before the
answer. Everything that scores an answer reads only what follows: the task scorers (through
:func:`medbench.lmms.failures.unless_failed`, so every medbench task) and the GRPO rewards (:mod:`medbench.rewards`)
call :func:`strip_reasoning`, the one function for it.

The rule is lmms-eval 0.7's (``lmms_eval.api.reasoning.strip_reasoning_tags``, applied by its command line before a
task's ``process_results``, and by its ``StripThinkingFilter`` with these same tag pairs), so a sample scores the same
whether lmms-eval stripped it first or not:

* every complete ``<think>...</think>`` block is removed (tags are case-sensitive);
* when only the closing tag is present (chat templates that prefill ``<think>`` in the prompt), the answer is what
  follows the last closing tag;
* an opening tag that is never closed is left as it is (the answer never came; it scores as written);
* the result is stripped of surrounding whitespace. Text without any tag is returned unchanged.
"""

from __future__ import annotations

REASONING_TAGS: tuple[tuple[str, str], ...] = (("<think>", "</think>"), ("<thinking>", "</thinking>"))


def strip_reasoning(text: str) -> str:
    """The answer part of a reasoning-format completion (see the module docstring for the rule).

    Args:
        text: A model's output.

    Returns:
        ``text`` without its reasoning blocks; ``text`` itself when it holds no reasoning tag.
    """
    if not any(opening in text or closing in text for opening, closing in REASONING_TAGS):
        return text
    result = text
    for opening, closing in REASONING_TAGS:
        while True:
            start = result.find(opening)
            end = result.find(closing, start) if start != -1 else -1
            if start == -1 or end == -1:
                break
            result = result[:start] + result[end + len(closing) :]
        if closing in result and opening not in result:
            result = result.rsplit(closing, 1)[-1]
    return result.strip()
