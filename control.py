"""The local control protocol between ``client.py``'s user commands and ``client.py daemon``.

Pure: no sockets, no clocks. The daemon and the command-line client both use these functions,
and the unit tests drive them directly. The wire format (PROTOCOL.md, "Control protocol
(local)") is one JSON object per line, UTF-8, ``\\n``-terminated, in both directions::

    -> {"version": 1, "command": "connect", "pick": "best", "kill_switch": true}
    <- {"version": 1, "progress": "dialing home at 192.0.2.1:443"}
    <- {"version": 1, "ok": true, "result": {...}}

Every request is checked strictly before anything acts on it: the version, the command, the
exact set of fields and each field's type and range. Anything else earns an error reply
(:class:`ControlError`), never an exception escaping into the daemon.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from config import CLIENT_NAME

CONTROL_VERSION = 1
"""The ``version`` field of every request and reply; a request with another version is refused."""
MAX_LINE = 256 * 1024
"""Longest request line (a profile is about 500 bytes). Longer ones are refused and the
connection closed, so one caller cannot make the daemon buffer without bound."""
MAX_PROFILE_TEXT = 64 * 1024
MAX_ROUTES = 64
PICKS = ("first", "best", "random")
"""How ``connect`` orders its candidates: as listed, by handshake time, or shuffled."""
STATES = ("disconnected", "connecting", "connected", "reconnecting")
STATUS_KEYS = (
    "state",
    "profile",
    "endpoint",
    "address",
    "connected_since",
    "last_handshake",
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "dropped",
    "routes",
    "dns",
    "kill_switch",
)
"""Exactly the keys of ``status`` (and of ``client.py status --json``), in this order."""


class ControlError(Exception):
    """A request the daemon refuses; the message goes back to the caller as ``error``."""


@dataclass(frozen=True)
class Field:
    """One allowed request field: its JSON type and whether it must be present."""

    kind: type | tuple[type, ...]
    required: bool = False


COMMANDS: dict[str, dict[str, Field]] = {
    "status": {},
    "list": {},
    "import": {"name": Field(str, required=True), "profile": Field(str, required=True)},
    "remove": {"name": Field(str, required=True)},
    "connect": {
        "name": Field((str, type(None))),
        "pick": Field(str),
        "full_tunnel": Field(bool),
        "routes": Field(list),
        "kill_switch": Field(bool),
    },
    "disconnect": {"force": Field(bool)},
}
"""Every command and the fields it takes besides ``version`` and ``command``."""


@dataclass(frozen=True)
class Request:
    """A validated request: ``command`` and its fields, defaults filled in."""

    command: str
    fields: dict[str, Any]


def _is(value: object, kind: type | tuple[type, ...]) -> bool:
    """isinstance, except that a JSON ``true`` is not an integer here."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def parse_request(line: bytes) -> Request:
    """Decode and validate one request line (without its newline)."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: [[[[... nested too deep
        raise ControlError("request is not a JSON object on one line") from None
    if not isinstance(obj, dict):
        raise ControlError("request is not a JSON object on one line")
    version = obj.get("version")
    if not _is(version, int):
        raise ControlError("request needs an integer 'version'")
    if version != CONTROL_VERSION:
        raise ControlError(f"control protocol version {version} is not supported (the daemon speaks {CONTROL_VERSION})")
    command = obj.get("command")
    if not isinstance(command, str) or command not in COMMANDS:
        raise ControlError(f"unknown command {command!r}: expected one of {', '.join(COMMANDS)}")
    spec = COMMANDS[command]
    fields = {k: v for k, v in obj.items() if k not in ("version", "command")}
    unknown = sorted(set(fields) - set(spec))
    if unknown:
        raise ControlError(f"{command}: unknown field(s) {', '.join(map(repr, unknown))}")
    for key, field in spec.items():
        if key not in fields:
            if field.required:
                raise ControlError(f"{command}: missing field {key!r}")
            continue
        if not _is(fields[key], field.kind):
            raise ControlError(f"{command}: field {key!r} has the wrong type")
    return Request(command, _check_values(command, fields))


def _check_values(command: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The range checks beyond JSON types, and defaults for absent optional fields."""
    name = fields.get("name")
    if name is not None and not CLIENT_NAME.fullmatch(name):
        raise ControlError(f"bad profile name {name!r}: use 1-32 letters, digits, '.', '_' or '-'")
    if command == "import" and len(fields["profile"]) > MAX_PROFILE_TEXT:
        raise ControlError(f"profile longer than {MAX_PROFILE_TEXT} characters")
    if command == "connect":
        fields = {"name": None, "pick": "first", "full_tunnel": False, "routes": [], "kill_switch": False, **fields}
        if fields["pick"] not in PICKS:
            raise ControlError(f"connect: 'pick' must be one of {', '.join(PICKS)}")
        routes = fields["routes"]
        if len(routes) > MAX_ROUTES or not all(isinstance(r, str) for r in routes):
            raise ControlError(f"connect: 'routes' must be a list of at most {MAX_ROUTES} CIDR strings")
        fields["routes"] = [str(parse_cidr(r)) for r in routes]
        if fields["full_tunnel"] and fields["routes"]:
            raise ControlError("connect: 'full_tunnel' and 'routes' exclude each other")
    if command == "disconnect":
        fields = {"force": False, **fields}
    return fields


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise ControlError(f"not an IPv4 network: {text!r}") from None


