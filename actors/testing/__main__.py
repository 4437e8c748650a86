"""``python -m actors.testing serve``: the fake Feishu server in a process of its own (see
:mod:`actors.testing._serve`)."""

import sys

from actors.testing._serve import main

if __name__ == "__main__":
    sys.exit(main())
