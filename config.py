"""Keys, the server's state directory, and client profiles.

Server state directory (created by ``server.py init``, mode 0700)::

    DIR/server.json         settings: subnet, subnet6, listen address, endpoint, MTU, transport (tcp or tls)
    DIR/server.key          the server's X25519 private key, base64, mode 0600
    DIR/tls.crt, tls.key    the self-signed TLS certificate ``init --tls`` makes when given none
    DIR/run.json            ``run`` options stored by ``server.py set`` (0600); flags override them
    DIR/control.sock        the running server's status socket (``server.py status``)
    DIR/clients/NAME.json   one registered client: public key, preshared key, address, address6 (0600)

The server never stores a client's private key: ``add-client`` prints it once, inside the
profile, and forgets it. A profile is an INI file in the spirit of a WireGuard config::

    [Client]
    Name = alice
    PrivateKey = <base64>
    [Server]
    PublicKey = <base64>
    PresharedKey = <base64>
    Endpoint = vpn.example.com:55555
    Endpoint = vpn2.example.com:443       (optional: more servers to fail over to)
    Transport = tls                 (only in TLS mode; absent means tcp)
    ServerName = vpn.example.com    (TLS mode: the SNI the client sends)

The user may add ``Proxy = URL`` under ``[Client]`` (``http://[user:pass@]HOST:PORT`` or
``socks5[h]://...``) when the client's network reaches the web only through a proxy.

Everything read from disk is validated here and turned into a :class:`~errors.UserError` with
one clear line, so the programs never show a traceback for a bad file.
"""

from __future__ import annotations

import base64
import binascii
import configparser
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from carrier import certificate_names, make_self_signed, server_context
from errors import UserError
from handshake import generate_private_key, public_key
from happy_eyeballs import interleave_families
from messages import DEFAULT_MTU, IPV6_MIN_MTU, MAX_IPV6_PREFIX, MAX_MTU, MIN_MTU, valid_mtu
from proxy import ProxyError, parse_proxy_url

DEFAULT_PORT = 55555
DEFAULT_SUBNET = "10.0.0.0/24"
NO_IPV6 = "none"
"""``init --subnet6 none``: the tunnel carries IPv4 only (clients then block IPv6 under a full tunnel)."""
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
KEY_LEN = 32
log = logging.getLogger(__name__)

CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
TRANSPORTS = ("tcp", "tls")
DNS_NAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
"""A host name as SNI carries it (RFC 6066: a DNS name, never an IP address)."""


def valid_server_name(name: str) -> bool:
    return DNS_NAME.fullmatch(name) is not None


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def decode_key(text: str, what: str) -> bytes:
    """Decode a base64 key, naming ``what`` in the error."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{what} is not valid base64") from None
    if len(key) != KEY_LEN:
        raise UserError(f"{what} must be {KEY_LEN} bytes, got {len(key)}")
    return key


def parse_endpoint(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[v6]:PORT``, or a bare host) into host and port."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise UserError(f"bad address {text!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise UserError(f"bad address {text!r}: expected HOST:PORT")
    _check_host(host, text)
    if not port_text and not text.endswith(":"):
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5) or not 0 < int(port_text) < 65536:
        raise UserError(f"bad port in {text!r}: expected 1-65535")
    return host, int(port_text)


MAX_HOSTNAME_LEN = 253
MAX_LABEL_LEN = 63
"""DNS limits (RFC 1035, section 2.3.4): a name of at most 253 characters, labels of 1-63."""


def _check_host(host: str, text: str) -> None:
    """Refuse a host name the resolver would choke on (with a UnicodeError traceback, not an
    error message): an empty or over-long label, an over-long name, or one IDNA cannot encode."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if len(name) > MAX_HOSTNAME_LEN:
        raise UserError(f"bad host in {text!r}: longer than {MAX_HOSTNAME_LEN} characters")
    for label in name.split("."):
        if not 0 < len(label) <= MAX_LABEL_LEN:
            raise UserError(f"bad host in {text!r}: each dot-separated label must have 1-{MAX_LABEL_LEN} characters")
    try:
        name.encode("idna")
    except UnicodeError:
        raise UserError(f"bad host in {text!r}: not a valid host name") from None


