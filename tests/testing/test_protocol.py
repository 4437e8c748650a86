"""The fake's response codes: written out on their own, and read by the client's table as the
fake means them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from actors.feishu import _protocol as feishu
from actors.testing import _protocol as fake


@pytest.mark.parametrize(("code", "meaning"), sorted(fake.MEANINGS.items()))
def test_the_clients_table_reads_every_code_the_fake_sends_as_the_fake_means_it(
    code: int, meaning: feishu.Rule
) -> None:
    assert feishu.rule_for(code) is meaning


def test_every_code_the_fake_sends_has_a_meaning() -> None:
    codes = {
        value
        for name, value in vars(fake).items()
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool)
    }
    assert codes == set(fake.MEANINGS)


def test_the_fakes_codes_do_not_follow_the_clients_table() -> None:
    # A wrong row (10014 mistyped 10015) in the client's table, in place before the fake loads:
    # the fake still sends 10014, so every test of a wrong secret sees the client misread it.
    script = textwrap.dedent(
        """
        from types import MappingProxyType
        import actors.feishu._protocol as feishu
        rows = dict(feishu.CODES)
        row = rows.pop(10014)
        rows[10015] = feishu.CodeRule(10015, row.rule, row.meaning)
        feishu.CODES = MappingProxyType(rows)
        import actors.testing._protocol as fake
        print(fake.BAD_SECRET, feishu.rule_for(fake.BAD_SECRET).value)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["10014", "transient"]
