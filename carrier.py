"""The TLS carrier: tunlib's frames inside TLS 1.3, so the connection looks like HTTPS.

Why not ``ssl.SSLSocket``? tunlib runs two threads per tunnel, one sending and one receiving on
the same connection. OpenSSL forbids using one SSL object from two threads at once, and in TLS
1.3 a read may need to write (a KeyUpdate answer, for example). So the SSL object here never
touches the socket: it works on two memory buffers (``ssl.MemoryBIO``), tunlib moves the bytes
between them and the socket itself, and every call into the SSL object holds ``_ssl_lock``::

    sendall(plain) -> [ssl_lock: SSL_write -> outgoing BIO -> bytes] -> socket.sendall
    socket.recv_into -> [ssl_lock: incoming BIO -> SSL_read -> caller's buffer] -> plain

The lock is held only for the encryption or decryption itself (OpenSSL releases the GIL for it),
never while waiting on the network, so the two directions overlap everywhere except inside
OpenSSL. Record order on the wire must match encryption order: bytes are taken out of the
outgoing BIO and written to the socket only by the holder of ``_send_lock``, in that order.

:class:`TlsCarrier` offers the socket methods the data path and the handshake use (``sendall``,
``recv_into``, ``settimeout``, ``shutdown``, ``close``, ``fileno``), so :class:`tunlib.PeerLink`
runs unchanged over plain TCP or TLS. :class:`TlsEndpoint` is the SSL object and its buffers
without any I/O: the server's port-share front (portshare.py) drives it from received bytes.

The Noise handshake inside authenticates both ends, so the client does not check the
certificate (it needs no CA), and a TLS-inspecting middlebox can read nothing and change
nothing without the tunnel noticing. TLS here is camouflage and a way through firewalls.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ALPN_PROTOCOLS = ["http/1.1"]
"""What a browser talking HTTP/1.1 offers; the server selects it."""
SELF_SIGNED_DAYS = 3650
"""A self-signed certificate is never checked (the client pins the Noise key instead), and TLS 1.3
encrypts it, so an observer never sees it: it only has to exist, for years."""
SEND_CHUNK = 64 * 1024
"""Plaintext encrypted and sent at once (four full TLS records)."""
RECV_CHUNK = 256 * 1024
"""Ciphertext read from the socket at once: many TLS records (at most 16 KB of plaintext each)."""


class TlsError(Exception):
    """The TLS layer failed (handshake refused, a corrupt or forged record)."""


def client_context() -> ssl.SSLContext:
    """TLS 1.3 only, ALPN http/1.1, no certificate checks (the Noise handshake authenticates)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    return context


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS 1.3 only, ALPN http/1.1, the user's (or init's self-signed) certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    context.load_cert_chain(cert_file, key_file)
    return context


