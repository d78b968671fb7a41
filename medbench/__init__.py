"""medbench: benchmark and training toolkit for preference optimisation of medical vision-language models.

Importing this package is cheap: it pulls in neither torch, trl nor lmms_eval. Heavy pieces live in
submodules that import their dependencies on first use.
"""

__version__ = "0.1.0"
