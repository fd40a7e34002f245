#!/usr/bin/env python3
"""Rewrite "THEORY section n" citations in src/ to the theory chapter in docs/.

The mathematical contract used to live in a THEORY.md that a user of the
package cannot open; docs/theory.md explains it with one label per section,
``(theory-1)=`` ... ``(theory-10)=``. This script rewrites every citation of
the old file in the Python sources:

- in docstrings (a string statement: module, class, function and attribute
  docstrings, which Sphinx renders) to Sphinx cross-references, e.g.
  ``THEORY 4d`` -> ``:ref:`theory-4d```, ``THEORY sections 2 and 3`` ->
  ``:ref:`theory-2` and :ref:`theory-3```, ``THEORY.md`` -> ``:ref:`theory```;
  ``sphinx -W`` fails on a label that does not exist;
- in comments and other strings (messages printed at run time), where a role
  would be noise, to the plain form ``docs/theory.md section 4d``.

``--check`` rewrites nothing; it exits 1 if a citation is left to rewrite or
if any reference in src/ (either form, including docstrings Sphinx does not
render) names a section that docs/theory.md does not have.

Usage::

    python scripts/theory_refs.py            # rewrite src/ in place
    python scripts/theory_refs.py --check    # verify, for CI
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THEORY_DOC = "docs/theory.md"

# A section id: a number with an optional letter (4, 4a, 10).
_ID = r"\d+[a-z]?(?!\w)(?!\.\d)"
_SEP = r"\s*(?:,\s*(?:and\s+|or\s+)?|/|\band\b|\bor\b|&)\s*"
# "THEORY" or "THEORY.md", optionally "section(s)", then ids; or bare.
CITATION = re.compile(
    rf"\bTHEORY(?P<md>\.md)?(?![\w])"
    rf"(?:(?P<word>\s+sections?)?\s+(?P<ids>{_ID}(?:{_SEP}{_ID})*))?"
)
_ID_RE = re.compile(_ID)
ROLE_REF = re.compile(r":ref:`(?:[^`<]*<)?(?P<label>theory(?:-[^`>]+)?)>?`")
PLAIN_REF = re.compile(
    rf"{re.escape(THEORY_DOC)}(?:\s+sections?\s+(?P<ids>{_ID}(?:{_SEP}{_ID})*))?"
)
LABEL = re.compile(r"^\((?P<label>theory(?:-[\w-]+)?)\)=\s*$", re.MULTILINE)


def docstring_lines(source: str) -> set[int]:
    """1-based line numbers covered by string statements (docstrings)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def _rewrite_citation(match: re.Match[str], role: bool) -> str:
    ids = match.group("ids")
    if ids is None:
        return ":ref:`theory`" if role else THEORY_DOC
    if role:
        # Keep the separators as written (they may hold a line break).
        return _ID_RE.sub(lambda m: f":ref:`theory-{m.group(0)}`", ids)
    word = "sections" if len(_ID_RE.findall(ids)) > 1 else "section"
    return f"{THEORY_DOC} {word} {ids}"


def rewrite(source: str) -> tuple[str, int]:
    """The source with every citation rewritten, and the number rewritten."""
    doc_lines = docstring_lines(source)
    line_starts = [0]
    for i, ch in enumerate(source):
        if ch == "\n":
            line_starts.append(i + 1)

    def line_of(pos: int) -> int:
        lo, hi = 0, len(line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if line_starts[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return _rewrite_citation(match, role=line_of(match.start()) in doc_lines)

    new = CITATION.sub(replace, source)
    if count:
        new = _wrap_long_lines(source, new, docstring_lines(new))
    return new, count


MAX_LINE = 100  # ruff's line length (pyproject.toml)
_BULLET = re.compile(r"^(\s*)(#\s*)?([-*]\s+|\d+\.\s+)?")


def _split_point(line: str) -> int | None:
    """Index of the last space before MAX_LINE that is outside backticks."""
    best = None
    inside = False
    for i, ch in enumerate(line[: MAX_LINE + 1]):
        if ch == "`":
            inside = not inside
        elif ch == " " and not inside and line[:i].strip():
            best = i
    return best


def _wrap_long_lines(old: str, new: str, doc_lines: set[int]) -> str:
    """Break the lines the rewrite made longer than MAX_LINE.

    Only in docstrings and comment lines, where a line break with the same
    indentation (plus a list item's marker width) keeps the meaning; other
    long lines (a string printed at run time) are left for a person and
    reported by :func:`problems`.
    """
    before = set(old.splitlines())
    out: list[str] = []
    for lineno, line in enumerate(new.splitlines(keepends=True), start=1):
        body = line.rstrip("\n")
        is_comment = body.lstrip().startswith("#")
        while (
            len(body) > MAX_LINE
            and body not in before
            and (lineno in doc_lines or is_comment)
            and (cut := _split_point(body)) is not None
        ):
            m = _BULLET.match(body)
            indent = m.group(1) + (m.group(2) or "") + " " * len(m.group(3) or "")
            out.append(body[:cut].rstrip() + "\n")
            body = indent + body[cut + 1 :]
        out.append(body + line[len(line.rstrip("\n")) :])
    return "".join(out)


def labels(theory_doc: Path) -> set[str]:
    """The ``(theory...)=`` labels defined in the theory chapter."""
    return {m.group("label") for m in LABEL.finditer(theory_doc.read_text(encoding="utf-8"))}


def problems(source: str, known: set[str]) -> Iterator[str]:
    """Citations left to rewrite and references to labels that do not exist."""
    for m in CITATION.finditer(source):
        yield f"unrewritten citation {m.group(0)!r}"
    for m in ROLE_REF.finditer(source):
        if m.group("label") not in known:
            yield f"unknown label {m.group('label')!r}"
    for m in PLAIN_REF.finditer(source):
        for sid in _ID_RE.findall(m.group("ids") or ""):
            if f"theory-{sid}" not in known:
                yield f"unknown section {sid!r} in {m.group(0)!r}"
    for lineno, line in enumerate(source.splitlines(), start=1):
        if len(line) > MAX_LINE and (ROLE_REF.search(line) or PLAIN_REF.search(line)):
            yield f"line {lineno} is longer than {MAX_LINE} characters; break it by hand"


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "src").rglob("*.py") if "_build" not in p.parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify only; exit 1 on a problem")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    known = labels(args.root / THEORY_DOC)
    bad = 0
    changed = 0
    for path in python_files(args.root):
        text = path.read_text(encoding="utf-8")
        if args.check:
            for problem in problems(text, known):
                print(f"{path.relative_to(args.root)}: {problem}", file=sys.stderr)
                bad += 1
            continue
        new, n = rewrite(text)
        if n:
            path.write_text(new, encoding="utf-8")
            changed += n
            print(f"{path.relative_to(args.root)}: {n} citation(s)")
        for problem in problems(new, known):
            print(f"{path.relative_to(args.root)}: {problem}", file=sys.stderr)
            bad += 1
    if not args.check:
        print(f"{changed} citation(s) rewritten")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
