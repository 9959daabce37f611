"""The documentation site (docs/, mkdocs.yml): its code runs, and it covers the API and CLI.

- Every ```python block in ``docs/**/*.md`` runs in a fresh interpreter (cwd: a temporary
  directory) and must exit 0. A fragment (a block that uses names it does not define, or
  ``await`` at top level) is preceded by an HTML comment the page does not show,
  ``<!-- docs-test: prelude`` … ``-->``, whose code runs first; top-level ``await`` runs
  in an event loop. One preceded by ``<!-- docs-test: needs-postgres -->`` runs when a
  PostgreSQL server is available (``$CANO_PG_DSN``, or one started from Debian's packages
  as by the other PostgreSQL tests); it reads the DSN from ``CANO_PG_DSN`` and works in the
  schema ``cano_docs``, dropped afterwards. ``<!-- docs-test: skip -->`` exists for a block
  that cannot run anywhere; no page uses it now.
- Every name in ``cano.__all__`` has a ``::: cano.NAME`` entry in ``docs/reference/``.
- ``docs/reference/cli.md`` names every command and option that ``cano --help`` lists.
- Every page is in the ``nav`` of ``mkdocs.yml``, and every ``nav`` entry exists.
- When mkdocs is installed, ``mkdocs build --strict`` passes and renders every public name.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import cano
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
CLI_PAGE = REFERENCE / "cli.md"
MKDOCS_YML = ROOT / "mkdocs.yml"

SKIP = "<!-- docs-test: skip -->"
NEEDS_POSTGRES = "<!-- docs-test: needs-postgres -->"
PRELUDE = "<!-- docs-test: prelude"
MARKERS = (SKIP, NEEDS_POSTGRES)
# Runs a block with top-level ``await`` (a fragment of an ``async def``) in an event loop.
AWAIT_RUNNER = """\
import ast, asyncio, sys
path = sys.argv[1]
with open(path, encoding="utf-8") as file:
    source = file.read()
code = compile(source, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""
PG_SCHEMA = "cano_docs"
BLOCK_TIMEOUT = 60

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
_PYTHON = frozenset({"python", "py", "python3"})


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    markers: frozenset[str]
    prelude: str  # code run before the block's own (from a hidden prelude comment)
    code: str

    @property
    def marker(self) -> str | None:
        """SKIP or NEEDS_POSTGRES, when the block carries one."""
        return next((m for m in MARKERS if m in self.markers), None)

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(DOCS).as_posix()}:{self.line}"


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a page, dedented to their fence (tabs, admonitions)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        info = opening["info"].strip()
        language = info.split()[0].lstrip(".").lower() if info else ""
        markers, prelude = _comments_above(lines, i)
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = _FENCE.match(lines[j])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        else:
            raise AssertionError(f"{path}:{i + 1}: unclosed code fence")
        code = "\n".join(body) + "\n"
        found.append(Block(path, i + 1, language, markers, prelude, code))
        i = j + 1
    return found


def _comments_above(lines: list[str], fence: int) -> tuple[frozenset[str], str]:
    """The ``docs-test`` comments right above line ``fence``: their markers, and the code of
    a ``<!-- docs-test: prelude`` … ``-->`` comment."""
    markers: set[str] = set()
    prelude = ""
    j = fence - 1
    while j >= 0:
        line = lines[j].strip()
        if not line:
            j -= 1
        elif line in MARKERS:
            markers.add(line)
            j -= 1
        elif line == "-->":
            start = j - 1
            while start >= 0 and lines[start].strip() != PRELUDE:
                start -= 1
            if start < 0:
                break
            prelude = textwrap.dedent("\n".join(lines[start + 1 : j])) + "\n"
            markers.add(PRELUDE)
            j = start - 1
        else:
            break
    return frozenset(markers), prelude


def python_blocks() -> list[Block]:
    return [b for page in pages() for b in blocks(page) if b.language in _PYTHON]


PYTHON_BLOCKS = python_blocks()


def _postgres_dsn() -> str | None:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import pg_server
    finally:
        sys.path.remove(str(ROOT / "tests"))
    return pg_server.test_dsn()


def _drop_schema(dsn: str) -> None:
    import psycopg

    async def drop() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{PG_SCHEMA}" CASCADE')

    asyncio.run(drop())


def test_the_docs_have_runnable_python_blocks() -> None:
    assert PYTHON_BLOCKS, "no ```python block found under docs/"
    skipped = [b.id for b in PYTHON_BLOCKS if b.marker == SKIP]
    assert skipped == [], f"every block runs (give a fragment a prelude): {skipped}"


