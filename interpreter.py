"""Let ``python3 server.py ...`` work with whatever ``python3`` the user has.

tunlib needs the ``cryptography`` package with ``AESGCM.encrypt_into`` (version 48 or later),
which a distribution's Python may lack. ``scripts/bootstrap.sh`` installs it into ``.venv`` beside
this file. ``client.py`` and ``server.py``, run as programs, call :func:`use_project_venv` before
they import anything that needs the requirements: it re-executes the program under that venv when
the running interpreter cannot do the job, and otherwise explains in one line how to get there.
Importing this module does nothing by itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from runtime import EXIT_USER_ERROR  # needs nothing from requirements.txt

VENV = Path(__file__).resolve().parent / ".venv"


def requirements_met() -> bool:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415 - the probe itself
    except ImportError:
        return False
    return hasattr(AESGCM, "encrypt_into")


def use_project_venv() -> None:
    """Return if this interpreter has the requirements; else re-run the program under .venv, or exit 2."""
    if requirements_met():
        return
    venv_python = VENV / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != VENV:
        os.execv(venv_python, [str(venv_python), *sys.argv])
    print(
        "error: the Python package 'cryptography' (48 or later) is missing: "
        "run 'sudo bash scripts/bootstrap.sh', which installs it into .venv",
        file=sys.stderr,
    )
    sys.exit(EXIT_USER_ERROR)