def resolve_addresses(host: str, port: int, what: str = "server") -> list[str]:
    """Resolve ``host`` once, before DNS or routes change, and pin its addresses: every IPv6
    (AAAA) and IPv4 (A) address, in the order Happy Eyeballs tries them (RFC 8305)."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"cannot resolve {what} {host}: {exc.strerror}") from None
    except UnicodeError:
        raise UserError(f"cannot resolve {what} {host}: not a valid host name") from None
    return interleave_families([info[4][0] for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)])


def resolve_endpoint(endpoint: str) -> tuple[list[str], int]:
    """``HOST:PORT`` resolved as :func:`resolve_addresses` does: (addresses, port)."""
    host, port = parse_endpoint(endpoint)
    return resolve_addresses(host, port), port


def format_endpoint(host: str, port: int) -> str:
    """The inverse of :func:`parse_endpoint`: brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def write_private_file(path: Path, text: str) -> None:
    """Write a secret so that only root can ever read it: created 0600, never widened.

    Written to a temporary name and renamed into place, so a running server that reads the
    registry never sees a half-written file.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


MAX_STATE_FILE_SIZE = 64 * 1024
"""Settings, keys, client records and profiles are a few hundred bytes; anything far larger is
not ours, and is refused before it is read."""


def read_small_file(path: str | os.PathLike[str], what: str, limit: int = MAX_STATE_FILE_SIZE) -> tuple[str, int]:
    """Read a small regular text file without ever blocking on it; return (text, st_mode).

    Opened with O_NONBLOCK and checked with fstat before any read, so a FIFO, a device or a
    huge file named where a state file or profile belongs is one clear error instead of a hang
    (a FIFO's open() and read() wait for a writer) or a memory blow-up.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise UserError(f"cannot read {what} {path}: {kind}")
        if st.st_size > limit:
            raise UserError(f"cannot read {what} {path}: {st.st_size} bytes, more than the {limit} allowed")
        data = os.read(fd, limit + 1)
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8"), st.st_mode
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text") from None


def readable_by_others(mode: int) -> bool:
    """True if group or other may read (or write) a file: wrong for anything holding a secret."""
    return bool(mode & (stat.S_IRWXG | stat.S_IRWXO))


def _parse_json(text: str, path: Path) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} must hold a JSON object")
    return value


def _read_json(path: Path) -> dict:
    return _parse_json(read_small_file(path, "file")[0], path)


def parse_client_record(name: str, text: str, path: Path) -> ClientRecord:
    """A client record (``clients/NAME.json``) from its text; UserError naming ``path`` if bad."""
    raw = _parse_json(text, path)
    try:
        return ClientRecord(
            name=name,
            public_key=decode_key(str(raw["public_key"]), f"{path}: public_key"),
            psk=decode_key(str(raw["psk"]), f"{path}: psk"),
            address=ipaddress.IPv4Address(raw["address"]),
            address6=ipaddress.IPv6Address(raw["address6"]) if "address6" in raw else None,
        )
    except (KeyError, ValueError) as exc:
        raise UserError(f"{path}: bad client record ({exc})") from None


@dataclass(frozen=True)
class ClientRecord:
    """A registered client, as the server knows it."""

    name: str
    public_key: bytes
    psk: bytes
    address: ipaddress.IPv4Address
    address6: ipaddress.IPv6Address | None = None
    """None in a record written before IPv6: the server then derives one (:func:`paired_address6`)."""


def random_ula_prefix() -> ipaddress.IPv6Network:
    """A unique local /64 as RFC 4193 section 3.2 describes: fd00::/8 plus a random 40-bit Global
    ID (and subnet ID 0), so two tunlib networks joined later almost surely do not collide."""
    global_id = secrets.randbits(40)
    return ipaddress.IPv6Network(((0xFD << 120) | (global_id << 80), 64))


