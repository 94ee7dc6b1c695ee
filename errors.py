"""The one exception type that reaches the user as a message instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: bad input, missing privilege, a busy port.

    ``client.py`` and ``server.py`` catch it at the top, print ``error: <message>`` as one line
    on stderr and exit with status 2. Everything else is a bug and keeps its traceback.
    """
