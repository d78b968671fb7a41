"""`import medbench` (and its light modules) must not pull in torch, trl, transformers or lmms_eval."""

import subprocess
import sys

HEAVY = ("torch", "trl", "transformers", "lmms_eval", "datasets", "openai")
LIGHT_MODULES = (
    "medbench",
    "medbench.cli",
    "medbench.metrics.vqa",
    "medbench.metrics.text",
    "medbench.data.loading",
    "medbench.data.sources",
    "medbench.results",
    "medbench.taskfiles",
)


def test_light_modules_import_no_heavy_frameworks():
    code = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in LIGHT_MODULES)
        + f"heavy = [name for name in {HEAVY!r} if name in sys.modules]\n"
        + "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_cli_parser_builds_without_heavy_frameworks():
    code = "import sys\nfrom medbench.cli import build_parser\nbuild_parser()\nprint([m for m in ('torch','lmms_eval') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
