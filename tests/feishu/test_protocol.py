"""The protocol table: endpoints and the rule of every response code."""

from __future__ import annotations

import pytest

import actors
from actors.feishu import _protocol as feishu


@pytest.mark.parametrize("app_type", list(actors.AppType))
@pytest.mark.parametrize("kind", [actors.TokenKind.TENANT, actors.TokenKind.APP])
def test_every_app_type_and_kind_has_one_endpoint(
    app_type: actors.AppType, kind: actors.TokenKind
) -> None:
    endpoint = feishu.endpoint_for(app_type, kind)
    assert endpoint.path.startswith(feishu.AUTH_PREFIX)
    assert endpoint.token_field == f"{kind.value}_access_token"


def test_only_the_marketplace_tenant_endpoint_goes_without_the_secret() -> None:
    with_secret = [e for e in feishu.ENDPOINTS if "app_secret" in e.request_fields]
    assert len(with_secret) == 3
    (second_step,) = set(feishu.ENDPOINTS) - set(with_secret)
    assert second_step.request_fields == ("app_access_token", "tenant_key")


def test_http_429_is_rate_limiting_whatever_the_code() -> None:
    assert feishu.rule_for(12345, 429) is feishu.Rule.RATE_LIMITED
    assert feishu.rule_for(99991663, 429) is feishu.Rule.RATE_LIMITED


def test_permanent_and_ticket_codes_win_over_the_status() -> None:
    assert feishu.rule_for(10014, 429) is feishu.Rule.PERMANENT
    assert feishu.rule_for(10012, 429) is feishu.Rule.TICKET_INVALID


def test_unknown_codes_are_transient() -> None:
    assert feishu.rule_for(4242, 200) is feishu.Rule.TRANSIENT
    assert feishu.rule_for(None, 502) is feishu.Rule.TRANSIENT


def test_token_invalid_codes_are_the_three_of_the_protocol_doc() -> None:
    assert frozenset({99991663, 99991664, 99991671}) == feishu.TOKEN_INVALID_CODES
