"""The README is the way in: it starts with the two commands, stays short (at most 150 lines) and
every document it links exists. Parameters are documented in docs/parameters.md, generated from
the code and checked by test_param_docs.py."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()[1:]]
    assert commands == ["make demo", "make test"]


def test_readme_is_short_and_its_links_resolve():
    assert len(README.splitlines()) <= 150
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert links, "the README links its reference documents"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing
    for doc in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([^)#:]+\.md)\)", doc.read_text()):
            assert (doc.parent / link).exists(), f"{doc.name} links {link}, which does not exist"
