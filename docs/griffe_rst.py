"""A griffe extension for the API reference: the docstrings' reST markup, read as Markdown.

The library's docstrings use Sphinx roles (:class:`~actors.X`) and ``::`` before literal blocks,
which Markdown would print as they are. Roles become inline code (``~`` keeps the last name, as
Sphinx does), a trailing ``::`` becomes ``:``, and reST's double backquotes single ones.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj|const):`(~?)([^`]+)`")
_LITERAL = re.compile(r"::$", re.MULTILINE)
_DOUBLE = re.compile(r"``([^`]+)``")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class ReSTRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None:
            text = _ROLE.sub(_role, docstring.value)
            docstring.value = _DOUBLE.sub(r"`\1`", _LITERAL.sub(":", text))
