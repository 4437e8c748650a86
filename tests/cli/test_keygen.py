"""``keygen`` prints a new Fernet key alone on stdout, and how to use it on stderr."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet

from actors.cli._main import main
from actors.stores._grants import Sealer


def test_keygen_prints_a_fernet_key_alone_on_stdout_and_the_hint_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["keygen"]) == 0
    out, err = capsys.readouterr()
    key = out.removesuffix("\n")
    assert out == key + "\n" and "\n" not in key
    token = Fernet(key.encode()).encrypt(b"ur-refresh")
    assert Fernet(key.encode()).decrypt(token) == b"ur-refresh"
    assert err.count("\n") == 1
    assert "FEISHU_TOKEN_KEY" in err and "SqliteStore(path, key=...)" in err
    assert key not in err


def test_every_keygen_makes_a_new_key(capsys: pytest.CaptureFixture[str]) -> None:
    keys = set()
    for _ in range(3):
        assert main(["keygen"]) == 0
        keys.add(capsys.readouterr().out)
    assert len(keys) == 3


def test_keygen_help_says_how_the_key_is_used(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lark-token-actors keygen")
    assert "FEISHU_TOKEN_KEY" in out
    assert main(["--help"]) == 0
    assert "keygen" in capsys.readouterr().out


def test_keygen_takes_no_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "extra"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lark-token-actors: error: ") and err.count("\n") == 1


def test_python_m_actors_keygen_prints_a_key_a_store_takes_from_the_environment() -> None:
    # As a shell would: export FEISHU_TOKEN_KEY=$(python -m actors keygen)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEISHU_")}
    result = subprocess.run(
        [sys.executable, "-m", "actors", "keygen"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    exported = result.stdout.strip()  # what $(...) keeps: the output without trailing newlines
    assert result.stdout == exported + "\n"
    sealer = Sealer((), owner="SqliteStore", environ={"FEISHU_TOKEN_KEY": exported})
    assert sealer.has_key
    assert Fernet(exported.encode()).decrypt(sealer.seal(b"secret")) == b"secret"
    assert "FEISHU_TOKEN_KEY" in result.stderr
