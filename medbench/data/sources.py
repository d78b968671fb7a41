"""Where each medbench task gets its data from.

Every task reads, in this order of precedence:

1. ``MEDBENCH_<TASK>`` (e.g. ``MEDBENCH_VQA_RAD``): a local copy, given as a JSONL file in the medbench
   schema (see ``docs/data.md``), a folder holding ``test.jsonl``, a folder written by
   ``datasets.Dataset.save_to_disk`` or a downloaded hub snapshot (parquet files); or the word ``demo``.
   Image paths in a JSONL file are relative to ``MEDBENCH_<TASK>_IMAGES`` when set, else to the JSONL's folder.
2. ``MEDBENCH_DATA=demo``: the small demo set shipped inside the package (real images from PyPI packages,
   questions and reports written for medbench).
3. The public Hugging Face hub dataset, for the three public VQA tasks. The licensed tasks (MIMIC-CXR,
   AMBOSS) have no public source and stop with a message saying what to download and which variable to set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

TaskKind = Literal["vqa", "report"]


@dataclass(frozen=True)
class TaskSource:
    """The data source of one task.

    Attributes:
        task: The lmms-eval task name.
        kind: ``"vqa"`` (question + short answer) or ``"report"`` (long-form text about the image).
        title: The dataset's name for humans.
        env_var: The variable that points the task at a local copy.
        demo_file: The demo JSONL file (inside ``medbench/data/demo``) used with ``MEDBENCH_DATA=demo``.
        hub_id: The public Hugging Face dataset, if there is one.
        hub_split: The split of ``hub_id`` that is evaluated.
        hub_revision: The hub commit the task is pinned to (override with ``MEDBENCH_<TASK>_REVISION``);
            None where no commit has been verified yet (the default branch is read and recorded as such).
        expected_rows: The number of evaluated rows in the full public split (a sanity check).
        access: How to obtain the data when it is not public.
        blind_of: For an image-blind twin (``medbench_vqa_rad_blind``), the task whose data it reads.
    """

    task: str
    kind: TaskKind
    title: str
    env_var: str
    demo_file: str
    hub_id: str | None = None
    hub_split: str | None = None
    hub_revision: str | None = None
    expected_rows: int | None = None
    access: str = ""
    blind_of: str | None = None

    @property
    def images_env_var(self) -> str:
        return f"{self.env_var}_IMAGES"

    @property
    def revision_env_var(self) -> str:
        return f"{self.env_var}_REVISION"

    @property
    def licensed(self) -> bool:
        return self.hub_id is None


SOURCES: dict[str, TaskSource] = {
    source.task: source
    for source in (
        TaskSource(
            task="medbench_vqa_rad",
            kind="vqa",
            title="VQA-RAD",
            env_var="MEDBENCH_VQA_RAD",
            demo_file="vqa.jsonl",
            hub_id="flaviagiammarino/vqa-rad",
            hub_split="test",
            # the commit that completed the parquet upload; later commits touch only README and scripts/
            hub_revision="0be11a5dbdd87e29586d0c9028153cb4f44dc877",
            expected_rows=451,
        ),
        TaskSource(
            task="medbench_slake",
            kind="vqa",
            title="SLAKE (English)",
            env_var="MEDBENCH_SLAKE",
            demo_file="vqa.jsonl",
            hub_id="BoKelvin/SLAKE",
            hub_split="test",
            hub_revision="a9083ce6c34ac3ffb17671a605962924d8a8f9e9",
            expected_rows=1061,
        ),
        TaskSource(
            task="medbench_pathvqa",
            kind="vqa",
            title="PathVQA",
            env_var="MEDBENCH_PATHVQA",
            demo_file="vqa.jsonl",
            hub_id="flaviagiammarino/path-vqa",
            hub_split="test",
            expected_rows=6719,
        ),
        TaskSource(
            task="medbench_mimic_cxr",
            kind="report",
            title="MIMIC-CXR-JPG (findings)",
            env_var="MEDBENCH_MIMIC_CXR",
            demo_file="reports.jsonl",
            access=(
                "MIMIC-CXR-JPG needs credentialed PhysioNet access (physionet.org/content/mimic-cxr-jpg); "
                "write a findings JSONL (id, image, reference) and set MEDBENCH_MIMIC_CXR=/path/to/findings.jsonl "
                "and MEDBENCH_MIMIC_CXR_IMAGES=/path/to/mimic-cxr-jpg"
            ),
        ),
        TaskSource(
            task="medbench_amboss",
            kind="report",
            title="AMBOSS image descriptions",
            env_var="MEDBENCH_AMBOSS",
            demo_file="descriptions.jsonl",
            access=(
                "AMBOSS images and captions are licensed content; write an image+caption JSONL (id, image, "
                "reference) from your licensed copy and set MEDBENCH_AMBOSS=/path/to/captions.jsonl and "
                "MEDBENCH_AMBOSS_IMAGES=/path/to/images"
            ),
        ),
    )
}

# Each public VQA task has an image-blind twin (``tasks/medbench_X_blind``) that reads the very same data.
BLIND_SUFFIX = "_blind"
SOURCES.update({
    f"{source.task}{BLIND_SUFFIX}": replace(source, task=f"{source.task}{BLIND_SUFFIX}", blind_of=source.task)
    for source in list(SOURCES.values()) if source.kind == "vqa" and not source.licensed
})


def get_source(task: str) -> TaskSource:
    """The :class:`TaskSource` of a task name.

    Raises:
        KeyError: With the list of known tasks when ``task`` is not a medbench task.
    """
    try:
        return SOURCES[task]
    except KeyError:
        raise KeyError(f"unknown medbench task {task!r}; known tasks: {', '.join(SOURCES)}") from None
