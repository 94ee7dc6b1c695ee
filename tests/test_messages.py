"""Tests for messages.py: TAI64N timestamps and the two handshake payloads.

The replay rule compares timestamps as bytes, so the ordering property of tai64n() is what
the server's security depends on. Payload decoders see attacker-chosen bytes (message 1 is
decrypted before the client is known to be registered), so they must fail only with
MessageError.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages import (
    DEFAULT_MTU,
    MAX_MTU,
    MAX_PAYLOAD,
    MIN_MTU,
    TAI64N_LEN,
    ClientHello,
    MessageError,
    SessionSettings,
    tai64n,
)

NS = 1_000_000_000
# Keep the TAI64 label inside its 64 bits: from 2**62 seconds before 1970 to 2**63 after.
reasonable_ns = st.integers(-(2**62) * NS, 2**63 * NS)

SETTINGS = SessionSettings(
    address=ipaddress.IPv4Interface("10.0.0.2/24"),
    server_address=ipaddress.IPv4Address("10.0.0.1"),
)


def settings_json(**overrides: object) -> bytes:
    fields = {"address": "10.0.0.2/24", "server_address": "10.0.0.1"}
    fields.update(overrides)
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


# -- TAI64N ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unix_ns", "label"),
    [
        (0, "400000000000000000000000"),
        (1, "400000000000000000000001"),
        (NS - 1, "40000000000000003b9ac9ff"),
        (NS, "400000000000000100000000"),
        (1_500_000_000 * NS + 123_456_789, "4000000059682f00075bcd15"),
        (-1, "3fffffffffffffff3b9ac9ff"),
    ],
)
def test_tai64n_known_values(unix_ns, label):
    assert tai64n(unix_ns).hex() == label


def test_tai64n_known_value_spelled_out():
    seconds = 1_700_000_000
    got = tai64n(seconds * NS + 42)
    assert got == (2**62 + seconds).to_bytes(8, "big") + (42).to_bytes(4, "big")
    assert len(got) == TAI64N_LEN == 12


@given(a=reasonable_ns, b=reasonable_ns)
def test_tai64n_order_matches_time_order(a, b):
    if a < b:
        assert tai64n(a) < tai64n(b)
    elif a == b:
        assert tai64n(a) == tai64n(b)
    else:
        assert tai64n(a) > tai64n(b)


@given(unix_ns=reasonable_ns)
def test_tai64n_layout(unix_ns):
    label = tai64n(unix_ns)
    assert len(label) == 12
    assert int.from_bytes(label[:8], "big") == 2**62 + unix_ns // NS
    assert int.from_bytes(label[8:], "big") == unix_ns % NS < NS


# -- ClientHello ----------------------------------------------------------------------


def test_client_hello_encoding():
    ts = tai64n(1_700_000_000 * NS)
    assert ClientHello(ts).encode() == ts + b"{}"


@given(unix_ns=reasonable_ns)
def test_client_hello_round_trip(unix_ns):
    hello = ClientHello(tai64n(unix_ns))
    assert ClientHello.decode(hello.encode()) == hello


def test_client_hello_ignores_unknown_keys():
    ts = tai64n(5)
    assert ClientHello.decode(ts + b'{"future": [1, 2], "x": null}').timestamp == ts


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(11),
        bytes(12),  # timestamp, no JSON
        bytes(12) + b"[]",
        bytes(12) + b"null",
        bytes(12) + b'"{}"',
        bytes(12) + b"{",
        bytes(12) + b"\xff\xfe{}",
        bytes(12) + b"{}" + b" " * MAX_PAYLOAD,
        bytes(12) + b"[" * 500,
    ],
)
def test_client_hello_malformed(data):
    with pytest.raises(MessageError):
        ClientHello.decode(data)


@given(data=st.binary(max_size=600))
def test_client_hello_decode_raises_only_message_error(data):
    try:
        hello = ClientHello.decode(data)
    except MessageError:
        return
    assert hello.timestamp == data[:TAI64N_LEN]


# -- SessionSettings -------------------------------------------------------------------


def test_session_settings_encoding_is_compact_sorted_json():
    assert SETTINGS.encode() == (
        b'{"address":"10.0.0.2/24","dns":[],"mtu":1400,"offload":false,"routes":[],"server_address":"10.0.0.1"}'
    )


def test_session_settings_round_trip_full():
    s = SessionSettings(
        address=ipaddress.IPv4Interface("192.168.7.9/20"),
        server_address=ipaddress.IPv4Address("192.168.0.1"),
        mtu=9000,
        offload=True,
        routes=(ipaddress.IPv4Network("10.0.0.0/8"), ipaddress.IPv4Network("172.16.0.0/12")),
        dns=(ipaddress.IPv4Address("1.1.1.1"),),
    )
    assert SessionSettings.decode(s.encode()) == s


def test_session_settings_defaults_when_optional_keys_missing():
    s = SessionSettings.decode(settings_json())
    assert s == SETTINGS
    assert s.mtu == DEFAULT_MTU == 1400
    assert s.offload is False
    assert s.routes == ()
    assert s.dns == ()


def test_session_settings_ignores_unknown_keys():
    assert SessionSettings.decode(settings_json(future_feature={"a": 1})) == SETTINGS


ipv4_interfaces = st.builds(
    lambda ip, prefix: ipaddress.IPv4Interface(f"{ip}/{prefix}"), st.ip_addresses(v=4), st.integers(0, 32)
)
ipv4_networks = ipv4_interfaces.map(lambda i: i.network)


@given(
    address=ipv4_interfaces,
    server=st.ip_addresses(v=4),
    mtu=st.integers(576, 65535),
    offload=st.booleans(),
    routes=st.lists(ipv4_networks, max_size=4).map(tuple),
    dns=st.lists(st.ip_addresses(v=4), max_size=3).map(tuple),
)
def test_session_settings_round_trip_property(address, server, mtu, offload, routes, dns):
    s = SessionSettings(address, server, mtu, offload, routes, dns)
    assert SessionSettings.decode(s.encode()) == s


@pytest.mark.parametrize("mtu", [575, 65536, 0, -1, 1400.0, "1400", True, None, [1400]])
def test_session_settings_bad_mtu(mtu):
    with pytest.raises(MessageError):
        SessionSettings.decode(settings_json(mtu=mtu))


@pytest.mark.parametrize("mtu", [576, 65535])
def test_session_settings_mtu_bounds_accepted(mtu):
    assert SessionSettings.decode(settings_json(mtu=mtu)).mtu == mtu


@pytest.mark.parametrize("offload", [1, 0, "true", None, [], {}])
def test_session_settings_bad_offload(offload):
    with pytest.raises(MessageError):
        SessionSettings.decode(settings_json(offload=offload))


@pytest.mark.parametrize(
    "overrides",
    [
        {"address": ...},
        {"server_address": ...},
        {"address": "10.0.0.256/24"},
        {"address": "10.0.0.2/33"},
        {"address": "fd00::2/64"},
        {"address": ""},
        {"address": None},
        {"address": ["10.0.0.2/24"]},
        {"server_address": "10.0.0.1/24"},
        {"server_address": "::1"},
        {"server_address": "host.example"},
        {"routes": ["10.0.0.1/8"]},  # host bits set
        {"routes": ["nope"]},
        {"routes": None},
        {"routes": 5},
        {"dns": ["1.1.1"]},
        {"dns": [None]},
        {"dns": 8},
    ],
)
def test_session_settings_bad_values(overrides):
    with pytest.raises(MessageError):
        SessionSettings.decode(settings_json(**overrides))


@pytest.mark.parametrize(
    "overrides",
    [{"address": 167772162}, {"server_address": 167772161}, {"dns": [16843009]}, {"routes": [True]}],
)
def test_session_settings_non_string_addresses_rejected(overrides):
    with pytest.raises(MessageError):
        SessionSettings.decode(settings_json(**overrides))


@pytest.mark.parametrize(
    "data",
    [b"", b"[]", b"null", b"42", b'"x"', b"{", b"\xff", SETTINGS.encode() + b" " * MAX_PAYLOAD, b"{" * 600],
)
def test_session_settings_malformed(data):
    with pytest.raises(MessageError):
        SessionSettings.decode(data)


def test_payload_size_limit_checked_before_parsing():
    body = settings_json(pad="x" * (MAX_PAYLOAD - len(settings_json(pad=""))))
    assert len(body) == MAX_PAYLOAD
    assert SessionSettings.decode(body) == SETTINGS
    with pytest.raises(MessageError, match="too large"):
        SessionSettings.decode(body + b" ")


def assert_well_formed(decoded: SessionSettings) -> None:
    """What any accepted settings message must satisfy: typed fields, an MTU in range, and an
    encoding that decodes to the same settings (nothing accepted that we could not send)."""
    assert isinstance(decoded.address, ipaddress.IPv4Interface)
    assert isinstance(decoded.server_address, ipaddress.IPv4Address)
    assert isinstance(decoded.mtu, int) and not isinstance(decoded.mtu, bool) and MIN_MTU <= decoded.mtu <= MAX_MTU
    assert isinstance(decoded.offload, bool)
    assert all(isinstance(r, ipaddress.IPv4Network) for r in decoded.routes)
    assert all(isinstance(d, ipaddress.IPv4Address) for d in decoded.dns)
    assert SessionSettings.decode(decoded.encode()) == decoded


@given(data=st.binary(max_size=600))
def test_session_settings_decode_raises_only_message_error(data):
    try:
        decoded = SessionSettings.decode(data)
    except MessageError as exc:
        assert "\n" not in str(exc)
    else:
        assert_well_formed(decoded)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=4,
)


@settings(max_examples=100)
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            "address": json_values | ipv4_interfaces.map(str),
            "server_address": json_values | st.ip_addresses(v=4).map(str),
            "mtu": json_values,
            "offload": json_values,
            "routes": json_values,
            "dns": json_values,
        },
    )
)
def test_session_settings_structured_fuzz_raises_only_message_error(fields):
    """Well-formed JSON with every key possibly of the wrong type reaches deeper than random bytes."""
    try:
        decoded = SessionSettings.decode(json.dumps(fields).encode())
    except MessageError as exc:
        assert "\n" not in str(exc)
    else:
        assert_well_formed(decoded)
        assert str(decoded.address) == fields["address"] and decoded.mtu == fields.get("mtu", DEFAULT_MTU)


# -- the pushed timers (rekey_after, keepalive: PROTOCOL.md, sections 5.2 and 13.4) ----------


def test_session_settings_timers_are_sent_only_when_set():
    assert b"rekey_after" not in SETTINGS.encode()
    assert b"keepalive" not in SETTINGS.encode()
    fast = dataclasses.replace(SETTINGS, rekey_after=2.0, keepalive=0.5)
    assert fast.encode() == (
        b'{"address":"10.0.0.2/24","dns":[],"keepalive":0.5,"mtu":1400,"offload":false,'
        b'"rekey_after":2,"routes":[],"server_address":"10.0.0.1"}'
    )
    assert SessionSettings.decode(fast.encode()) == fast
    assert SessionSettings.decode(settings_json()).rekey_after is None


@pytest.mark.parametrize("value", [0, 0.09, 3601, -1, True, "2", None, [2]])
def test_session_settings_bad_timers(value):
    for key in ("rekey_after", "keepalive"):
        if value is None:
            assert getattr(SessionSettings.decode(settings_json(**{key: value})), key) is None
            continue
        with pytest.raises(MessageError, match=key):
            SessionSettings.decode(settings_json(**{key: value}))
