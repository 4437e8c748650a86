"""Quick start: concurrent callers, one upstream request, a forced invalidation, the report.

Runs against the embedded fake Feishu server on loopback (no credentials needed). With
FEISHU_APP_ID and FEISHU_APP_SECRET set it talks to the real Feishu instead (FEISHU_BASE_URL
picks another domain, e.g. https://open.larksuite.com).

    python demos/quickstart.py

The same as ``python -m actors demo`` (whose steps live in ``actors/_commands.py``); the API it
exercises, in short:

    with actors.TokenSystem.start(actors.AppConfig(app_id, app_secret)) as system:
        token = system.proxy.get_token().get(timeout=5)
        system.proxy.invalidate(token).get(timeout=5)
        print(system.performance_report())
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

from actors._cli import main

if __name__ == "__main__":
    raise SystemExit(main(["demo", *sys.argv[1:]]))
