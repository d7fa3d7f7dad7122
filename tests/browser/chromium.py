"""Where the browser tests find Chromium (Debian's, never a downloaded one), and which of them
were skipped for want of it (for the run's summary)."""

from __future__ import annotations

import os

CHROMIUM = "/usr/bin/chromium"
skipped: list[str] = []


def missing() -> bool:
    return not os.access(CHROMIUM, os.X_OK)