# -- encoding -------------------------------------------------------------------------


def encode(message: dict[str, Any]) -> bytes:
    """One line: the message with ``version`` first, compact JSON, ``\\n``."""
    return json.dumps({"version": CONTROL_VERSION, **message}, separators=(",", ":")).encode() + b"\n"


def request(command: str, **fields: Any) -> bytes:
    return encode({"command": command, **fields})


def ok_reply(result: dict[str, Any] | list[Any] | None = None) -> bytes:
    return encode({"ok": True, "result": result if result is not None else {}})


def error_reply(message: str) -> bytes:
    return encode({"ok": False, "error": message})


def progress_reply(message: str) -> bytes:
    return encode({"progress": message})


def parse_reply(line: bytes) -> dict[str, Any]:
    """Decode a reply line (the command-line client's side); malformed is a ControlError."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ControlError("the daemon sent something that is not JSON") from None
    if not isinstance(obj, dict) or obj.get("version") != CONTROL_VERSION:
        raise ControlError("the daemon speaks another control protocol version")
    if "progress" in obj and isinstance(obj["progress"], str):
        return obj
    if obj.get("ok") is True and "result" in obj:
        return obj
    if obj.get("ok") is False and isinstance(obj.get("error"), str):
        return obj
    raise ControlError("the daemon sent a reply this client does not understand")


class LineBuffer:
    """Cut a byte stream into lines of at most ``limit`` bytes.

    ``feed`` returns the complete lines so far; once the pending partial line exceeds
    ``limit`` it raises :class:`ControlError`, and the caller closes the connection.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._pending = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._pending += data
        while True:
            end = self._pending.find(b"\n")
            if end < 0:
                break
            if end > self.limit:
                raise ControlError(f"request longer than {self.limit} bytes")
            line = bytes(self._pending[:end])
            del self._pending[: end + 1]
            yield line
        if len(self._pending) > self.limit:
            raise ControlError(f"request longer than {self.limit} bytes")

    @property
    def partial(self) -> bool:
        """Bytes of an unfinished line are waiting (a caller that hung up mid-request)."""
        return bool(self._pending)


# -- authorization and choice -----------------------------------------------------------


def authorized(uid: int, groups: Sequence[int], allowed_gid: int | None) -> bool:
    """May a caller with ``uid`` and these group ids control the daemon?

    Root may; so may any member of the daemon's group (``tunlib``). ``allowed_gid`` is None when
    that group does not exist, and then only root may.
    """
    return uid == 0 or (allowed_gid is not None and allowed_gid in groups)


def order_candidates(candidates: Sequence[Any], pick: str, rng: random.Random) -> list[Any]:
    """The order to try candidates in for ``first`` or ``random`` (``best`` needs measurements)."""
    ordered = list(candidates)
    if pick == "random":
        rng.shuffle(ordered)
    return ordered


def rank_by_handshake(measured: Sequence[tuple[Any, float | None]]) -> list[Any]:
    """``best``: candidates that answered, fastest handshake first, then those that did not
    (kept last, in their order, so failover can still try them later)."""
    answered = sorted((seconds, i) for i, (_c, seconds) in enumerate(measured) if seconds is not None)
    failed = [c for c, seconds in measured if seconds is None]
    return [measured[i][0] for _s, i in answered] + failed


# -- what status shows -------------------------------------------------------------------


def drop_counters(counters: object | None) -> dict[str, int]:
    """The ``dropped_*`` fields of a :class:`tunlib.Counters`, without the prefix (``{"ipv6": 0}``)."""
    if counters is None:
        return {}
    names = [f.name for f in dataclasses.fields(counters) if f.name.startswith("dropped_")]  # type: ignore[arg-type]
    return {name.removeprefix("dropped_"): getattr(counters, name) for name in names}


def iso_time(seconds: float | None) -> str | None:
    """A ``time.time()`` value as ISO 8601 UTC (``2026-12-01T23:59:00Z``), None as None."""
    return None if seconds is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
