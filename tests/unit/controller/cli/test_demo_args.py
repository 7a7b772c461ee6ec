"""`slmops demo` builds the fast recipe by default; the longer run is one flag away."""

from __future__ import annotations

from controller.cli.demo import FAST_RECIPE, FULL_RECIPE, demo_recipe
from controller.cli.main import build_parser


def test_default_demo_is_the_fast_recipe_and_full_is_one_flag_away() -> None:
    parser = build_parser()
    assert demo_recipe(parser.parse_args(["demo"])) == FAST_RECIPE and FAST_RECIPE.name == "quick.yaml"
    assert demo_recipe(parser.parse_args(["demo", "--full"])) == FULL_RECIPE and FULL_RECIPE.name == "demo.yaml"
    assert demo_recipe(parser.parse_args(["demo", "--recipe", str(FULL_RECIPE)])) == FULL_RECIPE
    assert FAST_RECIPE.is_file() and FULL_RECIPE.is_file()
