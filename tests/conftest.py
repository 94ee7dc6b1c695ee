"""Settings for every test under tests/.

Hypothesis' per-example deadline (200 ms by default) is a timing assertion, and timing is not
what a unit test here checks: on a shared 2-core machine running end-to-end labs beside the
unit tests, a slow example is the machine's doing. Speed is measured by bench/, never here.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("tunlib", deadline=None)
settings.load_profile("tunlib")
