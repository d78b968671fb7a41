"""Checkpoint conversion (``medbench convert``); see :mod:`medbench.convert.llava`.

Nothing here is imported by ``import medbench``: the converter needs torch, transformers and safetensors.
"""
