"""`mypy --strict` flags wrong registrations (a task of another enum, one returning a
``str``, a plain ``def``, a class instead of an instance) and accepts the right ones.

The cases live in ``tests/typing/``: a line ending in ``# error`` must be reported, and no
other line may be.
"""

from __future__ import annotations

from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="mypy is a dev dependency: pip install -e '.[dev]'")

CASES = Path(__file__).parent / "typing"


@pytest.mark.parametrize("case", sorted(CASES.glob("*.py")), ids=lambda p: p.name)
def test_mypy_flags_exactly_the_marked_lines(case: Path) -> None:
    stdout, _stderr, _status = api.run(
        ["--strict", "--no-incremental", "--show-error-codes", "--no-error-summary", str(case)]
    )
    flagged = {
        int(line.split(":")[1])
        for line in stdout.splitlines()
        if ": error:" in line and Path(line.split(":")[0]).resolve() == case.resolve()
    }
    lines = case.read_text().splitlines()
    expected = {n for n, text in enumerate(lines, 1) if text.rstrip().endswith("# error")}
    assert flagged == expected, stdout
