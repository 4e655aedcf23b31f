"""The README and docs/ link to files and sections that exist, and the README stays short."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)#\s]+\.(?:md|png))(?:#([^)\s]+))?\)")
_HEADING = re.compile(r"^#+ (.+)$", re.MULTILINE)


def anchors(document: Path) -> set[str]:
    """GitHub's anchors: headings in lower case, punctuation dropped, spaces as hyphens."""
    slugs = set()
    for heading in _HEADING.findall(document.read_text()):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_link_names_a_file_and_section_that_exist(document: Path):
    for target, anchor in _LINK.findall(document.read_text()):
        linked = (document.parent / target).resolve()
        assert linked.exists(), f"{document.name} links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(linked), f"{document.name}: no section #{anchor} in {target}"


def test_the_readme_fits_on_a_few_screens():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
