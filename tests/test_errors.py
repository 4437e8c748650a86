"""Redaction of upstream text: no secret of the request and nothing token-shaped survives."""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus

import pytest

from actors._errors import mask_token, redact

SECRET = 's3cr3t/with "odd" chars&more'
TOKEN = "t-g1044ghJRUIJJ5ELM2ZXFEGDTGVJP3JQQ2YA4WNB"


@pytest.mark.parametrize(
    "form",
    [SECRET, json.dumps(SECRET)[1:-1], quote(SECRET, safe=""), quote_plus(SECRET)],
    ids=["plain", "json", "url", "form"],
)
def test_the_requests_secrets_are_removed_however_they_are_escaped(form: str) -> None:
    text = redact(f"proxy saw: {form}!", [SECRET, None, ""])
    assert form not in text and SECRET not in text
    assert text == "proxy saw: ***!"


def test_credential_fields_lose_their_values_even_when_cut_short_or_foreign() -> None:
    echoed = '{"app_id":"cli_1","app_secret":"another-apps-sec'  # cut mid-value
    assert redact(echoed) == '{"app_id":"cli_1","app_secret":"***'
    assert redact("app_ticket=abc123&x=1") == "app_ticket=***&x=1"
    assert redact(r"{\"app_access_token\": \"a-xyz\"}") == r"{\"app_access_token\": \"***\"}"


def test_token_shaped_strings_are_masked_as_tokens_are() -> None:
    user = "u-cjz1eKCEx289x1TXEiQJqAh5171B4gDHPq00l0GE1234"
    text = redact(f"token {TOKEN} expired; user {user}.")
    assert TOKEN not in text and user not in text
    assert text == f"token {mask_token(TOKEN)} expired; user {mask_token(user)}."


def test_ordinary_text_is_left_alone() -> None:
    text = "app secret invalid (re-authentication-required); see x-request-id cli_a1b2"
    assert redact(text, ["not-in-there"]) == text


def test_a_secret_inside_another_is_replaced_whole() -> None:
    assert redact("abcdef", ["abc", "abcdef"]) == "***"
