"""lmms-eval glue shared by every medbench task: loading documents, images and prompts.

The task YAMLs name these functions with ``!function``; lmms-eval imports this module only when it loads a
medbench task, so ``import medbench`` stays light.
"""

from __future__ import annotations

from typing import Any

from medbench.data.loading import load_task_docs
from medbench.errors import DataError


def _docs_loader(task: str):
    def process_docs(placeholder: Any):
        # lmms-eval hands over the placeholder split it loaded from the YAML's data file; the real
        # documents come from the source configured for this task (local copy, demo set or hub).
        try:
            return load_task_docs(task)
        except DataError as error:
            # lmms-eval 0.7.3 catches every Exception of a run, prints its traceback and exits 0; SystemExit
            # is not an Exception, so a bad data file ends the run with medbench's one line and status 1.
            raise SystemExit(f"medbench: error: {task}: {error}") from None

    process_docs.__name__ = process_docs.__qualname__ = f"process_docs_{task}"
    process_docs.__doc__ = f"Load the documents of ``{task}`` from its configured source."
    return process_docs


vqa_rad_docs = _docs_loader("medbench_vqa_rad")
slake_docs = _docs_loader("medbench_slake")
pathvqa_docs = _docs_loader("medbench_pathvqa")
mimic_cxr_docs = _docs_loader("medbench_mimic_cxr")
amboss_docs = _docs_loader("medbench_amboss")


def doc_to_visual(doc: dict) -> list:
    """The document's image as an RGB PIL image (a one-element list, as lmms-eval expects)."""
    return [doc["image"].convert("RGB")]


# The blind twins' image: one uniform mid-grey, the same for every document, so it carries no information about
# the document (a per-image mean colour would still tell the modality).
BLIND_GREY = (128, 128, 128)


def doc_to_blind_visual(doc: dict) -> list:
    """A uniform grey image of the document's image size (the ``*_blind`` tasks): same prompt, same image tokens."""
    from PIL import Image

    return [Image.new("RGB", doc["image"].size, BLIND_GREY)]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The prompt: ``pre_prompt + question + post_prompt`` for VQA, the task's fixed ``prompt`` for reports.

    The prompt pieces live in the task YAML (``lmms_eval_specific_kwargs``) so they are recorded in every
    results file and can be overridden per model there.
    """
    kwargs = lmms_eval_specific_kwargs or {}
    if "question" in doc:
        return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"
    return str(kwargs["prompt"])


def total(items: list[float]) -> float:
    """Aggregation for count metrics: the sum of the per-sample values."""
    return float(sum(items))
