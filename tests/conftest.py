"""Settings for every test under tests/.

Hypothesis' per-example deadline (200 ms by default) is a timing assertion, and timing is not
what a unit test here checks: on a shared 2-core machine running end-to-end labs beside the
unit tests, a slow example is the machine's doing. Speed is measured by bench/, never here.
"""

from __future__ import annotations

import ssl

import pytest
from hypothesis import settings

from carrier import make_self_signed, server_context

settings.register_profile("tunlib", deadline=None)
settings.load_profile("tunlib")


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A TLS server context with a self-signed certificate for www.example.test."""
    cert, key = make_self_signed("www.example.test")
    directory = tmp_path_factory.mktemp("cert")
    (directory / "c.pem").write_bytes(cert)
    (directory / "k.pem").write_bytes(key)
    return server_context(str(directory / "c.pem"), str(directory / "k.pem"))
