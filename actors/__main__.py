"""``python -m actors``: the lark-token-actors command line."""

from actors._cli import main

raise SystemExit(main())
