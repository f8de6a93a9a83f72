"""The README a new user follows: the two set-up commands first, and a CLI reference generated from the parsers."""

from __future__ import annotations

from launch.cli import build_parser
from launch.cli_reference import README, _subparsers, readme_block, render


def test_readme_cli_reference_matches_the_parsers():
    block = readme_block(README.read_text())
    assert block is not None, "README.md lost its cli-reference markers"
    assert block == render(), "README's CLI reference is stale: run `python -m launch.cli_reference --write`"


def test_every_subcommand_and_option_is_in_the_reference():
    reference = render()
    for name, sub in _subparsers(build_parser()).items():
        assert f"#### `scgrn {name}`" in reference
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in reference, f"scgrn {name} {flag}"


def test_readme_starts_with_the_two_setup_commands():
    text = README.read_text()
    quickstart = text.index("## Quickstart")
    assert text.index("make demo", quickstart) < text.index("## What it is")
    assert text.index("make test", quickstart) < text.index("## What it is")
    for section in ("## Scaling guide", "## Benchmarks", "## CLI reference", "## Citing the methods", "SPEC.md"):
        assert section in text
    for method in ("scBERT", "Exceiver", "scTransNet", "GENELink", "BEELINE"):
        assert f"**{method}**" in text
