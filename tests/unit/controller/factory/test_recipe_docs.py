"""docs/recipes.md is generated from the recipe models: the committed file must be what the generator writes."""

from __future__ import annotations

from controller.factory.recipe_docs import DOCS_PATH, generate


def test_committed_recipe_docs_match_the_models() -> None:
    text = generate()
    assert DOCS_PATH.read_text() == text, "docs/recipes.md is stale: run `python -m controller.factory.recipe_docs`"


def test_every_recipe_key_is_documented_with_its_default() -> None:
    text = generate()
    for row in (
        "| `holdout` | str | `''` |",
        "| `num_threads` | int | `0` | CPU threads for torch; 0: chosen",
        "| `train` | str | `''` | JSONL of training prompts with responses",
        "| `max_steps` | int \\| None | `null` | optimizer steps",
    ):
        assert row in text, row
    for section in ("`data`", "`teacher`", "`teacher.train`", "`teacher.endpoint`", "`student`", "`evaluation`"):
        assert f"## {section}" in text
