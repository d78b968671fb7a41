"""The README's two commands are the project's contract; CI must run the test one verbatim."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    blocks, inside, current = [], False, []
    for line in text.splitlines():
        if line.startswith("```"):
            if inside:
                blocks.append("\n".join(current))
                current = []
            inside = line.strip() == "```bash"
            continue
        if inside:
            current.append(line)
    return blocks


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_section = readme.split("## Tests", 1)[1].split("\n## ", 1)[0]
    command = _bash_blocks(test_section)[0].strip()
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert command in ci_lines


def test_readme_demo_command_installs_and_runs_the_demo():
    readme = (ROOT / "README.md").read_text()
    demo = _bash_blocks(readme.split("## Quick start", 1)[1])[0]
    assert "pip install" in demo and "medbench demo" in demo
