"""The package's public surface and what importing it pulls in."""

from __future__ import annotations

import subprocess
import sys

import actors


def test_all_names_exactly_the_public_surface() -> None:
    assert sorted(actors.__all__) == sorted(set(actors.__all__))
    for name in actors.__all__:
        assert hasattr(actors, name), name
    # Internals stay internal: the scheduler's actor speaks private messages, keys are ours.
    assert "SchedulerActor" not in actors.__all__
    assert "TokenKey" not in actors.__all__


def test_the_token_source_seam_is_public() -> None:
    assert {"TokenSource", "TokenRequest", "Grant"} <= set(actors.__all__)


def test_runtime_modules_do_not_import_test_support() -> None:
    code = (
        "import sys, actors, actors.cli._main, actors.sim, actors.prometheus; "
        "print(sorted(m for m in sys.modules if m.startswith('actors.testing')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
