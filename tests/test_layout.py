"""docs/architecture.md's "Layout" lists exactly the tree: every package and module, with
the first sentence of its docstring (``python -m tests.layout`` rewrites it)."""

from __future__ import annotations

from tests.layout import DOC, documented, render


def test_the_documented_layout_is_the_tree():
    doc = DOC.read_text(encoding="utf-8")
    now = documented(doc)
    assert now, "docs/architecture.md has no generated layout block"
    assert now == render(), "the layout is out of date: run `python -m tests.layout`"


def test_every_module_of_the_package_is_listed():
    listed = documented(DOC.read_text(encoding="utf-8"))
    root = DOC.parents[1]
    for path in sorted((root / "pricectl").rglob("*.py")):
        if path.name != "__init__.py":
            assert f" {path.name} " in listed, path