def test_every_concept_page_has_a_runnable_block() -> None:
    missing = [
        page.relative_to(DOCS).as_posix()
        for page in sorted((DOCS / "concepts").glob("*.md"))
        if not any(b.marker != SKIP and b.language in _PYTHON for b in blocks(page))
    ]
    assert missing == [], f"concept pages without a runnable ```python block: {missing}"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUTF8": "1"}
    dsn: str | None = None
    if block.marker == SKIP:
        pytest.skip("marked <!-- docs-test: skip -->")
    if block.marker == NEEDS_POSTGRES:
        dsn = _postgres_dsn()
        if dsn is None:
            pytest.skip(
                "needs PostgreSQL: `python tests/pg_server.py start /tmp/pgdev` prints a DSN; "
                "export CANO_PG_DSN=<that DSN> (or install Debian's postgresql package)"
            )
        env["CANO_PG_DSN"] = dsn
    script = tmp_path / "block.py"
    source = block.prelude + block.code
    script.write_text(source, encoding="utf-8")
    command = [sys.executable, str(script)]
    try:
        compile(source, str(script), "exec")
    except SyntaxError:  # top-level await: a fragment of an async function
        runner = tmp_path / "run_awaiting.py"
        runner.write_text(AWAIT_RUNNER, encoding="utf-8")
        command = [sys.executable, str(runner), str(script)]
    try:
        done = subprocess.run(
            command,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=BLOCK_TIMEOUT,
            check=False,
        )
    finally:
        if dsn is not None:
            _drop_schema(dsn)
    assert done.returncode == 0, (
        f"{block.id} exited {done.returncode}\n--- code\n{source}"
        f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
    )


def _reference_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(REFERENCE.rglob("*.md")))


def test_every_public_name_is_in_the_api_reference() -> None:
    text = _reference_text()
    missing = [
        name
        for name in cano.__all__
        if not re.search(rf"^:::[ \t]+cano\.{re.escape(name)}[ \t]*$", text, re.MULTILINE)
    ]
    assert missing == [], f"names of cano.__all__ without a '::: cano.NAME' entry: {missing}"


def _help(*command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cano", *command, "--help"],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        check=True,
        env={
            **os.environ,
            "COLUMNS": "200",
            "NO_COLOR": "1",
            "PYTHON_COLORS": "0",
            "PYTHONUTF8": "1",
        },
    )
    return done.stdout


def _subcommands(help_text: str) -> list[str]:
    """The sub-commands argparse lists under its positional ``COMMAND``/``ACTION``."""
    names: list[str] = []
    listing = False
    for line in help_text.splitlines():
        if re.match(r"^  [A-Z]+$", line):
            listing = True
            continue
        if listing:
            entry = re.match(r"^    ([a-z][\w-]*)(\s|$)", line)
            if entry:
                names.append(entry[1])
            elif line and not line.startswith("      "):
                listing = False
    return names


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", help_text)) - {"--help"}


def test_the_cli_reference_names_every_command_and_option() -> None:
    page = CLI_PAGE.read_text(encoding="utf-8")
    top = _help()
    commands = _subcommands(top)
    assert "runs" in commands and "demo" in commands, top
    missing: list[str] = sorted(f"cano {o}" for o in _options(top) if o not in page)
    for command in commands:
        text = _help(command)
        actions = _subcommands(text) if command == "runs" else []
        if command == "runs":
            assert actions, text
        for action in actions:
            if f"cano runs {action}" not in page:
                missing.append(f"cano runs {action}")
            sub = _help(command, action)
            missing += [f"cano runs {action} {o}" for o in sorted(_options(sub)) if o not in page]
        if f"cano {command}" not in page:
            missing.append(f"cano {command}")
        missing += [f"cano {command} {o}" for o in sorted(_options(text)) if o not in page]
    assert missing == [], f"docs/reference/cli.md does not mention: {missing}"


def _nav_pages() -> list[str]:
    """The pages the nav of mkdocs.yml lists (``- Title: path.md`` or ``- path.md``)."""
    text = MKDOCS_YML.read_text(encoding="utf-8")
    nav = re.search(r"^nav:\n((?:[ \t]+.*\n?|\n)*)", text, re.MULTILINE)
    assert nav is not None, "mkdocs.yml has no nav"
    return re.findall(r"^\s*-\s.*?([\w./-]+\.md)\s*$", nav[1], re.MULTILINE)


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    listed = _nav_pages()
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in pages())
    assert sorted(set(listed)) == sorted(listed), f"pages listed twice: {listed}"
    assert sorted(listed) == on_disk, (
        f"not in the nav: {sorted(set(on_disk) - set(listed))}; "
        f"missing on disk: {sorted(set(listed) - set(on_disk))}"
    )


def test_the_changelog_page_includes_the_root_changelog() -> None:
    assert (ROOT / "CHANGELOG.md").is_file()
    assert '--8<-- "CHANGELOG.md"' in (DOCS / "changelog.md").read_text(encoding="utf-8")


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (docs extra)"
)
@pytest.mark.timeout(300)
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}"
    rendered = "\n".join(
        p.read_text(encoding="utf-8") for p in sorted((site / "reference").rglob("*.html"))
    )
    missing = [name for name in cano.__all__ if f'id="cano.{name}"' not in rendered]
    assert missing == [], f"public names the built API reference does not render: {missing}"
