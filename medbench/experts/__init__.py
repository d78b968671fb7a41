"""Expert assessment: blinded clinician review of model outputs and how far to trust the LLM judge.

* :mod:`medbench.experts.export` — sample documents from lmms-eval runs, blind the outputs, write the offline
  HTML form, the CSV/XLSX and the key (``medbench experts export``).
* :mod:`medbench.experts.rubric` — the versioned rubric (``rubric-v1.yaml``) with the shared error taxonomy.
* :mod:`medbench.experts.annotations` — read and validate returned annotation files against the key.
* :mod:`medbench.experts.summary` — unblind; per-model scores with CIs, inter-rater and judge–expert agreement
  (``medbench experts import``), written to ``experts_summary.json`` for the leaderboard.
* :mod:`medbench.experts.stats` — Cohen's and Fleiss' kappa, Krippendorff's alpha, bootstrap intervals.

Light: no torch, lmms-eval or datasets at import (``datasets`` only when a hub-hosted task's images are exported).
"""
