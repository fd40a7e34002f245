"""scripts/theory_refs.py: THEORY citations become references that resolve."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tr():
    spec = importlib.util.spec_from_file_location("theory_refs", ROOT / "scripts/theory_refs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = '''"""Module (THEORY section 4a) and THEORY.md.

Cites THEORY sections 2 and
3, and (THEORY 4a / 4b).
"""


def f():
    """One line (THEORY 4d)."""
    # a comment (THEORY 4d)
    return f"bounds (THEORY 6): {1}"
'''


def test_docstrings_get_roles_and_other_text_the_plain_form(tr):
    new, n = tr.rewrite(SOURCE)
    assert n == 7
    assert '"""Module (:ref:`theory-4a`) and :ref:`theory`.' in new
    # the separators, line break included, are kept as written
    assert "Cites :ref:`theory-2` and\n3" not in new
    assert "Cites :ref:`theory-2` and\n:ref:`theory-3`, and" in new
    assert "(:ref:`theory-4a` / :ref:`theory-4b`)" in new
    assert '"""One line (:ref:`theory-4d`)."""' in new
    assert "# a comment (docs/theory.md section 4d)" in new
    assert 'f"bounds (docs/theory.md section 6): {1}"' in new
    assert "THEORY" not in new
    # a second run finds nothing left to rewrite
    assert tr.rewrite(new) == (new, 0)


def test_not_a_citation_is_left_alone(tr):
    text = '"""THEORY_TABLE and THEORYX stay; so does theory 4."""\n'
    assert tr.rewrite(text) == (text, 0)


def test_long_docstring_and_comment_lines_are_wrapped(tr):
    words = " ".join(["word"] * 17)  # 85 characters: the rewritten lines exceed 100
    text = (
        f'def f():\n    """Doc.\n\n    - {words} (THEORY 4d) end.\n    """\n'
        f"    # {words} (THEORY 4d) end.\n"
    )
    new, _ = tr.rewrite(text)
    assert max(len(line) for line in new.splitlines()) <= tr.MAX_LINE
    # the continuation keeps the list item's and the comment's indentation
    assert f"    - {words}\n      (:ref:`theory-4d`) end.\n" in new
    assert f"    # {words}\n    # (docs/theory.md section 4d) end.\n" in new


def test_the_chapter_has_the_contract_numbering(tr):
    sections = ["1", "2", "3", "4", "4a", "4b", "4c", "4d", "5", "6", "7", "8", "9", "10"]
    expected = {"theory"} | {f"theory-{s}" for s in sections}
    assert expected <= tr.labels(ROOT / "docs/theory.md")


def test_unknown_sections_and_leftovers_are_reported(tr):
    known = tr.labels(ROOT / "docs/theory.md")
    bad = ":ref:`theory-4e` and docs/theory.md section 11 and THEORY 3\n"
    found = list(tr.problems(bad, known))
    assert any("theory-4e" in p for p in found)
    assert any("'11'" in p for p in found)
    assert any("THEORY 3" in p for p in found)
    assert list(tr.problems(":ref:`theory-4d` and docs/theory.md sections 2 and 10\n", known)) == []


def test_sources_cite_only_existing_sections(tr, capsys):
    assert tr.main(["--check"]) == 0, capsys.readouterr().err
