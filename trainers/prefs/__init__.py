"""Preference-data builders: offline rule edits, LLM edits through the judge transport, corrupted images.

See :mod:`medbench.train.prefs.build` (``medbench prefs build``). Import-light: no torch.
"""
