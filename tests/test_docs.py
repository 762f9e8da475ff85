"""The documentation: README.md stays short, docs/natives.md is what the code generates,
every docs page opens with what it covers, every relative link lands, and every
dependency says why it is there."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from vsl.natives import Namespace
from vsl.stdlib import default_namespaces
from vsl.stdlib.support.reference import markdown, slug
from vsl.values import NativeObject, method

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (.+)$", re.M)


def test_readme_is_at_most_10_kb():
    assert len(README.read_text().encode()) <= 10_240


def test_natives_page_is_generated_from_the_namespaces():
    generated = markdown(default_namespaces())
    assert (DOCS / "natives.md").read_text() == generated, \
        "docs/natives.md differs from the namespaces' declarations: run make docs"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_every_docs_page_opens_with_what_it_covers(page):
    title, blank, first, *_ = page.read_text().split("\n")
    assert title.startswith("# ") and blank == ""
    assert first and not first.startswith(("#", "|", "```", "-", "    "))


def _prose(text: str) -> str:
    """Markdown without its code blocks and code spans, where links are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, numbered as GitHub numbers repeated ones."""
    anchors: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text())):
        anchor = slug(heading.replace("`", ""))
        number = 0
        while (anchor if number == 0 else f"{anchor}-{number}") in anchors:
            number += 1
        anchors.add(anchor if number == 0 else f"{anchor}-{number}")
    return anchors


def _relative_links():
    for page in PAGES:
        for target in _LINK.findall(_prose(page.read_text())):
            if not re.match(r"[a-z]+:", target):
                yield pytest.param(page, target, id=f"{page.name}->{target}")


@pytest.mark.parametrize(("page", "target"), list(_relative_links()))
def test_relative_link_points_to_a_file_and_anchor(page, target):
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    assert linked.exists(), f"{page.name}: {target}: no such file"
    if anchor:
        assert anchor in _anchors(linked), f"{page.name}: {target}: no such heading"


def test_every_dependency_says_why():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [d for ds in project["optional-dependencies"].values()
                                        for d in ds]
    table = (DOCS / "dependencies.md").read_text()
    explained = {}
    for first, why in re.findall(r"^\| ([^|]+) \| ([^|]+) \|$", table, re.M):
        for name in re.findall(r"[A-Za-z0-9_.-]+(?:\[[^]]*\])?", first.replace("(test)", "")):
            explained[name.split("[")[0].lower()] = why.strip()
    for requirement in wanted:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group().lower()
        assert explained.get(name), f"docs/dependencies.md: no line saying why {name}"


# ---- the generator, on a namespace made for the test ----------------------------------

class _Thing(NativeObject):
    """A thing made by demo::make."""

    vsl_type = "thing"
    vsl_props = frozenset({"size"})

    @method()
    def grow(self, by, limit=None):
        """Make it larger; false past the limit.

        Details that stay out of the method's one line."""


def _demo() -> Namespace:
    ns = Namespace("demo", "Things for the test")

    @ns.native(options=("size", "colour"))
    async def make(config) -> _Thing:
        """make(#{ size, colour? }): a new thing."""

    @ns.native
    def count(*things):
        pass

    ns.register_type(_Thing)
    return ns


def test_reference_lists_signature_options_return_type_and_doc():
    text = markdown([_demo()])
    assert "- [`demo::`](#demo--things-for-the-test): Things for the test" in text
    assert "## `demo::` — Things for the test" in text
    assert "### `demo::make(config)`\n\n*options: `size`, `colour`; returns: `thing`; waits " \
           "on I/O, so not callable in a closure*\n\nmake(#{ size, colour? }): a new thing." in text
    assert "### `demo::count(...)`\n\n(undocumented)" in text
    assert "### Type `thing`\n\nA thing made by demo::make.\n\nProperties: `size`" in text
    assert "- `.grow(by, limit?)`: Make it larger; false past the limit.\n" in text


def test_reference_takes_the_namespace_module_docstring_as_its_introduction():
    text = markdown([_demo()])
    assert text.split("## `demo::` — Things for the test\n\n")[1].startswith(
        "The documentation: README.md stays short")
