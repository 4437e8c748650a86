"""What the fake server has seen: every request on arrival, and how many were in flight at once
(overall and per key), which is how tests see whether fetches were coalesced."""

from __future__ import annotations

from actors.testing._replies import Match, RecordedRequest, matches

__all__ = ["Traffic"]


class Traffic:
    """Request records and concurrency peaks. Not thread-safe: the server calls it under its
    lock."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_per_key = 0
        self._per_key: dict[Match, int] = {}

    def arrive(self, req: RecordedRequest) -> None:
        self.requests.append(req)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        key = _key(req)
        per_key = self._per_key[key] = self._per_key.get(key, 0) + 1
        self.max_per_key = max(self.max_per_key, per_key)

    def leave(self, req: RecordedRequest) -> None:
        self.in_flight -= 1
        key = _key(req)
        self._per_key[key] -= 1
        if not self._per_key[key]:
            del self._per_key[key]

    def count(self, match: Match) -> int:
        return sum(1 for req in self.requests if matches(match, req))

    def reset(self) -> None:
        """Forget the records; the peaks restart from what is in flight now."""
        self.requests.clear()
        self.max_in_flight = self.in_flight
        self.max_per_key = max(self._per_key.values(), default=0)


def _key(req: RecordedRequest) -> Match:
    return (req.kind, req.app_id, req.tenant_key)
