"""``python -m actors``: the lark-token-actors command line."""

from actors.cli._main import main

raise SystemExit(main())
