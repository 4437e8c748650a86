"""The ``lark-token-actors`` command line (also ``python -m actors``)."""

from __future__ import annotations

from actors.cli._main import main

__all__ = ["main"]
