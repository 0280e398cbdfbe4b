"""Where the Debian packages the corpus builders read are installed (``FLEXISPEECH_SYSTEM_ROOT``).

The TTS voices, text sources and real recordings are Debian packages. Installed as root
they live under ``/``; a user without root can ``apt-get download`` them and unpack each
with ``dpkg -x PKG.deb ROOT``, then set ``FLEXISPEECH_SYSTEM_ROOT=ROOT`` (see
``data_prep/README.md``). Executables are still found on ``PATH``: only data paths move.
"""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_ROOT_ENV = "FLEXISPEECH_SYSTEM_ROOT"


def system_root() -> Path:
    """The root the Debian packages are installed under: ``$FLEXISPEECH_SYSTEM_ROOT``, else ``/``.

    Read on every call, not at import, so a test (or a caller) can set the variable after
    ``data_prep`` is imported.
    """
    return Path(os.environ.get(SYSTEM_ROOT_ENV) or "/")


def system_path(path: str) -> Path:
    """An absolute system path (``/usr/share/mbrola``) under :func:`system_root`."""
    return system_root() / path.lstrip("/")
