"""The Feishu/Lark Open Platform as the library speaks it: the auth wire protocol in one
table (:mod:`actors.feishu._protocol`, see ``docs/feishu-protocol.md``), the default token
source over HTTP (:mod:`actors.feishu._client`) and its interruptible sockets
(:mod:`actors.feishu._sockets`)."""
