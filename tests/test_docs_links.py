"""The documentation a newcomer reads: every relative link and image in README.md, BENCHMARKS.md
and docs/**/*.md resolves (heading anchors included, by GitHub's rule), every table row has its
header's number of cells, and the front pages stay front pages (README.md <= 12,000 characters,
BENCHMARKS.md <= 15,000, at least 5 topic pages)."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", *DOCS.rglob("*.md")])

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = ("http://", "https://", "mailto:")


def prose(text: str) -> str:
    """The page without code: links inside code blocks and code spans are examples, not links."""
    return CODE_SPAN.sub("code", FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    return [m.group(1) for m in INLINE.finditer(body)] + [m.group(1) for m in REFERENCE.finditer(body)]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup and punctuation dropped, lower case, spaces to
    hyphens (letters, digits, `_` and `-` kept)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)        # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for match in HEADING.finditer(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = github_slug(match.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    """Every relative link of `page` whose file (or heading anchor) does not exist."""
    problems = []
    for target in links(page.read_text(encoding="utf-8")):
        if not target or target.startswith(EXTERNAL):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / unquote(path)).resolve() if path else page
        if not resolved.exists():
            problems.append(f"{target}: no such file {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_a_missing_target_or_anchor_is_reported(tmp_path):
    (tmp_path / "there.md").write_text("# A heading (`with code`)\n", encoding="utf-8")
    (tmp_path / "figure.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#a-heading-with-code) ![ok](figure.png) [web](https://example.org)\n"
                    "`[in code](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n"
                    "[gone](missing.md) ![gone](img/missing.png) [bad anchor](there.md#nothing)\n",
                    encoding="utf-8")
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert [p.split(":")[0] for p in problems] == ["missing.md", "img/missing.png", "there.md#nothing"]


SEPARATOR = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
CELL_BORDER = re.compile(r"(?<!\\)\|")   # GitHub splits cells on every unescaped pipe, in code too


def cells(line: str) -> int:
    inner = line.strip().removeprefix("|")
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return len(CELL_BORDER.split(inner))


def misshapen_rows(text: str) -> list[str]:
    """Table rows whose cell count differs from their header's: GitHub drops the extra cells of a
    longer row without a word and pads a shorter one, so a row pasted into the wrong table shows."""
    lines = FENCE.sub("", text).splitlines()
    problems = []
    for i in range(len(lines) - 1):
        if not (lines[i].lstrip().startswith("|") and SEPARATOR.match(lines[i + 1].strip())):
            continue
        width = cells(lines[i])
        for row in lines[i + 2:]:
            if not row.lstrip().startswith("|"):
                break
            if cells(row) != width:
                problems.append(f"{cells(row)} cells under a {width}-cell header: {row[:80]}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_table_row_has_its_headers_cells(page):
    assert misshapen_rows(page.read_text(encoding="utf-8")) == []


def test_a_row_longer_or_shorter_than_its_header_is_reported():
    table = ("| a | b |\n| --- | ---: |\n| 1 | `x \\| y` |\n| 1 | 2 | 3 |\n| 1 |\n\n"
             "| c |\n|---|\n| 4 |\n")
    problems = misshapen_rows(table)
    assert [p.split(" cells")[0] for p in problems] == ["3", "1"], problems


def test_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text(encoding="utf-8")) <= 12_000


def test_benchmarks_is_a_one_page_index():
    assert len((ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")) <= 15_000


def test_docs_has_topic_pages_that_say_what_they_are_for():
    topics = sorted(DOCS.glob("*.md"))
    assert len(topics) >= 5, [p.name for p in topics]
    for page in topics:
        lines = page.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# "), f"{page.name} does not open with a title"
        opening = next((line for line in lines[1:] if line.strip()), "")
        assert opening and not opening.startswith(("#", "|", "```", "-", "!")), \
            f"{page.name} does not open with a sentence saying what a reader comes for"