def paired_address6(
    address: ipaddress.IPv4Address, subnet: ipaddress.IPv4Network, subnet6: ipaddress.IPv6Network
) -> ipaddress.IPv6Address:
    """The IPv6 address that sits at the same host number as ``address``: 10.0.0.7 in
    10.0.0.0/24 pairs with PREFIX::7, so the two addresses of a client are easy to match up."""
    return subnet6.network_address + (int(address) - int(subnet.network_address))


@dataclass(frozen=True)
class ServerSettings:
    subnet: ipaddress.IPv4Network
    listen: str
    endpoint: str
    mtu: int
    transport: str = "tcp"
    server_name: str | None = None
    """TLS mode: the name in the certificate and in clients' SNI."""
    tls_cert: str | None = None
    tls_key: str | None = None
    subnet6: ipaddress.IPv6Network | None = None
    """The tunnel's IPv6 prefix; None for a state directory made before IPv6 (re-run ``init``)."""

    @property
    def server_interface(self) -> ipaddress.IPv4Interface:
        """The server's own tunnel address: the subnet's first host, e.g. 10.0.0.1/24."""
        return ipaddress.IPv4Interface(f"{next(self.subnet.hosts())}/{self.subnet.prefixlen}")

    @property
    def server_interface6(self) -> ipaddress.IPv6Interface | None:
        """The server's own IPv6 tunnel address: PREFIX::1, the twin of the IPv4 one."""
        if self.subnet6 is None:
            return None
        return ipaddress.IPv6Interface(f"{self.subnet6.network_address + 1}/{self.subnet6.prefixlen}")

    def client_address6(self, record: ClientRecord) -> ipaddress.IPv6Address | None:
        """The client's IPv6 tunnel address: its own record's, or the one paired with its IPv4."""
        if self.subnet6 is None:
            return None
        return record.address6 or paired_address6(record.address, self.subnet, self.subnet6)


