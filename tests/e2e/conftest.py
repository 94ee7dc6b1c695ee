"""End-to-end tests: the real server.py and client.py, in network namespaces (root only).

Every test runs inside labs from ``netlab.py``: namespaces named ``tlb<pid><n>-*`` joined
by veth pairs on TEST-NET addresses, so no packet leaves this machine's lab namespaces. The
fixtures here tear each lab down even when a test fails, and then check nothing was left.

Both data-path modes are covered where they differ: ``offload`` (the server's default, TUN
with virtio-net headers and 64 KB super-packets) and ``plain`` (``--no-offload``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import netlab

HERE = Path(__file__).resolve().parent
SKIP_REASON = netlab.have_lab_privileges()
MODES = {"offload": (), "plain": ("--no-offload",)}
"""Server flags for each data-path mode; the client follows the server's choice."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this whole directory, visibly, where labs cannot run (not root, no TUN)."""
    if SKIP_REASON is None:
        return
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=f"e2e: {SKIP_REASON}"))


def close_and_check(lab: netlab.Lab) -> None:
    lab.close()
    assert not lab.leftovers(), f"lab teardown left {lab.leftovers()}"


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., netlab.TunnelLab]]:
    """Build fresh labs for one test (logs, state and captures in ``tmp_path``); all are torn down after it."""
    labs: list[netlab.TunnelLab] = []

    def make(**kwargs: object) -> netlab.TunnelLab:
        lab = netlab.TunnelLab(tmp_path / f"lab{len(labs)}", **kwargs)  # type: ignore[arg-type]
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            close_and_check(lab)


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The server flags of one data-path mode (tests using this run once per mode)."""
    return MODES[request.param]


@pytest.fixture(scope="module", params=list(MODES))
def tunnel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[netlab.TunnelLab]:
    """One lab per module and mode, shared by its tests: a server and clients alice and bob, all running.

    Tests using it must leave the three processes running.
    """
    lab = netlab.TunnelLab(tmp_path_factory.mktemp(f"tunnel-{request.param}"))
    try:
        lab.start_server(*MODES[request.param])
        for name in ("alice", "bob"):
            lab.start_client(lab.add_client(name))
        yield lab
    finally:
        close_and_check(lab)
