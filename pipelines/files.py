"""Names for the files a user owns: a new file never takes the name of one that exists."""

from __future__ import annotations

import time
from pathlib import Path


def free_name(path: Path) -> Path:
    """``path`` if nothing has that name yet, else the first free ``<stem>-1<suffix>``, ``-2``, ..."""
    candidate, number = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate


def damaged_name(path: Path) -> Path:
    """Where a damaged ``path`` is kept aside: ``<stem>.damaged-<date>-<time><suffix>``, never over
    one kept earlier."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return free_name(path.with_name(f"{path.stem}.damaged-{stamp}{path.suffix}"))
