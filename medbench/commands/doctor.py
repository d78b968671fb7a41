"""``medbench doctor``: one line per check of this environment; exit 1 when something needed cannot work."""

from __future__ import annotations

import argparse

from medbench.errors import MedbenchError


def register(subparsers: argparse._SubParsersAction) -> None:
    from medbench.doctor import REQUIRABLE

    parser = subparsers.add_parser(
        "doctor",
        help="check the installation: versions against the tested lock, lmms-eval, Java, caches, judge, CUDA",
        description="Check this environment. Exit status 1 when a check fails: something the installation (or "
        "--require) needs cannot work. Warnings name optional parts that are missing or drifted.",
    )
    parser.add_argument(
        "--require",
        default="",
        metavar="NAMES",
        help=f"comma-separated checks whose warning is a failure here: {', '.join(REQUIRABLE)}",
    )
    parser.add_argument(
        "--no-smoke", action="store_true", help="skip the one-question lmms-eval evaluation (about 15 s)"
    )
    parser.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from medbench.doctor import REQUIRABLE, run_checks

    require = tuple(name.strip() for name in args.require.split(",") if name.strip())
    unknown = sorted(set(require) - set(REQUIRABLE))
    if unknown:
        raise MedbenchError(f"--require {','.join(unknown)}: choose from {', '.join(REQUIRABLE)}")
    checks = run_checks(require, smoke=not args.no_smoke)
    for check in checks:
        print(check.line(), flush=True)
    failed = [check.name for check in checks if check.status == "fail"]
    if failed:
        print(f"medbench doctor: {len(failed)} problem(s): {', '.join(failed)}")
        return 1
    warned = sum(check.status == "warn" for check in checks)
    print(f"medbench doctor: ready ({warned} warning(s))")
    return 0
