"""What `mkdocs build --strict` (run by `make test`) does not check about the documentation.

The build fails on a broken link or anchor inside docs/ and on a page missing from the nav. It does
not look at README.md, which GitHub shows and which must stay short and point into docs/ with
links that work there, nor at whether the generated references are still generated.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's and MkDocs' anchor of a heading (the two agree for the headings used here)."""
    text = re.sub(r"<[^>]+>", "", heading).replace("`", "")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    anchors, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6} (.+)", line)):
            anchors.add(_slug(match.group(1)))
    return anchors


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_keeps_the_not_a_medical_device_notice():
    text = README.read_text(encoding="utf-8")
    assert "**Not a medical device.**" in text
    assert "must not be used to diagnose" in text


def test_readme_links_resolve():
    broken = []
    for target in LINK.findall(README.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path
        missing_anchor = file.is_file() and file.suffix == ".md" and anchor and anchor not in _anchors(file)
        if not file.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"README.md links to missing files or anchors: {broken}"


def test_readme_links_into_every_docs_section():
    text = README.read_text(encoding="utf-8")
    for section in ("docs/tutorials/", "docs/how-to/", "docs/reference/", "docs/explanation/", "docs/benchmarks.md"):
        assert f"]({section}" in text, section


def test_generated_references_stay_generated():
    """The CLI, configuration and preset tables come from the code at build time (docs/hooks.py)."""
    placeholders = {
        "reference/cli.md": "<!-- medxfer:cli-reference -->",
        "reference/configuration.md": "<!-- medxfer:config-reference -->",
        "reference/preparation-and-augmentation.md": "<!-- medxfer:preset-table -->",
    }
    for page, placeholder in placeholders.items():
        assert placeholder in (DOCS / page).read_text(encoding="utf-8"), page
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "docs/hooks.py" in config