class ServerState:
    """The server's state directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.settings_path = self.dir / "server.json"
        self.key_path = self.dir / "server.key"
        self.clients_dir = self.dir / "clients"
        self.tls_cert_path = self.dir / "tls.crt"
        self.tls_key_path = self.dir / "tls.key"
        self.run_path = self.dir / "run.json"

    # -- init ---------------------------------------------------------------
    def init(
        self,
        subnet: str | None,
        listen: str | None,
        endpoint: str | None,
        subnet6: str | None = None,
        *,
        tls: bool | None = None,
        server_name: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> bool:
        """Create keys and settings if missing. Returns True if anything was created.

        Idempotent: an existing key is never replaced (that would orphan every client), and
        options given again for an existing directory update its settings. ``tls`` True or False
        switches the transport recorded for profiles; None keeps it.
        """
        created = False
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self.clients_dir.mkdir(exist_ok=True, mode=0o700)
        if not self.key_path.exists():
            write_private_file(self.key_path, encode_key(generate_private_key()) + "\n")
            created = True
        old = _read_json(self.settings_path) if self.settings_path.exists() else {}
        net = _parse_subnet(subnet or old.get("subnet", DEFAULT_SUBNET))
        if subnet and old.get("subnet") not in (None, str(net)) and self.clients():
            raise UserError("cannot change the subnet while clients are registered")
        if subnet6 is None:  # keep what is there; a directory from before IPv6 gets a prefix now
            net6 = _parse_subnet6(old["subnet6"]) if old.get("subnet6") else None
            if "subnet6" not in old:
                net6 = random_ula_prefix()
        else:
            net6 = None if subnet6 == NO_IPV6 else _parse_subnet6(subnet6)
            if "subnet6" in old and old["subnet6"] != (str(net6) if net6 else None) and self.clients():
                raise UserError("cannot change the IPv6 subnet while clients are registered")
        listen = listen or old.get("listen", DEFAULT_LISTEN)
        parse_endpoint(listen)
        endpoint = endpoint or old.get("endpoint") or _default_endpoint(listen)
        parse_endpoint(endpoint)
        settings = {
            "subnet": str(net),
            "subnet6": str(net6) if net6 else None,
            "listen": listen,
            "endpoint": endpoint,
            "mtu": old.get("mtu", DEFAULT_MTU),
        }
        if tls is None:
            tls = old.get("transport") == "tls"
        if tls:
            settings |= self._init_tls(old, endpoint, server_name, cert, key)
        elif server_name or cert or key:
            raise UserError("--server-name, --cert and --key need --tls")
        if settings != old:
            self.settings_path.write_text(json.dumps(settings, indent=2) + "\n")
            created = True
        return created

    def _init_tls(
        self, old: dict, endpoint: str, server_name: str | None, cert: str | None, key: str | None
    ) -> dict[str, str]:
        """The TLS settings: the user's certificate, or a self-signed one made here (and remade
        when the server name changes), and the name clients send as SNI."""
        if (cert is None) != (key is None):
            raise UserError("--cert and --key go together")
        if cert is not None and key is not None:
            cert, key = str(Path(cert).resolve()), str(Path(key).resolve())
            check_certificate(cert, key)
        else:
            cert, key = old.get("tls_cert"), old.get("tls_key")
        names = certificate_names(Path(cert).read_bytes()) if cert and Path(cert).exists() else []
        endpoint_host = parse_endpoint(endpoint)[0]
        default_name = endpoint_host if valid_server_name(endpoint_host) else None
        name = server_name or (names[0] if names and cert != str(self.tls_cert_path) else None)
        name = name or old.get("server_name") or default_name
        if name is None:
            raise UserError(
                f"TLS mode needs --server-name NAME: the endpoint {endpoint_host} is an address, and SNI "
                "carries only names (pick the name of the website this server hosts, if any)"
            )
        if not valid_server_name(name):
            raise UserError(f"bad --server-name {name!r}: expected a DNS name such as vpn.example.com")
        own = cert is None or cert == str(self.tls_cert_path)
        if own and (not self.tls_cert_path.exists() or name not in names):
            cert_pem, key_pem = make_self_signed(name)
            write_private_file(self.tls_key_path, key_pem.decode())
            self.tls_cert_path.write_bytes(cert_pem)
            log.info("made a self-signed TLS certificate for %s: %s", name, self.tls_cert_path)
            cert, key = str(self.tls_cert_path), str(self.tls_key_path)
        return {"transport": "tls", "server_name": name, "tls_cert": str(cert), "tls_key": str(key)}

    # -- stored run options (server.py set) ---------------------------------
    def run_options(self) -> dict:
        """The ``run`` options stored by ``server.py set`` (DIR/run.json), as JSON values."""
        return _read_json(self.run_path) if self.run_path.exists() else {}

    def save_run_options(self, options: dict) -> None:
        write_private_file(self.run_path, json.dumps(options, indent=2, sort_keys=True) + "\n")

    # -- reading ------------------------------------------------------------
    def _require_init(self) -> None:
        if not self.settings_path.exists() or not self.key_path.exists():
            raise UserError(
                f"{self.dir} is not an initialised state directory (run: server.py init --state-dir {self.dir})"
            )

    def private_key(self) -> bytes:
        return self._read_private_key()[0]

    def _read_private_key(self) -> tuple[bytes, int]:
        self._require_init()
        text, mode = read_small_file(self.key_path, "server key")
        return decode_key(text, str(self.key_path)), mode

    def private_key_for_run(self) -> bytes:
        """The private key, warning (as ``wg`` does) if others can read the file it is in."""
        key, mode = self._read_private_key()
        if readable_by_others(mode):
            log.warning(
                "%s is accessible to group/other (mode %04o): anyone who can read it can impersonate "
                "this server; chmod 600 it",
                self.key_path,
                stat.S_IMODE(mode),
            )
        return key

    def public_key(self) -> bytes:
        return public_key(self.private_key())

    def settings(self) -> ServerSettings:
        self._require_init()
        raw = _read_json(self.settings_path)
        try:
            subnet = _parse_subnet(str(raw["subnet"]))
            listen, endpoint, mtu = str(raw["listen"]), str(raw["endpoint"]), raw["mtu"]
        except KeyError as exc:
            raise UserError(f"{self.settings_path}: missing {exc}") from None
        if not valid_mtu(mtu):
            raise UserError(f"{self.settings_path}: mtu must be an integer in {MIN_MTU}..{MAX_MTU}")
        subnet6 = _parse_subnet6(str(raw["subnet6"])) if raw.get("subnet6") else None
        if subnet6 is not None and mtu < IPV6_MIN_MTU:
            log.warning("%s: mtu %d is below IPv6's minimum of %d: IPv6 is off", self.settings_path, mtu, IPV6_MIN_MTU)
            subnet6 = None
        transport = raw.get("transport", "tcp")
        if transport not in TRANSPORTS:
            raise UserError(f"{self.settings_path}: transport must be one of {', '.join(TRANSPORTS)}")
        tls = [raw.get(k) for k in ("server_name", "tls_cert", "tls_key")]
        if transport == "tls" and not all(isinstance(v, str) for v in tls):
            raise UserError(f"{self.settings_path}: TLS mode needs server_name, tls_cert and tls_key")
        return ServerSettings(subnet, listen, endpoint, mtu, transport, *tls, subnet6=subnet6)

    def clients(self) -> list[ClientRecord]:
        """Every registered client; a bad record is an error (for the commands that edit)."""
        if not self.clients_dir.is_dir():
            return []
        return [self._load_client(p) for p in sorted(self.clients_dir.glob("*.json"))]

    def _load_client(self, path: Path) -> ClientRecord:
        return parse_client_record(path.stem, read_small_file(path, "client record")[0], path)

    def remove_client(self, name: str) -> None:
        self.settings()
        path = self.clients_dir / f"{name}.json"
        if not CLIENT_NAME.fullmatch(name) or not path.exists():
            raise UserError(f"unknown client {name!r}")
        path.unlink()

    # -- add-client ---------------------------------------------------------
    def add_client(self, name: str, address: str | None, address6: str | None = None) -> tuple[ClientRecord, str]:
        """Register ``name`` with a fresh key pair; return the record and the profile text."""
        settings = self.settings()
        if not CLIENT_NAME.fullmatch(name):
            raise UserError(f"bad client name {name!r}: use 1-32 letters, digits, '.', '_' or '-'")
        path = self.clients_dir / f"{name}.json"
        if path.exists():
            raise UserError(f"client {name!r} already exists")
        clients = self.clients()
        taken = {c.address for c in clients} | {settings.server_interface.ip}
        subnet = settings.subnet
        if address is not None:
            try:
                ip = ipaddress.IPv4Address(address)
            except ValueError:
                raise UserError(f"bad address {address!r}: expected an IPv4 address") from None
            if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
                raise UserError(f"address {ip} is not a host address of {subnet}")
            if ip in taken:
                raise UserError(f"address {ip} is already in use")
        else:
            # hosts() is lazy: a /8 has 16M addresses, and we want only the first free one.
            ip = next((host for host in subnet.hosts() if host not in taken), None)
            if ip is None:
                raise UserError(f"no free address left in {subnet}")
        ip6 = self._pick_address6(settings, clients, ip, address6)
        private = generate_private_key()
        record = ClientRecord(name, public_key(private), secrets.token_bytes(KEY_LEN), ip, ip6)
        fields = {"public_key": encode_key(record.public_key), "psk": encode_key(record.psk), "address": str(ip)}
        if ip6 is not None:
            fields["address6"] = str(ip6)
        write_private_file(path, json.dumps(fields, indent=2) + "\n")
        profile = Profile(
            name,
            private,
            self.public_key(),
            record.psk,
            settings.endpoint,
            transport=settings.transport,
            server_name=settings.server_name,
        )
        hint = f"{ip}/{subnet.prefixlen}"
        if ip6 is not None and settings.subnet6 is not None:
            hint += f" and {ip6}/{settings.subnet6.prefixlen}"
        return record, profile.render(hint)

    @staticmethod
    def _pick_address6(
        settings: ServerSettings, clients: list[ClientRecord], ip: ipaddress.IPv4Address, wanted: str | None
    ) -> ipaddress.IPv6Address | None:
        """The new client's IPv6 address: ``wanted``, else the one paired with its IPv4 address."""
        subnet6 = settings.subnet6
        if subnet6 is None:
            if wanted is not None:
                raise UserError("this server has no IPv6 subnet: run 'server.py init --subnet6 PREFIX' first")
            return None
        taken = {settings.client_address6(c) for c in clients} | {settings.server_interface6.ip}
        if wanted is None:
            ip6 = paired_address6(ip, settings.subnet, subnet6)
            if ip6 in taken:  # someone chose this one with --address6: take the first free one
                ip6 = next(host for host in subnet6.hosts() if host not in taken)
        else:
            try:
                ip6 = ipaddress.IPv6Address(wanted)
            except ValueError:
                raise UserError(f"bad address {wanted!r}: expected an IPv6 address") from None
            if ip6 not in subnet6 or ip6 == subnet6.network_address:
                raise UserError(f"address {ip6} is not a host address of {subnet6}")
        if ip6 in taken:
            raise UserError(f"address {ip6} is already in use")
        return ip6


