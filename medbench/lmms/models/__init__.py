"""lmms-eval model plugins shipped by medbench, registered through the ``lmms_eval.models`` entry point.

* ``medbench_hf``: any Hugging Face ``AutoModelForImageTextToText`` + ``AutoProcessor`` checkpoint (hub id
  or local folder, e.g. a ``medbench-train`` output), batched, on CPU or GPU.
* ``medbench_baseline``: a non-neural baseline (fixed answers), the floor of the leaderboard.
"""

from __future__ import annotations


def manifests() -> list:
    """The model manifests lmms-eval reads from the entry point (imported only by lmms-eval)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id="medbench_hf", simple_class_path="medbench.lmms.models.hf.MedbenchHF"),
        ModelManifest(
            model_id="medbench_baseline", simple_class_path="medbench.lmms.models.baseline.MedbenchBaseline"
        ),
    ]
