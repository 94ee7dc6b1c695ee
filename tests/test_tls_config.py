"""config.py in TLS mode: init --tls records the transport and makes a certificate; profiles
carry Transport, ServerName and (added by the user) Proxy."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from carrier import certificate_names, make_self_signed
from config import Profile, ServerState
from errors import UserError

LISTEN = "0.0.0.0:443"


def test_init_tls_makes_a_self_signed_pair_and_profiles_say_tls(tmp_path: Path) -> None:
    state = ServerState(tmp_path / "s")
    state.init(None, LISTEN, "vpn.example.test:443", tls=True)
    settings = state.settings()
    assert (settings.transport, settings.server_name) == ("tls", "vpn.example.test")
    assert settings.tls_cert == str(state.tls_cert_path)
    assert certificate_names(state.tls_cert_path.read_bytes()) == ["vpn.example.test"]
    assert stat.S_IMODE(state.tls_key_path.stat().st_mode) == 0o600
    _, text = state.add_client("alice", None)
    assert "Transport = tls\nServerName = vpn.example.test\n" in text
    profile = Profile.parse(text, "alice.conf")
    assert (profile.transport, profile.server_name, profile.proxy) == ("tls", "vpn.example.test", None)


def test_an_ip_endpoint_needs_a_server_name(tmp_path: Path) -> None:
    state = ServerState(tmp_path / "s")
    with pytest.raises(UserError, match="needs --server-name"):
        state.init(None, LISTEN, "192.0.2.1:443", tls=True)
    state.init(None, LISTEN, "192.0.2.1:443", tls=True, server_name="www.example.test")
    assert state.settings().server_name == "www.example.test"


def test_renaming_remakes_only_our_own_certificate(tmp_path: Path) -> None:
    state = ServerState(tmp_path / "s")
    state.init(None, LISTEN, "192.0.2.1:443", tls=True, server_name="a.example.test")
    state.init(None, None, None, server_name="b.example.test")
    assert certificate_names(state.tls_cert_path.read_bytes()) == ["b.example.test"]
    assert state.init(None, None, None) is False  # idempotent, and still TLS
    assert state.settings().transport == "tls"


def test_the_users_certificate_is_used_and_checked(tmp_path: Path) -> None:
    cert, key = make_self_signed("site.example.test")
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    other_key = make_self_signed("other.example.test")[1]
    (tmp_path / "other.pem").write_bytes(other_key)
    state = ServerState(tmp_path / "s")
    with pytest.raises(UserError, match="do not load as a pair"):
        state.init(
            None, LISTEN, "192.0.2.1:443", tls=True, cert=str(tmp_path / "c.pem"), key=str(tmp_path / "other.pem")
        )
    with pytest.raises(UserError, match="go together"):
        state.init(None, LISTEN, "192.0.2.1:443", tls=True, cert=str(tmp_path / "c.pem"))
    with pytest.raises(UserError, match="cannot read"):
        state.init(None, LISTEN, "192.0.2.1:443", tls=True, cert=str(tmp_path / "no.pem"), key=str(tmp_path / "k.pem"))
    state.init(None, LISTEN, "192.0.2.1:443", tls=True, cert=str(tmp_path / "c.pem"), key=str(tmp_path / "k.pem"))
    settings = state.settings()
    assert (settings.server_name, settings.tls_cert) == ("site.example.test", str(tmp_path / "c.pem"))
    assert not state.tls_cert_path.exists()


def test_no_tls_switches_back_and_tls_options_need_tls(tmp_path: Path) -> None:
    state = ServerState(tmp_path / "s")
    state.init(None, LISTEN, "vpn.example.test:443", tls=True)
    state.init(None, None, None, tls=False)
    assert state.settings().transport == "tcp"
    assert "transport" not in json.loads(state.settings_path.read_text())
    with pytest.raises(UserError, match="need --tls"):
        state.init(None, None, None, server_name="x.example.test")


PROFILE = """[Client]
PrivateKey = {key}
{client_extra}
[Server]
PublicKey = {key}
PresharedKey = {key}
Endpoint = vpn.example.test:443
{server_extra}
"""


def profile(client_extra: str = "", server_extra: str = "") -> str:
    return PROFILE.format(key="A" * 43 + "=", client_extra=client_extra, server_extra=server_extra)


def test_profile_proxy_and_bad_fields() -> None:
    parsed = Profile.parse(profile("Proxy = http://u:p@proxy.example:3128"), "p.conf")
    assert parsed.proxy == "http://u:p@proxy.example:3128"
    assert parsed.transport == "tcp"
    with pytest.raises(UserError, match=r"\[Client\] Proxy: proxy scheme 'ftp' is not supported") as info:
        Profile.parse(profile("Proxy = ftp://u:hunter2@proxy.example:21"), "p.conf")
    assert "hunter2" not in str(info.value)
    with pytest.raises(UserError, match="Transport must be one of tcp, tls"):
        Profile.parse(profile(server_extra="Transport = quic"), "p.conf")
    with pytest.raises(UserError, match="ServerName must be a DNS name"):
        Profile.parse(profile(server_extra="Transport = tls\nServerName = 192.0.2.1"), "p.conf")
