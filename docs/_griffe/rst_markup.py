"""A Griffe extension for the API reference: cano's docstrings use a little reStructuredText
(``:class:`Name``` roles and ``Example::`` literal blocks); this turns it into the Markdown
mkdocstrings renders. It changes nothing in the package: only what the site shows."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj|const):`~?([^`]+)`")


def _fence_literal_blocks(text: str) -> str:
    """``intro::`` followed by an indented block becomes ``intro:`` and a fenced block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::"):
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        block: list[str] = []
        while j < len(lines) and (
            not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent
        ):
            block.append(lines[j])
            j += 1
        while block and not block[-1].strip():
            block.pop()
        if not block:
            out.append(line)
            i += 1
            continue
        intro = line.rstrip()[:-2].rstrip()
        if intro.strip():
            out += [intro + ":", ""]
        cut = min(len(b) - len(b.lstrip()) for b in block if b.strip())
        pad = " " * indent
        out.append(pad + "```python")
        out += [(pad + b[cut:]) if b.strip() else "" for b in block]
        out += [pad + "```", ""]
        i = j
    return "\n".join(out)


class RstMarkup(griffe.Extension):
    """Rewrites every docstring once its object is created."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is None or not docstring.value:
            return
        value = _ROLE.sub(r"`\1`", docstring.value)
        docstring.value = _fence_literal_blocks(value)