def make_self_signed(server_name: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``server_name`` (EC P-256) and its key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def certificate_names(cert_pem: bytes) -> list[str]:
    """The DNS names a PEM certificate is for (its SANs, else its common name)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    except x509.ExtensionNotFound:
        return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


class TlsEndpoint:
    """One side of a TLS connection as pure state: bytes in, bytes out, no socket."""

    def __init__(self, context: ssl.SSLContext, *, server_side: bool, server_name: str | None = None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.ssl = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side, server_hostname=server_name)

    def handshake(self) -> bool:
        """Advance the handshake with what was received; True once it is complete.

        Raises :class:`TlsError` if the peer is not speaking TLS 1.3 acceptably to us.
        """
        try:
            self.ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise TlsError(f"TLS handshake failed: {exc.reason or exc}") from None
        return True

    def read_available(self, limit: int) -> bytes:
        """All application bytes that the received records hold, up to ``limit`` (b"" if none yet).

        Raises :class:`TlsError` for a bad record, EOFError after the peer's close_notify.
        """
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            try:
                chunk = self.ssl.read(limit - size)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                if chunks:
                    break
                raise EOFError from None
            except ssl.SSLError as exc:
                raise TlsError(f"TLS error: {exc.reason or exc}") from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    @property
    def alpn(self) -> str | None:
        return self.ssl.selected_alpn_protocol()

    @property
    def version(self) -> str | None:
        return self.ssl.version()


class TlsCarrier:
    """A TLS connection over a connected TCP socket, usable like that socket by two threads."""

    def __init__(self, sock: socket.socket, endpoint: TlsEndpoint, received: bytes = b"") -> None:
        """``received``: application bytes already read out of ``endpoint`` (the server's
        port-share front reads the first message before deciding who is talking); they are
        returned first by :meth:`recv_into`."""
        self.sock = sock
        self.endpoint = endpoint
        self._ssl = endpoint.ssl
        self._incoming = endpoint.incoming
        self._outgoing = endpoint.outgoing
        self._ssl_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pushback = memoryview(received) if received else None
        self._drained = False
        """True once a read found no complete record left: the next one goes to the socket first."""
        self._committed: tuple[int, memoryview] | None = None
        """After a partial non-blocking :meth:`send`: the length of plaintext already encrypted, and
        the part of its ciphertext the socket has not taken yet."""
        self._raw = bytearray(RECV_CHUNK)
        self._raw_view = memoryview(self._raw)
        self.first_bytes = bytes(received[:8])
        """The first application bytes received (up to 8): the client recognises a web server's
        "HTTP/" answer by them and can say what probably went wrong."""

    # -- socket surface ---------------------------------------------------------------------------
    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def fileno(self) -> int:
        return self.sock.fileno()

    def pending(self) -> bool:
        """Whether :meth:`recv_into` can return data without waiting on the socket."""
        return bool(self._pushback) or self._ssl.pending() > 0 or self._incoming.pending > 0

    def _encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """TLS records for ``data`` (and for anything a read left in the outgoing buffer)."""
        with self._ssl_lock:
            try:
                self._ssl.write(data)
            except ssl.SSLError as exc:
                raise OSError(f"TLS write failed: {exc.reason or exc}") from None
            return self._outgoing.read()

    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        """A send that never blocks (``flags`` carries MSG_DONTWAIT), for the server's TUN reader.

        Returns how much of ``data`` was taken, as a socket does; the caller offers the rest again,
        first. But encrypted bytes cannot be taken back: when the socket refuses part of the
        records, this carrier keeps their ciphertext and reports the plaintext they hold as *not*
        taken (``_committed``), so the caller offers it again, and the next send skips it and
        sends the kept ciphertext instead. The order on the wire stays the order of encryption.
        """
        if not self._send_lock.acquire(blocking=False):
            return 0
        try:
            view = memoryview(data)
            taken = 0
            if self._committed is not None:
                length, rest = self._committed
                sent = self._send_some(rest, flags)
                if sent < len(rest):
                    self._committed = (length, rest[sent:])
                    return 0
                self._committed = None
                view, taken = view[length:], length
            if not view:
                return taken
            ciphertext = self._encrypt(view)
            sent = self._send_some(ciphertext, flags)
            if sent < len(ciphertext):
                self._committed = (len(view), memoryview(ciphertext)[sent:])
                return taken
            return taken + len(view)
        finally:
            self._send_lock.release()

    def _send_some(self, ciphertext: bytes | memoryview, flags: int) -> int:
        try:
            return self.sock.send(ciphertext, flags)
        except BlockingIOError:
            return 0

    def _send_committed(self, view: memoryview) -> memoryview:
        """Before a blocking send: put kept ciphertext on the wire, and drop from ``view`` the
        plaintext it holds (send_lock held)."""
        if self._committed is None:
            return view
        length, rest = self._committed
        self.sock.sendall(rest)
        self._committed = None
        return view[length:]

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and send it, records in order; raises OSError like a socket.

        In pieces of SEND_CHUNK: the peer starts decrypting the first piece while this one is
        encrypted, and the receiving thread gets the SSL lock between pieces.
        """
        view = memoryview(data)
        write, read, sendall, ssl_lock = self._ssl.write, self._outgoing.read, self.sock.sendall, self._ssl_lock
        with self._send_lock:
            view = self._send_committed(view)
            for start in range(0, len(view), SEND_CHUNK):
                with ssl_lock:
                    try:
                        write(view[start : start + SEND_CHUNK])
                    except ssl.SSLError as exc:
                        raise OSError(f"TLS write failed: {exc.reason or exc}") from None
                    ciphertext = read()
                sendall(ciphertext)

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0) -> int:
        """Fill ``buffer`` with decrypted bytes: everything already received and decryptable, at
        least one byte (waiting on the socket if needed), or 0 at the end of the stream.

        Raises OSError for a corrupt or forged record, and TimeoutError as the socket does.
        """
        view = memoryview(buffer)
        size = nbytes or len(view)
        filled = 0
        if self._pushback is not None:
            filled = min(size, len(self._pushback))
            view[:filled] = self._pushback[:filled]
            rest = self._pushback[filled:]
            self._pushback = rest if rest else None
        read, ssl_lock, incoming = self._ssl.read, self._ssl_lock, self._incoming
        while filled < size:
            if self._drained and not incoming.pending:  # nothing left to decrypt: to the socket
                if filled:
                    break
                received = self.sock.recv_into(self._raw)
                if not received:
                    break  # TCP closed without close_notify: treat it as the end, as browsers do
                with ssl_lock:
                    incoming.write(self._raw_view[:received])
            with ssl_lock:
                try:
                    count = read(size - filled, view[filled:])
                except ssl.SSLWantReadError:
                    count = -1
                except ssl.SSLZeroReturnError:
                    count = 0  # the peer's close_notify: end of stream
                except ssl.SSLError as exc:
                    raise OSError(f"TLS record rejected: {exc.reason or exc}") from None
                answer = self._outgoing.pending
            if answer:
                self._send_pending()  # a TLS 1.3 read produced something to send (KeyUpdate)
            if count > 0:
                if not self.first_bytes:
                    self.first_bytes = bytes(view[filled : filled + min(count, 8)])
                filled += count
                self._drained = False
            elif count == 0:
                break
            else:
                self._drained = True  # OpenSSL took every received byte: only the socket has more
        return filled

    def _send_pending(self) -> None:
        """Send what a read produced, unless a sender is busy: then its next :meth:`sendall` takes
        it along (the outgoing buffer keeps the order). Waiting here could deadlock two peers whose
        senders both wait for the other's receiver."""
        if not self._send_lock.acquire(blocking=False):
            return
        try:
            if self._committed is not None:
                return  # kept ciphertext goes first: the next sendall sends both, in order
            with self._ssl_lock:
                ciphertext = self._outgoing.read()
            if ciphertext:
                self.sock.sendall(ciphertext)
        finally:
            self._send_lock.release()

    def shutdown(self, how: int) -> None:
        """Send a close_notify if no sender is busy (best effort, never blocks), then shut the socket
        down, which wakes a thread blocked in :meth:`recv_into` or :meth:`sendall`."""
        if how != socket.SHUT_RD and self._committed is None and self._send_lock.acquire(blocking=False):
            try:  # (kept records may not be overtaken by a close_notify)
                with self._ssl_lock, contextlib.suppress(ssl.SSLError, ValueError):
                    self._ssl.unwrap()
                with contextlib.suppress(OSError):
                    self.sock.send(self._outgoing.read(), socket.MSG_DONTWAIT)
            finally:
                self._send_lock.release()
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


def client_handshake_tls(sock: socket.socket, server_name: str | None, timeout: float) -> TlsCarrier:
    """Run the TLS handshake as a client on a connected socket (blocking, within ``timeout``)."""
    endpoint = TlsEndpoint(client_context(), server_side=False, server_name=server_name or None)
    deadline = time.monotonic() + timeout
    buf = bytearray(RECV_CHUNK)
    while True:
        done = endpoint.handshake()
        out = endpoint.outgoing.read()
        try:
            if out:
                sock.sendall(out)
            if done:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TlsError("TLS handshake timed out")
            sock.settimeout(remaining)
            count = sock.recv_into(buf)
        except TimeoutError:
            raise TlsError("TLS handshake timed out") from None
        except OSError as exc:
            raise TlsError(f"connection failed during the TLS handshake: {exc.strerror or exc}") from None
        if not count:
            raise TlsError("the server closed the connection during the TLS handshake (is it in TLS mode?)")
        endpoint.incoming.write(memoryview(buf)[:count])
    sock.settimeout(None)
    return TlsCarrier(sock, endpoint)
