"""Files a user owns: a new file never takes the name of one that exists, and appears whole or not
at all (written to a hidden temp file, synced, then given its name)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO


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


def synced_temp(folder: Path, suffix: str, write: Callable[[IO[bytes]], object]) -> Path:
    """A hidden ``.writing-*`` file in ``folder`` holding what ``write`` wrote, synced to disk; gone
    again if writing failed. The caller names it with ``claim`` and then removes the temp name."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".writing-", suffix=suffix, delete=False) as temp:
        temp_path = Path(temp.name)
        try:
            write(temp)
            temp.flush()
            os.fsync(temp.fileno())
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
    return temp_path


def claim(temp_path: Path, target: Path) -> None:
    """Give a written temp file its final name, failing with FileExistsError rather than overwrite."""
    try:
        os.link(temp_path, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (exFAT, some network shares): exclusive create, then copy
        with open(target, "xb") as final:
            try:
                with open(temp_path, "rb") as source:
                    shutil.copyfileobj(source, final)
                final.flush()
                os.fsync(final.fileno())
            except BaseException:
                target.unlink(missing_ok=True)  # a half-copied file must never be found by its name
                raise


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` whole: a temp file beside it, synced, then renamed over it, so a crash (or a
    reader meanwhile) finds the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".writing-", suffix=path.suffix, delete=False) as temp:
        try:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        except BaseException:
            Path(temp.name).unlink(missing_ok=True)
            raise
    os.replace(temp.name, path)


def replace_folder(out: Path, fill: Callable[[Path], object]) -> None:
    """Write the folder ``out`` whole: ``fill`` writes into a staging folder beside it, which then
    takes ``out``'s place (the old one is removed after), so ``out`` is never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; a model folder is for everyone
        fill(staging)
        old = out.with_name(out.name + ".old")
        if out.exists():
            out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
