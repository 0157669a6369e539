"""docs/architecture.md's "Layout" block, made from the tree: every package and module
with the first sentence of its own docstring, so the documented layout cannot drift.

``python -m tests.layout`` rewrites the block in place; ``python -m tests.layout --check``
exits 1 if it is out of date (``tests/test_layout.py`` checks the same).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
BEGIN = "<!-- layout: made from the tree by `python -m tests.layout`; do not edit by hand -->"

#: The column where descriptions start, and the longest description kept whole.
COLUMN = 26
LONGEST = 96

#: Folders of the package that hold no Python, with what they are.
DATA_DIRS = {
    "pricectl/data": "the Binance symbol list for offline config checks",
    "pricectl/loadtest/scenarios": "the shipped load-test scenarios",
    "pricectl/server/static": "the dashboard page and its scripts, served as they are",
}

#: The top-level folders and files beside the package.
OTHERS = (
    ("config/pricectl.yaml", "every setting with its default and a comment"),
    ("tests/", "mirrors pricectl/ (tests/<package>/); shared fixtures in conftest files"),
    ("docs/", None),
)

_CITATION = re.compile(
    r"\s*\((?:[^()]*\b(?:DESIGN \d|docs/|config/pricectl\.yaml)[^()]*)\)"
    r"|,\s*(?:DESIGN [\d.]+|docs/\w+\.md, \"[^\"]+\"(?: and \"[^\"]+\")?)"
)


def summary(path: Path) -> str:
    """The first sentence of the module's docstring, without citations or RST markup."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    text = _CITATION.sub("", text).replace("``", "`")
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    m = re.search(r"(?<=[a-z`)\]])\.(?:\s|$)", text)
    if m:
        text = text[: m.start()]
    text = text.rstrip(" .:")
    if len(text) > LONGEST:
        cut = text.rfind(", ", 0, LONGEST)
        text = (text[:cut] if cut > 0 else text[: text.rfind(" ", 0, LONGEST)]) + " ..."
    return text


def _line(indent: int, name: str, text: str | None) -> str:
    head = " " * indent + name
    if not text:
        return head
    return f"{head:<{COLUMN - 1}} {text}" if len(head) < COLUMN - 1 else f"{head}  {text}"


def _package(path: Path, indent: int) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    init = path / "__init__.py"
    lines = [_line(indent, path.name + "/", summary(init) if init.exists() else None)]
    for mod in sorted(p for p in path.glob("*.py") if p.name != "__init__.py"):
        lines.append(_line(indent + 2, mod.name, summary(mod)))
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and p.name != "__pycache__"):
        sub_rel = sub.relative_to(ROOT).as_posix()
        if (sub / "__init__.py").exists():
            lines.extend(_package(sub, indent + 2))
        elif sub_rel in DATA_DIRS:
            files = ", ".join(sorted(p.name for p in sub.iterdir() if p.is_file()))
            lines.append(_line(indent + 2, sub.name + "/", f"{DATA_DIRS[sub_rel]} ({files})"))
        else:
            raise SystemExit(f"{rel}/{sub.name}: a folder the layout does not describe")
    return lines


def render() -> str:
    """The whole generated block, fences included."""
    lines = ["```"]
    lines.extend(_package(ROOT / "pricectl", 0))
    lines.extend(_package(ROOT / "benchmarks", 0))
    for name, text in OTHERS:
        if name == "docs/":
            text = ", ".join(p.name for p in sorted((ROOT / "docs").glob("*.md")))
        lines.append(_line(0, name, text))
    lines.append("```")
    return "\n".join(lines)


def documented(doc: str) -> str:
    """The block as docs/architecture.md has it now (empty if the marker is missing)."""
    start = doc.find(BEGIN)
    if start < 0:
        return ""
    body = doc[start + len(BEGIN) :].lstrip("\n")
    end = body.find("\n```", body.find("```") + 3)
    return body[: end + 4] if end >= 0 else ""


def main(argv: list[str]) -> int:
    doc = DOC.read_text(encoding="utf-8")
    now, want = documented(doc), render()
    if "--check" in argv:
        if now != want:
            print("docs/architecture.md's layout is out of date: run python -m tests.layout")
            return 1
        return 0
    if not now:
        raise SystemExit(f"{DOC}: no line {BEGIN!r} to put the layout under")
    DOC.write_text(doc.replace(now, want, 1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
