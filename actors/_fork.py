"""Fork detection: a system's threads do not exist in a child forked after ``start()``.

``os.fork()`` copies memory but not threads (gunicorn ``--preload``, multiprocessing's fork
start method). A child that used the parent's system would wait forever for actors that are not
there, and a lock held by a parent thread at the moment of the fork stays locked in the child.
The library records a fork generation; a system started in another generation serves what its
copied snapshot still holds and fails everything else at once.
"""

from __future__ import annotations

import os

__all__ = ["current", "forked_error"]

_generation = 0


def _after_fork_in_child() -> None:
    global _generation  # noqa: PLW0603 - one process-wide counter is the point
    _generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def current() -> int:
    """The fork generation of this process: 0 in the original, +1 in each forked child."""
    return _generation


def forked_error() -> Exception:
    from actors._errors import SystemStoppedError  # noqa: PLC0415 - keeps this module leaf

    return SystemStoppedError(
        "this TokenSystem was started before the process forked and its threads do not exist "
        "here; start one TokenSystem per process (e.g. in a post-fork hook)"
    )
