"""README.rst and docs/*.rst are valid reStructuredText (a broken heading hides a section)."""

from __future__ import annotations

import io
from pathlib import Path

import docutils.core
import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.rst", *sorted((REPO / "docs").glob("*.rst"))]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_the_document_renders_without_warnings(path):
    problems = io.StringIO()
    docutils.core.publish_doctree(
        path.read_text(), settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": problems}
    )
    assert problems.getvalue() == ""


def test_the_readme_gives_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.rst").read_text()
    assert "    scripts/dev-server\n" in readme and "    scripts/test\n" in readme
    assert "exec scripts/test" in (REPO / ".ci" / "run").read_text()
