"""The store seam: what a TokenSystem accepts as ``store=``, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys

import pytest

import actors
import actors.stores
from actors.testing import FunctionSource
from tests.conftest import APP_ID, SECRET, our_threads


def test_redis_store_is_one_class_under_both_names_and_is_a_store() -> None:
    assert actors.RedisStore is actors.stores.RedisStore
    assert issubclass(actors.RedisStore, actors.stores.Store)


def test_a_store_argument_that_is_not_a_store_is_refused_before_anything_starts() -> None:
    app = actors.AppConfig(APP_ID, SECRET)
    source = FunctionSource.constant("t-never-fetched-00", 7200.0)

    with pytest.raises(ValueError, match=r"actors\.stores\.Store"):
        actors.TokenSystem.start(app, source=source, store=object())  # type: ignore[arg-type]
    assert our_threads() == []


def test_the_store_seam_imports_without_redis() -> None:
    # redis-py is an optional extra: the system and the seam never import it on their own.
    code = (
        "import sys, actors.stores; "
        "print(sorted({'redis', 'actors.stores._redis'} & set(sys.modules)))"
    )
    imported = subprocess.check_output([sys.executable, "-c", code], text=True, timeout=60)
    assert imported.strip() == "[]"
