"""The systemd units in systemd/: ``systemd-analyze verify`` accepts them, and they keep the
promises README makes (Type=notify, the hardening settings, where the daemon's socket lives).

The units name /opt/tunlib, where scripts/install.sh puts the code; verify checks that
ExecStart's program exists, so the test renders them for this checkout, as install.sh renders
them for its --prefix.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd"
INSTALL_PREFIX = "/opt/tunlib"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def settings(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, values in order (keys may repeat)."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_analyze_verify_accepts_both_units_without_a_warning(tmp_path: Path) -> None:
    for unit in UNITS.glob("*.service"):
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALL_PREFIX, str(REPO)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "tunlib-client.service", "tunlib-server@etc-tunlib.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_verify_would_catch_a_missing_program(tmp_path: Path) -> None:
    text = (UNITS / "tunlib-client.service").read_text().replace(INSTALL_PREFIX, str(tmp_path / "nowhere"))
    (tmp_path / "tunlib-client.service").write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "tunlib-client.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 and "is not executable" in result.stderr


@pytest.mark.parametrize("name", ["tunlib-client.service", "tunlib-server@.service"])
def test_units_are_notify_services_with_the_hardening_readme_promises(name: str) -> None:
    unit = settings(UNITS / name)
    assert unit["Type"] == ["notify"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert "/var/lib/tunlib" in unit["ReadWritePaths"][0].split()
    capabilities = set(unit["CapabilityBoundingSet"][0].split())
    assert "CAP_NET_ADMIN" in capabilities and "CAP_SYS_ADMIN" not in capabilities
    assert unit["ExecStart"][0].startswith(f"{INSTALL_PREFIX}/.venv/bin/python {INSTALL_PREFIX}/")


def test_the_client_unit_runs_the_daemon_on_the_default_socket() -> None:
    unit = settings(UNITS / "tunlib-client.service")
    assert unit["RuntimeDirectory"] == ["tunlib"]
    assert unit["ExecStart"][0].endswith("client.py daemon --socket /run/tunlib/client.sock")
    server = settings(UNITS / "tunlib-server@.service")
    assert server["ExecStart"][0].endswith("server.py run --state-dir %f")
