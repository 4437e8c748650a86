"""Test support: an embedded fake Feishu auth server on loopback, and a function-backed source.

:class:`FakeFeishu` speaks the auth v3 contract (self-built and marketplace endpoints, the
30-minute same-token rule, error codes) with expiry on an injectable clock; tests steer it with
scripted :class:`Reply` objects, :class:`Gate` holds, latency and failure knobs.
:class:`FunctionSource` skips HTTP altogether: a function answers each token request.
"""

from actors.testing._fake_feishu import FakeFeishu as FakeFeishu
from actors.testing._replies import Gate as Gate
from actors.testing._replies import RecordedRequest as RecordedRequest
from actors.testing._replies import Reply as Reply
from actors.testing._sources import FunctionSource as FunctionSource

__all__ = ["FakeFeishu", "FunctionSource", "Gate", "RecordedRequest", "Reply"]
