"""Review outputs appear whole or not at all: an interrupted review (Ctrl-C, a full disk) must
not leave a truncated SGF or PNG under the name of a finished one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_whole(target: Path, write: Callable[[BinaryIO], object]) -> Path:
    """``write`` fills a hidden temporary file beside ``target``, which then takes its name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o644)  # not mkstemp's 0600: the user's other tools read these
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target
