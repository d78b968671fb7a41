"""What lmms-eval's deprecated ``LMMS_EVAL_PLUGINS=medbench`` imports; registers nothing.

lmms-eval 0.7.3 imports ``<plugin>.models`` for every name in ``LMMS_EVAL_PLUGINS`` and crashes every run
when that module is missing. medbench's models (``medbench_hf``, ``medbench_baseline``) are registered
through the ``lmms_eval.models`` entry point instead (see :mod:`medbench.lmms.models`), and its tasks by
``medbench tasks link``, so this mapping stays empty: the variable is harmless, never needed.
"""

AVAILABLE_MODELS: dict[str, str] = {}