def check_certificate(cert: str, key: str) -> None:
    """Fail with one line unless ``cert`` and ``key`` load as a matching pair."""
    try:
        server_context(cert, key)
    except ssl.SSLError as exc:  # before OSError, its base class
        raise UserError(f"TLS certificate {cert} and key {key} do not load as a pair: {exc.reason or exc}") from None
    except OSError as exc:
        raise UserError(f"cannot read the TLS certificate or key: {exc.strerror or exc}") from None


def _parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise UserError(f"bad subnet {text!r}: {exc}") from None
    if net.num_addresses < 4:
        raise UserError(f"subnet {net} is too small: it needs room for the server and a client")
    return net


def _parse_subnet6(text: str) -> ipaddress.IPv6Network:
    try:
        net = ipaddress.IPv6Network(text)
    except ValueError as exc:
        raise UserError(f"bad IPv6 subnet {text!r}: {exc}") from None
    if net.prefixlen > MAX_IPV6_PREFIX:
        raise UserError(f"IPv6 subnet {net} is too small: use a prefix of /{MAX_IPV6_PREFIX} or shorter (/64 is usual)")
    if net.is_multicast or net.is_loopback or net.is_link_local or net.is_unspecified:
        raise UserError(f"IPv6 subnet {net} is not a unicast prefix")
    return net


