"""``medbench study``: a grid of backbones × recipes × seeds, trained, evaluated and put on one board.

:mod:`medbench.study.spec` reads a study file into cells with config hashes; :mod:`medbench.study.runner` runs
them (skipping complete ones), prints them for a scheduler, and reports. Each cell is a ``medbench`` command
run in a child process, so the study itself imports neither torch nor lmms-eval.
"""
