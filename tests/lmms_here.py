"""Run ``medbench eval``'s lmms-eval child in the test process, for session fixtures that only need its output.

A fresh ``python -m lmms_eval`` spends about 22 s importing torch, transformers and lmms-eval before it evaluates
anything; the test process has imported them once already. Inside :func:`lmms_eval_in_process`,
:func:`medbench.commands.eval.run_lmms_eval` keeps its whole contract (task-link refresh, data check, the
results-file and failed-generation checks) and only its ``subprocess.run`` of lmms-eval becomes a call of
lmms-eval's own command-line entry point, under the child's environment and arguments.

The child-process path itself stays covered: ``demo_results`` runs the baseline through it (``medbench demo``), and
``tests/medbench/test_tasklink.py`` runs the bare ``lmms-eval`` command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest


def lmms_eval_here(args: list[str], env: dict[str, str] | None = None) -> int:
    """``lmms-eval ARGS`` in this process, under ``env`` (default: this environment); returns its exit status."""
    from lmms_eval.cli.dispatch import main as lmms_eval_main
    from loguru import logger

    from medbench.lmms import records, report

    # What medbench keeps per lmms-eval process, which a fresh process starts without: the judge and corpus-metric
    # results memoised by sample content (a second run over the same answers would reuse them and make no judge
    # calls, so lmms-eval would record no judge usage), the judge client, and the once-per-process warnings.
    report._memo.clear()
    report._runner = None
    records._warned.clear()
    saved_environ, saved_argv = dict(os.environ), sys.argv
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    sys.argv = ["lmms_eval", *args]
    code = 0
    try:
        lmms_eval_main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)
        sys.argv = saved_argv
        # lmms-eval points its (loguru) logger at the sys.stdout of the run, pytest's capture of the calling test:
        # give later writes a stream that stays open.
        logger.remove()
        logger.add(sys.__stderr__, level="WARNING")
    return code


@contextmanager
def lmms_eval_in_process(model: str | None = None) -> Iterator[None]:
    """Within the block, ``run_lmms_eval`` runs lmms-eval in this process (single-process runs only).

    Args:
        model: Only runs of this ``--model`` move into the process; the others stay child processes.
    """
    real_run = subprocess.run

    def run(command: list[str], env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess:
        if model is not None and command[command.index("--model") + 1] != model:
            return real_run(command, env=env, check=check)
        assert command[:3] == [sys.executable, "-m", "lmms_eval"], f"not a single-process lmms-eval run: {command}"
        code = lmms_eval_here(command[3:], env)
        if check and code:
            raise subprocess.CalledProcessError(code, command)
        return subprocess.CompletedProcess(command, code)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("medbench.commands.eval.subprocess", SimpleNamespace(run=run))
        yield
