"""Cache entries: explicit refresh states, and every servable change published by the entry."""

from __future__ import annotations

import actors
from actors._cache import CallerStats, Published, ReadSnapshot, RefreshState, TokenCache

APP = actors.AppConfig("cli_c", "secret")
KEY = APP.key(actors.TokenKind.TENANT)


def published(snapshot: ReadSnapshot) -> Published | None:
    cell = snapshot.cells.get(KEY)
    return cell.published if cell is not None else None


def cache() -> tuple[TokenCache, ReadSnapshot]:
    snapshot = ReadSnapshot(CallerStats())
    return TokenCache(safety_margin=100.0, snapshot=snapshot), snapshot


def test_a_new_entry_is_idle_and_publishes_nothing() -> None:
    tokens, snapshot = cache()
    entry = tokens.entry(KEY, APP)
    assert entry.state is RefreshState.IDLE and not entry.busy
    assert published(snapshot) is None


def test_storing_a_token_publishes_it_with_its_serve_until() -> None:
    tokens, snapshot = cache()
    entry = tokens.entry(KEY, APP)
    entry.begin("miss")
    assert entry.store("t-1", 1000.0) is False
    record = published(snapshot)
    assert record is not None
    assert (record.token, record.serve_until, record.refreshing) == ("t-1", 900.0, False)
    assert entry.state is RefreshState.IDLE


def test_starting_and_ending_a_refresh_publishes_the_refreshing_flag() -> None:
    tokens, snapshot = cache()
    entry = tokens.entry(KEY, APP)
    entry.store("t-1", 1000.0)
    entry.begin("prewarm")
    assert getattr(published(snapshot), "refreshing", None) is True
    entry.enter(RefreshState.RETRY_SCHEDULED)
    assert getattr(published(snapshot), "refreshing", None) is True
    entry.end_refresh()
    assert getattr(published(snapshot), "refreshing", None) is False
    assert entry.attempts == 0


def test_dropping_a_token_withdraws_it_from_readers_and_from_the_token_index() -> None:
    tokens, snapshot = cache()
    entry = tokens.entry(KEY, APP)
    entry.store("t-1", 1000.0)
    assert tokens.holding("t-1") is entry
    entry.drop_token()
    assert published(snapshot) is None
    assert tokens.holding("t-1") is None


def test_a_replaced_token_is_no_longer_found_but_the_new_one_is() -> None:
    tokens, _ = cache()
    entry = tokens.entry(KEY, APP)
    entry.store("t-1", 1000.0)
    assert entry.store("t-2", 2000.0) is False
    assert tokens.holding("t-1") is None
    assert tokens.holding("t-2") is entry
    assert entry.store("t-2", 2100.0) is True  # Feishu handed out the same token again


def test_removing_an_entry_forgets_it_everywhere() -> None:
    tokens, snapshot = cache()
    entry = tokens.entry(KEY, APP)
    entry.store("t-1", 1000.0)
    tokens.remove(entry)
    assert tokens.get(KEY) is None
    assert KEY not in snapshot.cells
    assert len(tokens) == 0


def test_a_mailbox_only_cache_keeps_working_without_a_snapshot() -> None:
    tokens = TokenCache(safety_margin=100.0, snapshot=None)
    entry = tokens.entry(KEY, APP)
    entry.store("t-1", 1000.0)
    entry.last_read = 5.0
    assert tokens.last_read(entry) == 5.0
    assert tokens.holding("t-1") is entry
