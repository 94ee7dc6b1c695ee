"""Fault injection for the supervision test (tests/e2e/test_e2e_rekey.py); never product code.

A directory on PYTHONPATH that holds ``sitecustomize.py`` is imported by every Python process at
start-up, so a test that sets PYTHONPATH to this directory runs the real client and server with
one change: ``os.write`` raises when the data it writes carries MARKER. A ping whose pattern is
MARKER therefore makes the thread that writes it into a TUN fail with a real exception, exactly
where a bug would, without any test hook in the product.
"""

import os

MARKER = bytes.fromhex("7e57fa017e57fa017e57fa017e57fa01")
_real_write = os.write


def _write(fd: int, data: bytes, /) -> int:
    if MARKER in bytes(data):
        raise RuntimeError("injected fault")
    return _real_write(fd, data)


os.write = _write
