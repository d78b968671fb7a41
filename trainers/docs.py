"""Generated documentation: the recipe and backbone tables of ``trainers/README.md`` and ``--list``.

Run ``python -m medbench.train.docs`` to rewrite the tables after changing a recipe file, ``--check`` to fail when the
README is stale (the test suite does the same).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medbench.docsgen import Generators, render_block, stale_blocks, write_blocks

from .config import BackboneProfile, RecipeConfig, list_backbones, list_recipes, recipe_index
from .objectives import OBJECTIVES

README = Path(__file__).resolve().parent / "README.md"


def _cell(text: str) -> str:
    """Escape a Markdown table cell (equations contain `|`)."""
    return str(text).replace("|", "\\|")


def needs(objective_name: str) -> str:
    """The record fields a recipe with this objective needs, in words."""
    objective = OBJECTIVES[objective_name]
    text = ", ".join(objective.requires)
    return f"{text} {objective.needs_note}".strip()


def _non_default_settings(recipe: RecipeConfig) -> str:
    defaults = RecipeConfig()
    skip = {"name", "description", "objective", "paper"}
    changed = [
        f"{key}={value}"
        for key, value in recipe.to_dict().items()
        if key not in skip and value != getattr(defaults, key) and key != "dpo_args"
    ]
    changed += [f"{key}={value}" for key, value in recipe.dpo_args.items()]
    return ", ".join(changed) if changed else "study defaults"


def recipe_table(recipes: list[RecipeConfig] | None = None) -> str:
    """Markdown table of the shipped recipes (name, objective, loss, needs, settings, description)."""
    recipes = list_recipes() if recipes is None else recipes
    lines = [
        "| recipe | objective | loss | needs | settings | description |",
        "|---|---|---|---|---|---|",
    ]
    for recipe in recipes:
        objective = OBJECTIVES[recipe.objective]
        paper = f" ([paper]({recipe.paper}))" if recipe.paper else ""
        cells = [
            f"`{recipe.name}`",
            f"`{objective.name}`",
            _cell(objective.equation),
            _cell(needs(recipe.objective)),
            _cell(_non_default_settings(recipe)),
            _cell(recipe.description) + paper,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def backbone_table(backbones: list[BackboneProfile] | None = None) -> str:
    """Markdown table of the shipped backbone profiles."""
    backbones = list_backbones() if backbones is None else backbones
    lines = ["| backbone | model_type | checkpoint | sets | description |", "|---|---|---|---|---|"]
    for profile in backbones:
        sets = ", ".join(sorted(profile.settings))
        cells = [
            f"`{profile.name}`",
            f"`{profile.model_type}`",
            _cell(profile.checkpoint),
            sets,
            _cell(profile.description),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def generated_block() -> str:
    """The README's recipe and backbone tables (block ``recipes``)."""
    return f"\n{recipe_table()}\n\nBackbone profiles (`--backbone NAME`):\n\n{backbone_table()}\n"


# Written with medbench's one doc generator and marker syntax (<!-- BEGIN generated:recipes --> ... END).
BLOCKS: Generators = {"recipes": (lambda: README, generated_block)}


def render_readme(text: str) -> str:
    """``text`` with the generated block replaced.

    Raises:
        ValueError: the markers are missing.
    """
    return render_block("recipes", text, generated_block)


def list_text() -> str:
    """Plain-text listing for ``medbench train --list`` (reads the recipe files without typing them)."""
    recipes = recipe_index()
    width = max(len(r["name"]) for r in recipes)
    lines = ["Recipes (trainers/recipes/<name>.yaml; use --config <name>):"]
    for recipe in recipes:
        lines.append(f"  {recipe['name']:<{width}}  {recipe['description']}")
        lines.append(f"  {'':<{width}}    objective: {recipe['objective']}; needs: {needs(recipe['objective'])}")
    backbones = list_backbones()
    width = max(len(b.name) for b in backbones)
    lines.append("")
    lines.append("Backbone profiles (use --backbone <name>):")
    for profile in backbones:
        lines.append(f"  {profile.name:<{width}}  {profile.description} [{profile.model_type}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medbench.train.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if trainers/README.md is stale")
    args = parser.parse_args(argv)
    if args.check:
        if stale_blocks(BLOCKS):
            print(f"{README} is stale; run: python -m medbench.train.docs", file=sys.stderr)
            return 1
        return 0
    write_blocks(BLOCKS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
