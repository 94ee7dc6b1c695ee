"""Tests for config.py: the server state directory, client registry, profiles and endpoints.

Everything here runs in pytest's tmp_path, without root and without the network (init is
always given a specific listen address or an endpoint, so no default-route probe is made).
Every user mistake must come back as one UserError line, never a traceback.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import logging
import os
import re
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import server
from config import (
    CLIENT_NAME,
    DEFAULT_MTU,
    DEFAULT_PORT,
    KEY_LEN,
    Profile,
    ServerState,
    decode_key,
    encode_key,
    paired_address6,
    parse_endpoint,
    random_ula_prefix,
    write_private_file,
)
from errors import UserError
from handshake import public_key

LISTEN = "127.0.0.1:55555"


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def state(tmp_path) -> ServerState:
    s = ServerState(tmp_path / "state")
    s.init(None, LISTEN, None)
    return s


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text
    assert "\n" not in text
    return text


# -- keys ----------------------------------------------------------------------------


def test_key_encoding_round_trip():
    key = bytes(range(32))
    assert encode_key(key) == base64.b64encode(key).decode()
    assert decode_key(encode_key(key), "k") == key
    assert decode_key("  " + encode_key(key) + "\n", "k") == key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64!", "is not valid base64"),
        ("AAAA", "must be 32 bytes, got 3"),
        (base64.b64encode(bytes(33)).decode(), "must be 32 bytes, got 33"),
        ("", "must be 32 bytes, got 0"),
        ("é" * 44, "is not valid base64"),
        (encode_key(bytes(32))[:-1], "is not valid base64"),
    ],
)
def test_decode_key_errors_name_the_key(text, message):
    with pytest.raises(UserError) as exc:
        decode_key(text, "the key")
    assert one_line(exc).startswith("the key ")
    assert message in str(exc.value)


# -- init ----------------------------------------------------------------------------


def test_init_creates_files_with_private_modes(tmp_path):
    s = ServerState(tmp_path / "state")
    assert s.init(None, LISTEN, None) is True
    assert mode(s.dir) == 0o700
    assert mode(s.key_path) == 0o600
    assert mode(s.clients_dir) & 0o077 == 0
    key_text = s.key_path.read_text()
    assert key_text.endswith("\n")
    assert len(base64.b64decode(key_text.strip(), validate=True)) == KEY_LEN


def test_init_settings_file_contents(tmp_path):
    s = ServerState(tmp_path / "state")
    s.init(None, LISTEN, None)
    raw = json.loads(s.settings_path.read_text())
    subnet6 = ipaddress.IPv6Network(raw.pop("subnet6"))
    assert raw == {"subnet": "10.0.0.0/24", "listen": LISTEN, "endpoint": LISTEN, "mtu": DEFAULT_MTU}
    # RFC 4193: fd00::/8 with a random 40-bit global ID, subnet ID 0, a /64.
    assert subnet6.prefixlen == 64 and subnet6.subnet_of(ipaddress.IPv6Network("fd00::/8"))
    assert int(subnet6.network_address) >> 64 & 0xFFFF == 0
    loaded = s.settings()
    assert loaded.subnet6 == subnet6
    assert loaded.server_interface6 == ipaddress.IPv6Interface(f"{subnet6.network_address + 1}/64")
    assert loaded.subnet == ipaddress.IPv4Network("10.0.0.0/24")
    assert loaded.server_interface == ipaddress.IPv4Interface("10.0.0.1/24")
    assert (loaded.listen, loaded.endpoint, loaded.mtu) == (LISTEN, LISTEN, 1400)


def test_init_with_all_options(tmp_path):
    s = ServerState(tmp_path / "state")
    s.init("192.168.50.0/28", "0.0.0.0:4000", "vpn.example.com:443", "2001:db8:5::/96")
    assert json.loads(s.settings_path.read_text()) == {
        "subnet": "192.168.50.0/28",
        "subnet6": "2001:db8:5::/96",
        "listen": "0.0.0.0:4000",
        "endpoint": "vpn.example.com:443",
        "mtu": DEFAULT_MTU,
    }


def test_init_is_idempotent_and_keeps_the_key(state):
    key = state.key_path.read_text()
    settings_text = state.settings_path.read_text()
    assert state.init(None, None, None) is False
    assert state.init(None, LISTEN, None) is False
    assert state.key_path.read_text() == key
    assert state.settings_path.read_text() == settings_text


def test_init_updates_options_but_never_the_key(state):
    key = state.private_key()
    assert state.init(None, "127.0.0.1:6000", "vpn.example:6000") is True
    assert state.private_key() == key
    assert state.settings().listen == "127.0.0.1:6000"
    assert state.settings().endpoint == "vpn.example:6000"
    # Options not given again are kept.
    assert state.init(None, None, None) is False
    assert state.settings().endpoint == "vpn.example:6000"


def test_init_tightens_a_loose_existing_directory(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    ServerState(d).init(None, LISTEN, None)
    assert mode(d) == 0o700


def test_init_command_prints_the_same_public_key_twice(tmp_path, capsys):
    argv = ["init", "--state-dir", str(tmp_path / "s"), "--listen", LISTEN]
    for _ in range(2):
        args = server.build_parser().parse_args(argv)
        assert args.func(args) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first == second
    private = ServerState(tmp_path / "s").private_key()
    assert base64.b64decode(first) == public_key(private)


def test_default_endpoint_is_the_specific_listen_address(tmp_path):
    s = ServerState(tmp_path / "state")
    s.init(None, "192.0.2.7:1234", None)
    assert s.settings().endpoint == "192.0.2.7:1234"


def test_default_endpoint_for_ipv6_listen_keeps_the_port(tmp_path):
    s = ServerState(tmp_path / "state")
    s.init(None, "[::1]:5000", None)
    assert parse_endpoint(s.settings().endpoint) == ("::1", 5000)


@pytest.mark.parametrize(
    ("subnet", "listen", "endpoint"),
    [
        ("10.0.0.1/24", None, None),  # host bits set
        ("10.0.0.0/31", None, None),  # too small
        ("10.0.0.0/33", None, None),
        ("fd00::/64", None, None),
        ("nonsense", None, None),
        (None, "127.0.0.1:0", None),
        (None, "127.0.0.1:99999", None),
        (None, ":55555", None),
        (None, LISTEN, "host:port"),
    ],
)
def test_init_rejects_bad_options(tmp_path, subnet, listen, endpoint):
    with pytest.raises(UserError) as exc:
        ServerState(tmp_path / "state").init(subnet, listen or LISTEN, endpoint)
    one_line(exc)


def test_init_refuses_subnet_change_with_clients(state):
    state.add_client("alice", None)
    with pytest.raises(UserError, match="subnet"):
        state.init("10.9.0.0/24", None, None)
    assert state.settings().subnet == ipaddress.IPv4Network("10.0.0.0/24")


def test_init_allows_subnet_change_without_clients(state):
    state.init("10.9.0.0/24", None, None)
    assert state.settings().subnet == ipaddress.IPv4Network("10.9.0.0/24")


def test_uninitialised_directory_is_a_user_error(tmp_path):
    s = ServerState(tmp_path / "nothing")
    for call in (s.settings, s.private_key, lambda: s.add_client("a", None), lambda: s.remove_client("a")):
        with pytest.raises(UserError, match=re.escape("server.py init")) as exc:
            call()
        one_line(exc)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        "[]",
        '{"subnet": "10.0.0.0/24"}',
        '{"subnet": "x", "listen": "a:1", "endpoint": "a:1", "mtu": 1400}',
        '{"subnet": "10.0.0.0/24", "listen": "a:1", "endpoint": "a:1", "mtu": 100}',
        '{"subnet": "10.0.0.0/24", "listen": "a:1", "endpoint": "a:1", "mtu": "1400"}',
    ],
)
def test_corrupt_settings_file_is_a_user_error(state, content):
    state.settings_path.write_text(content)
    with pytest.raises(UserError) as exc:
        state.settings()
    one_line(exc)


@pytest.mark.parametrize("content", ["", "garbage", encode_key(bytes(31))])
def test_corrupt_key_file_is_a_user_error(state, content):
    state.key_path.write_text(content)
    with pytest.raises(UserError) as exc:
        state.private_key()
    assert "server.key" in one_line(exc)


def test_write_private_file_tightens_an_existing_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text("old")
    os.chmod(path, 0o644)
    write_private_file(path, "new")
    assert mode(path) == 0o600
    assert path.read_text() == "new"


# -- add-client ----------------------------------------------------------------------


def test_add_client_assigns_next_free_addresses(state):
    addresses = [state.add_client(name, None)[0].address for name in ("a", "b", "c")]
    assert addresses == [ipaddress.IPv4Address(f"10.0.0.{i}") for i in (2, 3, 4)]


def test_add_client_reuses_a_removed_address(state):
    for name in ("a", "b", "c"):
        state.add_client(name, None)
    state.remove_client("b")
    record, _ = state.add_client("d", None)
    assert record.address == ipaddress.IPv4Address("10.0.0.3")


def test_add_client_skips_explicitly_taken_addresses(state):
    state.add_client("a", "10.0.0.2")
    state.add_client("b", "10.0.0.4")
    assert state.add_client("c", None)[0].address == ipaddress.IPv4Address("10.0.0.3")
    assert state.add_client("d", None)[0].address == ipaddress.IPv4Address("10.0.0.5")


def test_add_client_record_file_and_mode(state):
    record, profile_text = state.add_client("alice", None)
    path = state.clients_dir / "alice.json"
    assert mode(path) == 0o600
    raw = json.loads(path.read_text())
    address6 = str(state.settings().subnet6.network_address + 2)  # paired with 10.0.0.2
    assert raw == {
        "public_key": encode_key(record.public_key),
        "psk": encode_key(record.psk),
        "address": "10.0.0.2",
        "address6": address6,
    }
    # The server forgets the private key: it is only in the profile.
    profile = Profile.parse(profile_text, "alice.conf")
    assert encode_key(profile.private_key) not in path.read_text()
    assert state.clients() == [record]


def test_add_client_profile_matches_registry(state):
    record, text = state.add_client("alice", None)
    profile = Profile.parse(text, "alice.conf")
    assert profile.name == "alice"
    assert public_key(profile.private_key) == record.public_key
    assert profile.server_public_key == state.public_key()
    assert profile.psk == record.psk
    assert profile.endpoint == state.settings().endpoint
    assert "10.0.0.2/24" in text
    assert record.psk != bytes(KEY_LEN)


def test_add_client_generates_fresh_keys_each_time(state):
    a, _ = state.add_client("a", None)
    b, _ = state.add_client("b", None)
    assert a.public_key != b.public_key
    assert a.psk != b.psk


def test_add_client_explicit_address(state):
    record, text = state.add_client("alice", "10.0.0.200")
    assert record.address == ipaddress.IPv4Address("10.0.0.200")
    assert "10.0.0.200/24" in text


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("10.0.0.1", "already in use"),  # the server's own address
        ("10.0.0.0", "not a host address"),  # network address
        ("10.0.0.255", "not a host address"),  # broadcast
        ("10.0.1.5", "not a host address"),
        ("192.168.0.2", "not a host address"),
        ("10.0.0", "bad address"),
        ("10.0.0.2/24", "bad address"),
        ("fd00::2", "bad address"),
        ("", "bad address"),
    ],
)
def test_add_client_bad_address(state, address, message):
    with pytest.raises(UserError, match=message) as exc:
        state.add_client("alice", address)
    one_line(exc)
    assert not (state.clients_dir / "alice.json").exists()


def test_add_client_address_taken_by_another_client(state):
    state.add_client("alice", None)
    with pytest.raises(UserError, match="already in use"):
        state.add_client("bob", "10.0.0.2")
    assert [c.name for c in state.clients()] == ["alice"]


def test_add_client_subnet_full(tmp_path):
    s = ServerState(tmp_path / "state")
    s.init("10.0.0.0/30", LISTEN, None)  # hosts .1 (server) and .2
    assert s.add_client("a", None)[0].address == ipaddress.IPv4Address("10.0.0.2")
    with pytest.raises(UserError, match="no free address"):
        s.add_client("b", None)


def test_add_client_duplicate_name(state):
    first, _ = state.add_client("alice", None)
    with pytest.raises(UserError, match="already exists") as exc:
        state.add_client("alice", None)
    one_line(exc)
    assert state.clients() == [first]


@pytest.mark.parametrize(
    "name",
    ["", "-alice", ".alice", "_a", "a b", "a/b", "../server", "..", "a\n", "ä", "a" * 33, "alice.json/x", "a:b"],
)
def test_add_client_bad_names(state, name):
    with pytest.raises(UserError, match="bad client name") as exc:
        state.add_client(name, None)
    one_line(exc)
    assert state.clients() == []
    assert sorted(p.name for p in state.dir.iterdir()) == ["clients", "server.json", "server.key"]


@pytest.mark.parametrize("name", ["a", "A9", "alice.laptop", "bob_2", "x-y", "a" * 32])
def test_add_client_good_names(state, name):
    assert CLIENT_NAME.fullmatch(name)
    assert state.add_client(name, None)[0].name == name


def test_add_client_on_a_slash_16(tmp_path):
    s = ServerState(tmp_path / "state")
    s.init("10.0.0.0/16", LISTEN, None)
    assert s.add_client("a", None)[0].address == ipaddress.IPv4Address("10.0.0.2")


def test_add_client_on_a_slash_8_enumerates_few_addresses(tmp_path, monkeypatch):
    s = ServerState(tmp_path / "state")
    s.init("10.0.0.0/8", LISTEN, None)
    real_hosts = ipaddress.IPv4Network.hosts
    budget = 10_000

    def counting_hosts(self):
        for n, ip in enumerate(real_hosts(self)):
            if n >= budget:
                raise AssertionError(f"add_client enumerated more than {budget} addresses of {self}")
            yield ip

    monkeypatch.setattr(ipaddress.IPv4Network, "hosts", counting_hosts)
    assert s.add_client("a", None)[0].address == ipaddress.IPv4Address("10.0.0.2")
    assert s.add_client("b", "10.200.0.9")[0].address == ipaddress.IPv4Address("10.200.0.9")


@pytest.mark.parametrize(
    "content",
    [
        "{",
        "[]",
        "{}",
        '{"public_key": "x", "psk": "x", "address": "10.0.0.2"}',
        json.dumps({"public_key": encode_key(bytes(32)), "psk": encode_key(bytes(32)), "address": "nope"}),
        json.dumps({"public_key": encode_key(bytes(32)), "psk": encode_key(bytes(32)), "address": "fd00::2"}),
        json.dumps({"public_key": encode_key(bytes(32)), "psk": encode_key(bytes(32))}),
    ],
)
def test_corrupt_client_record_is_a_user_error(state, content):
    (state.clients_dir / "broken.json").write_text(content)
    with pytest.raises(UserError, match=re.escape("broken.json")) as exc:
        state.clients()
    one_line(exc)


# -- remove-client ------------------------------------------------------------------


def test_remove_client(state):
    state.add_client("alice", None)
    state.add_client("bob", None)
    state.remove_client("alice")
    assert [c.name for c in state.clients()] == ["bob"]
    assert not (state.clients_dir / "alice.json").exists()


def test_remove_unknown_client(state):
    with pytest.raises(UserError, match="unknown client") as exc:
        state.remove_client("nobody")
    one_line(exc)


@pytest.mark.parametrize("name", ["../server", "../server.key", "", "a/b"])
def test_remove_client_bad_name_never_touches_other_files(state, name):
    with pytest.raises(UserError, match="unknown client"):
        state.remove_client(name)
    assert state.settings_path.exists()
    assert state.key_path.exists()


# -- profiles ------------------------------------------------------------------------

PROFILE = Profile("alice", bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96)), "vpn.example.com:55555")


def test_profile_render_known_text():
    text = PROFILE.render("10.0.0.2/24")
    assert text.splitlines()[3:] == [
        "[Client]",
        "Name = alice",
        f"PrivateKey = {encode_key(bytes(range(32)))}",
        "",
        "[Server]",
        f"PublicKey = {encode_key(bytes(range(32, 64)))}",
        f"PresharedKey = {encode_key(bytes(range(64, 96)))}",
        "Endpoint = vpn.example.com:55555",
    ]
    assert "10.0.0.2/24" in text.splitlines()[2]


def test_profile_render_parse_round_trip():
    assert Profile.parse(PROFILE.render("10.0.0.2/24"), "p") == PROFILE


keys = st.binary(min_size=32, max_size=32)
names = st.from_regex(CLIENT_NAME, fullmatch=True)
hosts = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?){0,2}", fullmatch=True
) | (st.ip_addresses(v=4).map(str))
"""Host names as the profile accepts them: dot-separated labels of 1-63 characters (not '0..')."""
endpoints = (
    st.builds(lambda h, p: f"{h}:{p}", hosts, st.integers(1, 65535))
    | hosts
    | st.ip_addresses(v=6).map(lambda a: f"[{a}]:443")
)


@given(name=names, private=keys, server_key=keys, psk=keys, endpoint=endpoints)
def test_profile_round_trip_property(name, private, server_key, psk, endpoint):
    profile = Profile(name, private, server_key, psk, endpoint)
    assert Profile.parse(profile.render("10.0.0.2/24"), "p") == profile


def test_profile_name_defaults_to_client():
    text = PROFILE.render("x").replace("Name = alice\n", "")
    assert Profile.parse(text, "p").name == "client"


def test_profile_keys_are_case_insensitive_and_comments_allowed():
    text = PROFILE.render("x").replace("PrivateKey", "privatekey") + "; trailing comment\n"
    assert Profile.parse(text, "p") == PROFILE


VALID = PROFILE.render("10.0.0.2/24")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "missing 'Client'"),
        ("just some text\n", "not a valid profile"),
        (VALID.replace("[Client]", "[Klient]"), "missing 'Client'"),
        (VALID.replace("[Server]", "[Service]"), "missing 'Server'"),
        (VALID.replace("PrivateKey", "PrivKey"), "missing 'PrivateKey'"),
        (VALID.replace("PublicKey", "PubKey"), "missing 'PublicKey'"),
        (VALID.replace("PresharedKey", "Psk"), "missing 'PresharedKey'"),
        (VALID.replace("Endpoint", "Endpont"), "missing 'Endpoint'"),
        (VALID.replace(encode_key(bytes(range(32))), "%%%not-base64%%%"), "[Client] PrivateKey is not valid base64"),
        (VALID.replace(encode_key(bytes(range(32, 64))), "AAAA"), "[Server] PublicKey must be 32 bytes, got 3"),
        (
            VALID.replace(encode_key(bytes(range(64, 96))), encode_key(bytes(31))),
            "[Server] PresharedKey must be 32 bytes, got 31",
        ),
        (VALID.replace("vpn.example.com:55555", "vpn.example.com:0"), "bad port"),
        (VALID.replace("vpn.example.com:55555", "vpn.example.com:http"), "bad port"),
        (VALID.replace("vpn.example.com:55555", ":55555"), "bad address"),
        (VALID.replace("vpn.example.com:55555", ""), "bad address"),
        (VALID + "[Client]\n", "not a valid profile"),  # duplicate section
        (VALID.replace("Name = alice", "Name = alice\nName = bob"), "not a valid profile"),  # duplicate key
        ("[Client]\nPrivateKey\n", "not a valid profile"),
    ],
)
def test_profile_parse_malformed(text, fragment):
    with pytest.raises(UserError) as exc:
        Profile.parse(text, "alice.conf")
    message = one_line(exc)
    assert fragment in message


def test_profile_parse_errors_name_the_source():
    for text in ("", VALID.replace("PrivateKey", "X"), VALID.replace(encode_key(bytes(range(32))), "AAAA")):
        with pytest.raises(UserError, match="^" + re.escape("/etc/tunlib/alice.conf: ")):
            Profile.parse(text, "/etc/tunlib/alice.conf")


@given(text=st.text(max_size=300))
def test_profile_parse_arbitrary_text_raises_only_user_error(text):
    try:
        Profile.parse(text, "p")
    except UserError as exc:
        assert "\n" not in str(exc)


profile_lines = st.sampled_from(
    [
        "[Client]",
        "[Server]",
        "[DEFAULT]",
        "Name = x",
        f"PrivateKey = {encode_key(bytes(32))}",
        f"PublicKey = {encode_key(bytes(32))}",
        f"PresharedKey = {encode_key(bytes(32))}",
        "Endpoint = h:1",
        "PrivateKey = AAAA",
        "Endpoint =",
        "  continued",
        "# c",
        "=",
        "[",
        "]",
    ]
) | st.text(alphabet=st.characters(codec="ascii"), max_size=30)


@settings(max_examples=150)
@given(lines=st.lists(profile_lines, max_size=12))
def test_profile_parse_structured_fuzz_raises_only_user_error(lines):
    """Lines that look like a profile reach far deeper into the parser than random text."""
    try:
        Profile.parse("\n".join(lines), "p")
    except UserError as exc:
        assert "\n" not in str(exc)


@given(value=st.text(alphabet=st.characters(codec="ascii"), max_size=40))
def test_profile_endpoint_fuzz_raises_only_user_error(value):
    text = VALID.replace("vpn.example.com:55555", value.replace("\n", " ").replace("\r", " "))
    try:
        profile = Profile.parse(text, "p")
    except UserError as exc:
        assert "\n" not in str(exc)
    else:  # an accepted endpoint is one the client can dial: a host and a port in range
        host, port = parse_endpoint(profile.endpoint)
        assert host and 1 <= port <= 65535


def test_profile_load(tmp_path):
    path = tmp_path / "alice.conf"
    write_private_file(path, VALID)
    assert Profile.load(str(path)) == PROFILE


def test_profile_load_missing_file(tmp_path):
    with pytest.raises(UserError, match="cannot read profile") as exc:
        Profile.load(str(tmp_path / "missing.conf"))
    one_line(exc)


def test_profile_load_not_utf8(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_bytes(b"[Client]\nName = \xff\xfe\n")
    with pytest.raises(UserError, match="not UTF-8") as exc:
        Profile.load(str(path))
    one_line(exc)


def test_profile_load_warns_when_readable_by_others(tmp_path, caplog):
    path = tmp_path / "alice.conf"
    path.write_text(VALID)
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="config"):
        Profile.load(str(path))
    assert "chmod 600" in caplog.text
    caplog.clear()
    os.chmod(path, 0o600)
    with caplog.at_level(logging.WARNING, logger="config"):
        Profile.load(str(path))
    assert caplog.text == ""


# -- endpoints -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("vpn.example.com:443", ("vpn.example.com", 443)),
        ("vpn.example.com", ("vpn.example.com", DEFAULT_PORT)),
        ("192.0.2.1:1", ("192.0.2.1", 1)),
        ("192.0.2.1:65535", ("192.0.2.1", 65535)),
        ("192.0.2.1", ("192.0.2.1", DEFAULT_PORT)),
        ("[::1]:443", ("::1", 443)),
        ("[2001:db8::7]:55555", ("2001:db8::7", 55555)),
        ("[fe80::1]", ("fe80::1", DEFAULT_PORT)),
        ("::1", ("::1", DEFAULT_PORT)),  # bare IPv6 host
        ("  host:80 \n", ("host", 80)),
        ("host:0080", ("host", 80)),
    ],
)
def test_parse_endpoint(text, parsed):
    assert parse_endpoint(text) == parsed


def test_parse_endpoint_default_port_argument():
    assert parse_endpoint("host", default_port=7) == ("host", 7)
    assert parse_endpoint("[::1]", default_port=7) == ("::1", 7)
    assert parse_endpoint("host:8", default_port=7) == ("host", 8)


@pytest.mark.parametrize(
    "text",
    [
        "host:0",
        "host:65536",
        "host:99999",
        "host:-1",
        "host:+80",
        "host:abc",
        "host:8o",
        "host: 80",
        "[::1]:0",
        "[::1]:x",
        "[::1]:65536",
        ":80",
        "",
        "   ",
        "[]:80",
        "[]",
    ],
)
def test_parse_endpoint_rejects(text):
    with pytest.raises(UserError) as exc:
        parse_endpoint(text)
    one_line(exc)


@pytest.mark.parametrize("text", ["host:²", "host:" + "9" * 5000, "[::1]:¹"])
def test_parse_endpoint_odd_digits_raise_user_error(text):
    with pytest.raises(UserError):
        parse_endpoint(text)


def test_profile_with_odd_digit_port_raises_user_error():
    with pytest.raises(UserError):
        Profile.parse(VALID.replace("vpn.example.com:55555", "vpn.example.com:\u00b2"), "p")


@pytest.mark.parametrize("text", ["[::1]555", "[::1"])
def test_parse_endpoint_malformed_brackets_rejected(text):
    with pytest.raises(UserError):
        parse_endpoint(text)


@given(text=st.text(max_size=40))
def test_parse_endpoint_ascii_fuzz(text):
    """Any ASCII input either parses to a host and a valid port or raises UserError."""
    text = text.encode("ascii", "replace").decode()
    try:
        host, port = parse_endpoint(text)
    except UserError:
        return
    assert host
    assert 1 <= port <= 65535


# -- IPv6 addresses ------------------------------------------------------------------


def test_random_ula_prefixes_differ_and_are_ula():
    prefixes = {random_ula_prefix() for _ in range(50)}
    assert len(prefixes) == 50
    assert all(p.prefixlen == 64 and p.subnet_of(ipaddress.IPv6Network("fd00::/8")) for p in prefixes)


@given(host=st.integers(min_value=1, max_value=254))
def test_paired_address6_keeps_the_host_number(host):
    subnet = ipaddress.IPv4Network("10.0.0.0/24")
    subnet6 = ipaddress.IPv6Network("2001:db8:1::/64")
    paired = paired_address6(subnet.network_address + host, subnet, subnet6)
    assert paired == subnet6.network_address + host


def test_add_client_address6_explicit_and_paired(tmp_path):
    s = ServerState(tmp_path / "state")
    s.init(None, LISTEN, None, "2001:db8:7::/64")
    alice, alice_text = s.add_client("alice", None, "2001:db8:7::3")
    bob, _ = s.add_client("bob", None)  # 10.0.0.3, whose pair ::3 alice took
    assert alice.address6 == ipaddress.IPv6Address("2001:db8:7::3")
    assert bob.address == ipaddress.IPv4Address("10.0.0.3")
    assert bob.address6 == ipaddress.IPv6Address("2001:db8:7::2")
    assert "2001:db8:7::3/64" in alice_text
    assert {c.address6 for c in s.clients()} == {alice.address6, bob.address6}


@pytest.mark.parametrize(
    ("address6", "message"),
    [
        ("2001:db8:8::5", "is not a host address of 2001:db8:7::/64"),
        ("2001:db8:7::1", "already in use"),
        ("10.0.0.9", "expected an IPv6 address"),
    ],
)
def test_add_client_address6_refused(tmp_path, address6, message):
    s = ServerState(tmp_path / "state")
    s.init(None, LISTEN, None, "2001:db8:7::/64")
    with pytest.raises(UserError, match=message):
        s.add_client("alice", None, address6)
    assert s.clients() == []


@pytest.mark.parametrize("subnet6", ["ff02::/64", "fe80::/64", "2001:db8::/127", "10.0.0.0/8", "zz::/64"])
def test_init_refuses_bad_subnet6(tmp_path, subnet6):
    with pytest.raises(UserError, match="IPv6 subnet"):
        ServerState(tmp_path / "state").init(None, LISTEN, None, subnet6)


def test_record_without_address6_gets_the_paired_one(tmp_path):
    s = ServerState(tmp_path / "state")
    s.init(None, LISTEN, None, "2001:db8:9::/64")
    s.add_client("alice", "10.0.0.20")
    path = s.clients_dir / "alice.json"
    raw = json.loads(path.read_text())
    del raw["address6"]  # as written before IPv6 existed
    path.write_text(json.dumps(raw))
    (old,) = s.clients()
    assert old.address6 is None
    assert s.settings().client_address6(old) == ipaddress.IPv6Address("2001:db8:9::14")


def test_subnet6_none_turns_ipv6_off_and_stays_off(tmp_path):
    s = ServerState(tmp_path / "state")
    s.init(None, LISTEN, None, "none")
    assert json.loads(s.settings_path.read_text())["subnet6"] is None
    s.init(None, LISTEN, None)  # again without --subnet6: still off
    assert s.settings().subnet6 is None
    record, _ = s.add_client("alice", None)
    assert record.address6 is None
    assert "address6" not in json.loads((s.clients_dir / "alice.json").read_text())
    assert s.settings().client_address6(record) is None
    with pytest.raises(UserError, match="no IPv6 subnet"):
        s.add_client("bob", None, "fd00::5")


def test_a_directory_from_before_ipv6_gets_a_prefix_on_init(tmp_path):
    s = ServerState(tmp_path / "state")
    s.init(None, LISTEN, None)
    raw = json.loads(s.settings_path.read_text())
    del raw["subnet6"]
    s.settings_path.write_text(json.dumps(raw))
    assert s.settings().subnet6 is None
    assert s.init(None, None, None) is True
    assert s.settings().subnet6 is not None


def test_subnet6_cannot_change_under_registered_clients(tmp_path):
    s = ServerState(tmp_path / "state")
    s.init(None, LISTEN, None, "2001:db8:1::/64")
    s.add_client("alice", None)
    with pytest.raises(UserError, match="cannot change the IPv6 subnet"):
        s.init(None, None, None, "2001:db8:2::/64")
    with pytest.raises(UserError, match="cannot change the IPv6 subnet"):
        s.init(None, None, None, "none")
    assert s.init(None, None, None, "2001:db8:1::/64") is False


# -- hostile hosts, files and modes ------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "vpn..example:55555",
        ".vpn.example:1",
        "a" * 64 + ".example:1",
        ".".join(["a" * 63] * 4) + ":1",  # 255 characters
        "xn--zz-\u00e9.example:1",  # no IDNA encoding
    ],
)
def test_parse_endpoint_rejects_hosts_the_resolver_would_choke_on(text):
    with pytest.raises(UserError, match="bad host") as exc:
        parse_endpoint(text)
    one_line(exc)


@pytest.mark.parametrize("host", ["vpn.example.", "a" * 63 + ".example", "b\u00fccher.example", "localhost"])
def test_parse_endpoint_accepts_valid_names(host):
    assert parse_endpoint(f"{host}:443") == (host, 443)


@given(text=st.text(max_size=80))
def test_any_accepted_host_can_be_handed_to_the_resolver(text):
    """What parse_endpoint accepts, getaddrinfo can encode: no UnicodeError traceback later."""
    try:
        host, _port = parse_endpoint(text)
    except UserError:
        return
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return
    host.encode("idna")


def test_profile_load_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(UserError, match="not a regular file") as exc:
        Profile.load(str(fifo))
    one_line(exc)


def test_profile_load_refuses_a_huge_file(tmp_path):
    path = tmp_path / "huge.conf"
    write_private_file(path, VALID + "#" * (1 << 20))
    with pytest.raises(UserError, match="more than") as exc:
        Profile.load(str(path))
    one_line(exc)


def test_server_key_readable_by_others_is_a_warning_at_run(state, caplog):
    with caplog.at_level(logging.WARNING, logger="config"):
        state.private_key_for_run()
    assert caplog.text == ""
    os.chmod(state.key_path, 0o644)
    with caplog.at_level(logging.WARNING, logger="config"):
        assert state.private_key_for_run() == state.private_key()
    assert "group/other" in caplog.text
    assert "chmod 600" in caplog.text


def test_server_key_fifo_is_a_user_error(state):
    state.key_path.unlink()
    os.mkfifo(state.key_path, 0o600)
    with pytest.raises(UserError, match="not a regular file"):
        state.private_key()