def _default_endpoint(listen: str) -> str:
    """Pick the address clients should dial when ``--endpoint`` was not given.

    A specific listen address is the answer. For 0.0.0.0 we ask the kernel which source
    address it would use toward a public address; connect() on a UDP socket sends nothing.
    """
    host, port = parse_endpoint(listen)
    if host not in ("0.0.0.0", "::"):
        return format_endpoint(host, port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", port))
            host = probe.getsockname()[0]
        except OSError:
            host = "127.0.0.1"
    return f"{host}:{port}"


def split_endpoints(text: str) -> tuple[str, list[str]]:
    """Take the repeated ``Endpoint`` lines of ``[Server]`` out of a profile's text.

    Returns the text with every ``Endpoint`` line but the first removed (so ``configparser``,
    which refuses repeated keys, still rejects every other duplicate), and the values of all
    of them, in order. A profile may list several servers, as OpenVPN allows several
    ``remote`` lines.
    """
    section, kept, values = "", [], []
    for raw in text.splitlines(keepends=True):
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        else:
            key, sep, value = line.partition("=")
            if section == "Server" and sep and not raw[:1].isspace() and key.strip().lower() == "endpoint":
                values.append(value.strip())
                if len(values) > 1:
                    continue
        kept.append(raw)
    return "".join(kept), values


@dataclass(frozen=True)
class Profile:
    """Everything a client needs to reach its server."""

    name: str
    private_key: bytes
    server_public_key: bytes
    psk: bytes
    endpoint: str
    more_endpoints: tuple[str, ...] = ()
    """Further ``Endpoint =`` lines: other servers (or ports) that accept this profile."""

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint, in the profile's order: the candidates ``client.py connect`` tries."""
        return (self.endpoint, *self.more_endpoints)

    transport: str = "tcp"
    server_name: str | None = None
    """TLS mode: the SNI; None sends none."""
    proxy: str | None = None
    """``Proxy = URL`` under [Client]: validated on load, never logged (it may hold a password)."""

    def render(self, address_hint: str) -> str:
        tls = ""
        if self.transport == "tls":
            tls = "Transport = tls\n" + (f"ServerName = {self.server_name}\n" if self.server_name else "")
        return (
            f"# tunlib client profile for {self.name!r}, made by 'server.py add-client'.\n"
            f"# It holds this client's private key: keep it readable by root only (chmod 600).\n"
            f"# The server assigns this client the tunnel address {address_hint}.\n"
            f"[Client]\n"
            f"Name = {self.name}\n"
            f"PrivateKey = {encode_key(self.private_key)}\n"
            f"\n"
            f"[Server]\n"
            f"PublicKey = {encode_key(self.server_public_key)}\n"
            f"PresharedKey = {encode_key(self.psk)}\n" + "".join(f"Endpoint = {e}\n" for e in self.endpoints) + tls
        )

    @classmethod
    def parse(cls, text: str, source: str) -> Profile:
        parser = configparser.ConfigParser(interpolation=None)
        text, endpoints = split_endpoints(text)
        try:
            parser.read_string(text, source=source)
            client, server = parser["Client"], parser["Server"]
            name = client.get("Name", "client")
            private = decode_key(client["PrivateKey"], f"{source}: [Client] PrivateKey")
            server_key = decode_key(server["PublicKey"], f"{source}: [Server] PublicKey")
            psk = decode_key(server["PresharedKey"], f"{source}: [Server] PresharedKey")
            endpoints = endpoints or [server["Endpoint"]]
            transport = server.get("Transport", "tcp").strip().lower()
            server_name = server.get("ServerName")
            proxy = client.get("Proxy")
        except configparser.Error as exc:
            raise UserError(f"{source}: not a valid profile ({exc.message.splitlines()[0]})") from None
        except KeyError as exc:
            raise UserError(f"{source}: not a valid profile (missing {exc})") from None
        for endpoint in endpoints:
            try:
                parse_endpoint(endpoint)
            except UserError as exc:
                raise UserError(f"{source}: [Server] Endpoint: {exc}") from None
        if transport not in TRANSPORTS:
            raise UserError(f"{source}: [Server] Transport must be one of {', '.join(TRANSPORTS)}")
        if server_name is not None:
            server_name = server_name.strip()
            if not valid_server_name(server_name):
                raise UserError(f"{source}: [Server] ServerName must be a DNS name, not {server_name[:64]!r}")
        if proxy is not None:
            try:
                parse_proxy_url(proxy)
            except ProxyError as exc:
                raise UserError(f"{source}: [Client] Proxy: {exc}") from None
        return cls(
            name,
            private,
            server_key,
            psk,
            endpoints[0],
            tuple(endpoints[1:]),
            transport=transport,
            server_name=server_name,
            proxy=proxy,
        )

    @classmethod
    def load(cls, path: str) -> Profile:
        text, mode = read_small_file(path, "profile")
        profile = cls.parse(text, path)
        if readable_by_others(mode):
            log.warning("profile %s is readable by others; chmod 600 it", path)
        return profile
