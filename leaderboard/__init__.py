"""medbench leaderboard: verified, ranked tables from lmms-eval result folders.

``medbench leaderboard build RUNS... --out DIR`` reads lmms-eval output folders (results JSON plus the
``--log_samples`` files), recomputes every score from the per-sample logs, rejects runs that break a trust
rule, and writes a static HTML page, Markdown and CSV tables and plots with bootstrap confidence intervals
and paired tests against a baseline. ``medbench leaderboard validate RUN`` checks one submission.
See docs/leaderboard.md.
"""

__version__ = "2.0.0"
