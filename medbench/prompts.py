"""One chat-message builder for evaluation (``medbench_hf``) and preference training (``medbench train``).

A model trained on one prompt and evaluated on another measures the difference, not the training. Both sides
therefore build their messages here: the images first, then the question, with an optional system message in
front, and render them with the processor's chat template. ``tests/medbench/test_prompts.py`` checks that the
evaluation and training prompts are byte-identical for the same question and backbone.

The chat templates of the study's two backbones also live here, so that ``medbench convert`` writes them into
the converted checkpoints and every loader (``medbench_hf``, lmms-eval's ``llava_hf``, vLLM, the trainer) sees
the same prompt:

* ``llava_med``: LLaVA-Med v1.5's evaluation conversation (``conv_mistral_instruct`` in its ``conversation.py``,
  ``llava/eval/model_vqa.py`` with ``--conv-mode mistral_instruct``): ``<s>[INST] <image>\\n{question} [/INST]``,
  an answer continuing as `` {answer} </s>``. A system prompt, when given, goes inside the first ``[INST]`` as
  ``<<SYS>>\\n{system}\\n<</SYS>>\\n\\n`` (the original's ``wrap_sys``); LLaVA-Med's own system prompt is empty.
* ``huatuogpt_vision``: HuatuoGPT-Vision's own format (``cli.py``, ``preprocess_huatuo``):
  ``<|user|>\\n<image>\\n{question}\\n<|assistant|>\\n``, an answer continuing as ``{answer} \\n``. Its code has no
  system prompt; one given here is put on a line before ``<|user|>``.

Both templates accept message content as a string (what lmms-eval's ``llava_hf`` sends: ``"<image>\\n{question}"``)
or as a list of ``{"type": "image"}`` / ``{"type": "text"}`` parts, and render the same text for both.
"""

from __future__ import annotations

from typing import Any

from medbench.errors import MedbenchError

# Jinja shared by both templates: the text of a message, images first as `IMAGE\n`, whatever the content shape.
_CONTENT_MACRO = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}"
    "{%- for part in content if part['type'] == 'image' -%}{{- '__IMAGE__\\n' -}}{%- endfor -%}"
    "{%- for part in content if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)

_TEMPLATES = {
    # conv_mistral_instruct: SeparatorStyle.LLAMA_2 with system "", sep "", sep2 "</s>"; the tokenizer's BOS is
    # part of the template so that every caller, whether it adds special tokens or not, gets exactly one.
    "llava_med": _CONTENT_MACRO
    + "{{- bos_token -}}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = render(message['content']) -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '[INST] ' -}}"
    "{%- if ns.system -%}{{- '<<SYS>>\\n' + ns.system + '\\n<</SYS>>\\n\\n' -}}{%- set ns.system = '' -%}{%- endif -%}"
    "{{- render(message['content']) | trim -}}{{- ' [/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- ' ' + (render(message['content']) | trim) + ' ' + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}",
    # HuatuoGPT-Vision preprocess_huatuo: f"<|user|>\n{h}\n" then f"<|assistant|>\n{g} \n".
    "huatuogpt_vision": _CONTENT_MACRO
    + "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- render(message['content']) + '\\n' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '<|user|>\\n' + (render(message['content']) | trim) + '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- '<|assistant|>\\n' + render(message['content']) + ' \\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}",
}

CHAT_STYLES: tuple[str, ...] = tuple(_TEMPLATES)


def chat_template(style: str, image_markup: str = "<image>") -> str:
    """The Jinja chat template of one of the study's conversation styles.

    Args:
        style: One of :data:`CHAT_STYLES`.
        image_markup: Text standing for one image (``<im_start><image><im_end>`` for ``mm_use_im_start_end``).

    Raises:
        MedbenchError: unknown style.
    """
    if style not in _TEMPLATES:
        raise MedbenchError(f"unknown chat style {style!r}; choose from {', '.join(CHAT_STYLES)}")
    return _TEMPLATES[style].replace("__IMAGE__", image_markup)


def build_messages(
    question: str,
    n_images: int = 1,
    system_prompt: str | None = None,
    answer: str | None = None,
) -> list[dict[str, Any]]:
    """Chat messages for one question: optional system message, the images then the question, optional answer.

    Args:
        question: The user's text.
        n_images: How many images go before the question.
        system_prompt: Optional system message.
        answer: When given, an assistant message with this text ends the conversation.
    """
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": question})
    messages.append({"role": "user", "content": content})
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def render_prompt(processor: Any, question: str, n_images: int = 1, system_prompt: str | None = None) -> str:
    """The chat-formatted prompt text a model is asked to continue (with the generation prompt)."""
    messages = build_messages(question, n_images, system_prompt)
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_prompt_and_answers(
    processor: Any,
    question: str,
    answers: dict[str, str],
    system_prompt: str | None = None,
    n_images: int = 1,
) -> tuple[str, dict[str, str]]:
    """Render the prompt (exactly as :func:`render_prompt` does) and each answer's continuation text.

    The answer text is what the full conversation adds after the prompt, so it carries the template's
    end-of-turn markup. Where a template renders the prompt differently inside the full conversation, the prompt
    is cut back to the common prefix (as TRL does).

    Returns:
        ``(prompt text, {name: continuation text})``.
    """
    prompt = render_prompt(processor, question, n_images, system_prompt)
    full = {
        name: processor.apply_chat_template(build_messages(question, n_images, system_prompt, text), tokenize=False)
        for name, text in answers.items()
    }
    for text in full.values():
        common = 0
        for a, b in zip(prompt, text, strict=False):
            if a != b:
                break
            common += 1
        prompt = prompt[:common]
    return prompt, {name: text[len(prompt) :] for name, text in full.items()}


def needs_special_tokens(tokenizer: Any, prompt: str) -> bool:
    """Whether tokenizing a rendered prompt should add the tokenizer's special tokens.

    A template that writes the BOS itself must not get a second one; one that does not relies on the tokenizer.
    """
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and prompt.startswith(bos))
