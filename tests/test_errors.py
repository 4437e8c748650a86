"""Error messages: upstream text redacted (no secret of the request, nothing token-shaped), and
what a failure says."""

from __future__ import annotations

import json
import pickle
from urllib.parse import quote, quote_plus

import pytest

import actors
from actors._errors import UpstreamError, detached, mask_token, redact
from actors._source import Grant
from actors.testing import FunctionSource

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


def test_an_ok_answer_the_library_refused_says_so_not_code_0() -> None:
    # Code 0 is Feishu's "ok": a message saying the endpoint failed with code 0 reads as nonsense.
    error = UpstreamError(0, None, 1, detail="token expires within the safety margin (100s left)")
    assert "code 0" not in str(error)
    assert "(answered ok): token expires within the safety margin (100s left)" in str(error)
    assert error.code == 0


def test_a_token_that_expires_within_the_margin_fails_with_an_error_that_says_why() -> None:
    policy = actors.RefreshPolicy(max_attempts=1, safety_margin=180.0, prewarm_lead=600.0)
    source = FunctionSource(lambda request: Grant("t-short-lived", 100.0))
    app = actors.AppConfig("cli_short", "secret")
    system = actors.TokenSystem.start(app, policy=policy, clock=actors.ManualClock(), source=source)
    with system, pytest.raises(actors.UpstreamError) as raised:
        system.proxy.get_token().get(timeout=5)
    assert "code 0" not in str(raised.value)
    assert "answered ok" in str(raised.value) and "safety margin" in str(raised.value)


def _raised(error: BaseException, *, during: BaseException | None = None) -> BaseException:
    """``error`` as it comes out of an except clause: with a traceback, and chained."""
    try:
        try:
            raise during if during is not None else error
        except BaseException:
            raise error  # noqa: B904  # chained implicitly, as a handler's own raise is
    except BaseException as exc:
        return exc


ERRORS = [
    actors.AuthError(10014, "app secret invalid"),
    actors.UpstreamError(500, 503, 2, detail="gateway"),
    actors.RateLimitedError(99991400, 429, 1, retry_after=3.0),
    actors.AppTicketError("cli_m", "none arrived"),
    actors.SystemStoppedError(),
    ValueError("unknown app_id"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_a_detached_error_is_a_copy_with_no_frames_and_no_chained_errors(
    error: BaseException,
) -> None:
    raised = _raised(error, during=OSError("the worker's transport error"))
    fresh = detached(raised)
    assert fresh is not raised and type(fresh) is type(raised)
    assert str(fresh) == str(raised) and vars(fresh) == vars(raised)
    assert fresh.__traceback__ is None and fresh.__context__ is None and fresh.__cause__ is None
    assert raised.__traceback__ is not None  # the original, still the raiser's, is untouched


@pytest.mark.parametrize("error", ERRORS[1:3], ids=lambda e: type(e).__name__)
def test_upstream_errors_survive_pickling_whole(error: actors.UpstreamError) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
    assert vars(again) == vars(error)


def test_an_error_that_cannot_be_copied_faithfully_is_stripped_in_place() -> None:
    class Wrapped(Exception):
        def __init__(self, what: str) -> None:
            super().__init__(f"wrapped: {what}")  # made again from its args, it would differ

    raised = _raised(Wrapped("x"), during=OSError("cause"))
    assert detached(raised) is raised
    assert raised.__traceback__ is None and raised.__context__ is None


def test_an_assertion_failure_is_told_apart_from_a_refused_secret() -> None:
    from actors._errors import _ASSERTION_CODES
    from actors.feishu import _protocol as feishu

    codes = {feishu.ASSERTION_NO_APP_TOKEN, feishu.ASSERTION_EMPTY, feishu.ASSERTION_FAILED}
    assert codes == _ASSERTION_CODES
    assert "client_assertion" in str(actors.AuthError(feishu.ASSERTION_FAILED, "RuntimeError"))
    assert "app_secret" in str(actors.AuthError(10014, "app secret invalid"))
