"""Noise_IKpsk2_25519_AESGCM_SHA256: the tunlib handshake, bytes in and bytes out.

This module is the Noise Protocol Framework (revision 34) cut down to the one protocol
tunlib speaks. It does no I/O, reads no clock and draws no randomness except for fresh
ephemeral keys; the caller moves the two messages and decides who may connect.

The name says everything that is negotiated, so nothing is negotiated on the wire:

- ``IK``: the Initiator (client) sends its static key Immediately, encrypted, and already
  Knows the responder's (server's) static key, so the handshake takes one round trip.
- ``psk2``: a 32-byte pre-shared key is mixed in at the end of message 2. Stealing a
  client's private key is then not enough to impersonate it, and the session keys stay
  secret even if X25519 is one day broken, as long as the psk is not known.
- ``25519`` / ``AESGCM`` / ``SHA256``: X25519 for Diffie-Hellman, AES-256-GCM as the AEAD,
  SHA-256 for hashing and for the HMAC-based HKDF.

The pattern, one line per message (``<- s`` is the pre-message: the initiator has the
responder's static public key before it starts)::

    <- s
    ...
    -> e, es, s, ss
    <- e, ee, se, psk

Three objects from the spec carry the state, each built on the one before:
CipherState (a key and a nonce counter), SymmetricState (the chaining key ``ck`` and
the transcript hash ``h``), and HandshakeState (the key pairs). Initiator and
Responder run the tokens of their two messages in order over a HandshakeState.

Every failure to process a message raises HandshakeError, and a failed object cannot
be used again: after a bad MAC the transcript has already absorbed attacker bytes, so
the spec says to abandon that HandshakeState rather than retry with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from transport import NONCE

PROTOCOL_NAME = b"Noise_IKpsk2_25519_AESGCM_SHA256"

DHLEN = 32
"""Bytes in an X25519 public key and in a DH output (spec section 12.1)."""
HASHLEN = 32
"""Bytes in a SHA-256 output; ``h``, ``ck`` and every HKDF output have this length."""
TAGLEN = 16
"""Bytes the AEAD adds to every ciphertext: the AES-GCM authentication tag."""
PSKLEN = 32
"""A Noise psk is exactly 32 bytes (spec section 9)."""
MAX_MESSAGE_LEN = 65535
"""Noise messages never exceed 65535 bytes (spec section 3); longer input is refused."""

INIT_OVERHEAD = DHLEN + (DHLEN + TAGLEN) + TAGLEN
"""Message 1 is e (clear), s (encrypted, tagged) and the payload's tag: 96 bytes + payload."""
RESPONSE_OVERHEAD = DHLEN + TAGLEN
"""Message 2 is e (clear) and the payload's tag: 48 bytes + payload."""


class HandshakeError(Exception):
    """A handshake message cannot be processed, or an object is used out of turn.

    Wrong lengths, failed MACs, low-order public keys, bad key sizes and calls in the wrong
    order all end here, so callers need exactly one ``except`` to drop a peer.
    """


@dataclass(frozen=True, eq=False)
class SessionKeys:
    """What a finished handshake yields: one AES-256-GCM key per direction, plus ``h``.

    ``send_key`` encrypts what this side sends, ``recv_key`` decrypts what it receives;
    nonces restart at zero for each key. ``handshake_hash`` is the final transcript hash:
    equal on both sides exactly when both saw the same messages, so it can bind later
    exchanges to this session. Keys are left out of ``repr`` so that they never reach a
    log, and ``eq=False`` keeps anyone from comparing secrets with ``==``.
    """

    send_key: bytes = field(repr=False)
    recv_key: bytes = field(repr=False)
    handshake_hash: bytes


def generate_private_key() -> bytes:
    """Return a fresh X25519 private key as 32 raw bytes."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private_key: bytes) -> bytes:
    """Return the 32-byte X25519 public key for a 32-byte private key."""
    return _load_private(private_key).public_key().public_bytes_raw()


def _load_private(private_key: bytes) -> X25519PrivateKey:
    try:
        return X25519PrivateKey.from_private_bytes(private_key)
    except ValueError as exc:
        raise HandshakeError(f"a private key must be {DHLEN} bytes") from exc


def _ephemeral(injected: bytes | None) -> X25519PrivateKey:
    """GENERATE_KEYPAIR() for token ``e``, unless a test injected a fixed key."""
    return X25519PrivateKey.generate() if injected is None else _load_private(injected)


def _check_public(key: bytes) -> bytes:
    if len(key) != DHLEN:
        raise HandshakeError(f"a public key must be {DHLEN} bytes")
    return key


def _check_psk(psk: bytes) -> bytes:
    if len(psk) != PSKLEN:
        raise HandshakeError(f"a psk must be {PSKLEN} bytes")
    return psk


def dh(private_key: X25519PrivateKey, public: bytes) -> bytes:
    """DH(key_pair, public_key): the X25519 shared secret, refusing low-order points.

    A low-order public key (zero, one, the points of order 2, 4 and 8 and their
    non-canonical encodings) makes the result all zeros whatever our private key is, so
    an attacker would know the value being mixed into the keys. ``cryptography`` spots
    the all-zero output and raises ValueError; we turn that into HandshakeError.
    """
    try:
        return private_key.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise HandshakeError("DH with a low-order public key") from exc


def hash_(data: bytes) -> bytes:
    """HASH(data): SHA-256. (The underscore keeps Python's builtin ``hash`` visible.)"""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def hmac_hash(key: bytes, data: bytes) -> bytes:
    """HMAC-HASH(key, data): HMAC-SHA256."""
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def hkdf(chaining_key: bytes, input_key_material: bytes, num_outputs: int) -> tuple[bytes, ...]:
    """HKDF as the Noise spec defines it (section 4.3), returning 2 or 3 outputs.

    temp_key = HMAC(ck, ikm); output_i = HMAC(temp_key, output_{i-1} || byte(i)), with
    output_0 empty. It is RFC 5869 HKDF with the chaining key as salt and empty info: one
    extract, then one expand step per output. Each output is a fresh, independent key,
    which is how one DH result updates the chaining key and yields a cipher key at once.
    """
    temp_key = hmac_hash(chaining_key, input_key_material)
    outputs: list[bytes] = []
    previous = b""
    for i in range(1, num_outputs + 1):
        previous = hmac_hash(temp_key, previous + bytes([i]))
        outputs.append(previous)
    return tuple(outputs)


class CipherState:
    """A key ``k`` and a nonce counter ``n``: AEAD with a nonce that never repeats.

    AES-GCM loses all security if a (key, nonce) pair is reused, so the nonce is not
    chosen but counted: 4 zero bytes then ``n`` as a 64-bit big-endian integer (section
    12.4), and ``n`` only moves forward after a successful operation. During the
    handshake each key encrypts at most one thing before MixKey replaces it.

    The spec's CipherState may also hold no key and then passes data through in the
    clear. IKpsk2 never needs that: the psk modifier makes the very first token, ``e``,
    call MixKey, so a key exists before anything is encrypted. This class therefore
    always has one.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._n = 0

    def _nonce(self) -> bytes:
        return NONCE.pack(self._n)

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """ENCRYPT(k, n++, ad, plaintext): ciphertext with a TAGLEN-byte tag appended."""
        ciphertext = self._aead.encrypt(self._nonce(), plaintext, ad)
        self._n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """DECRYPT(k, n++, ad, ciphertext), or HandshakeError if the tag does not verify."""
        try:
            plaintext = self._aead.decrypt(self._nonce(), ciphertext, ad)
        except InvalidTag as exc:
            raise HandshakeError("handshake message failed authentication") from exc
        self._n += 1
        return plaintext


class SymmetricState:
    """The chaining key ``ck``, the transcript hash ``h`` and the current CipherState.

    ``ck`` accumulates every secret (DH results, the psk) and is where the final keys come
    from. ``h`` accumulates everything said in the handshake (prologue, public keys,
    ciphertexts) and is used as the associated data of every handshake encryption, so any
    change to any earlier byte makes the next MAC fail: tampering is caught as early as
    possible, and both sides end with the same ``h`` only if they saw the same transcript.
    """

    def __init__(self) -> None:
        # InitializeSymmetric: a name of at most HASHLEN bytes is zero-padded to HASHLEN
        # (longer ones would be hashed). Ours is exactly HASHLEN bytes, so h starts as the
        # name itself. Starting from the name means any other protocol derives other keys.
        self.h = PROTOCOL_NAME.ljust(HASHLEN, b"\x00")
        self.ck = self.h
        self._cipher: CipherState | None = None

    def mix_key(self, input_key_material: bytes) -> None:
        """MixKey: fold a secret into ``ck`` and start a new cipher key derived from it."""
        self.ck, temp_k = hkdf(self.ck, input_key_material, 2)
        self._cipher = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        """MixHash: h = HASH(h || data), committing ``data`` to the transcript."""
        self.h = hash_(self.h + data)

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        """MixKeyAndHash: for the psk, which must reach both the keys and the transcript."""
        self.ck, temp_h, temp_k = hkdf(self.ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self._cipher = CipherState(temp_k)

    def _keyed_cipher(self) -> CipherState:
        # Holds for IKpsk2: "e" comes first and calls MixKey (see CipherState).
        assert self._cipher is not None, "IKpsk2 mixes a key before any encryption"
        return self._cipher

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """EncryptAndHash: encrypt with ``h`` as associated data, then hash the ciphertext."""
        ciphertext = self._keyed_cipher().encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """DecryptAndHash: the mirror image; raises HandshakeError on a bad tag."""
        plaintext = self._keyed_cipher().decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """Split: derive (k1, k2) from ``ck``; k1 is initiator->responder, k2 the reverse.

        With HASHLEN = 32 no truncation is needed: each output is a whole AES-256 key.
        """
        k1, k2 = hkdf(self.ck, b"", 2)
        return k1, k2


class HandshakeState:
    """Key pairs plus a SymmetricState, with one method per kind of pattern token.

    ``s`` and ``e`` are our static and ephemeral key pairs; ``rs`` and ``re`` the peer's
    public keys once known. The spec's HandshakeState also interprets a list of message
    patterns; here Initiator and Responder spell out their own tokens instead, which keeps
    the order of operations visible in one place for each message.
    """

    def __init__(
        self,
        s: X25519PrivateKey,
        e: X25519PrivateKey,
        responder_static_public: bytes,
        prologue: bytes,
    ) -> None:
        self.symmetric = SymmetricState()
        # The prologue is hashed, never sent: if the two sides disagree about it (another
        # protocol version, another application) the first MAC fails.
        self.symmetric.mix_hash(prologue)
        # Pre-message "<- s": both sides hash the responder's static key, so message 1
        # is bound to the server the initiator meant to reach.
        self.symmetric.mix_hash(responder_static_public)
        self.s = s
        self.e = e

    def write_e(self) -> bytes:
        """Token ``e`` when sending: our ephemeral public key, sent in the clear.

        MixHash puts it in the transcript. The psk modifier adds MixKey(e): the ephemeral
        then also feeds the keys, so psk-derived keys are unique per handshake.
        """
        e_public = self.e.public_key().public_bytes_raw()
        self.symmetric.mix_hash(e_public)
        self.symmetric.mix_key(e_public)
        return e_public

    def read_e(self, re: bytes) -> None:
        """Token ``e`` when receiving: mix the peer's ephemeral exactly as its sender did."""
        self.symmetric.mix_hash(re)
        self.symmetric.mix_key(re)

    def mix_dh(self, private_key: X25519PrivateKey, public: bytes) -> None:
        """Tokens ``ee``/``es``/``se``/``ss``: MixKey(DH(...)) with the pair the token names."""
        self.symmetric.mix_key(dh(private_key, public))

    def session_keys(self, *, initiator: bool) -> SessionKeys:
        """Split and orient the keys for this side; the handshake hash is the final ``h``."""
        k1, k2 = self.symmetric.split()
        send_key, recv_key = (k1, k2) if initiator else (k2, k1)
        return SessionKeys(send_key=send_key, recv_key=recv_key, handshake_hash=self.symmetric.h)


class _Step(Enum):
    WRITE_INIT = "write_init"
    READ_RESPONSE = "read_response"
    READ_INIT = "read_init"
    WRITE_RESPONSE = "write_response"
    FINISHED = "finished"


class _Role:
    """Single-use sequencing shared by Initiator and Responder.

    ``_begin`` refuses a call that is not the expected next step, then marks the object
    finished before any work is done; each method sets the next step only once it has
    succeeded. So once a step has failed, or the handshake is complete, every call is refused.
    """

    _step: _Step

    def _begin(self, expected: _Step) -> None:
        if self._step is not expected:
            raise HandshakeError(f"{expected.value}() not allowed now (state: {self._step.value})")
        self._step = _Step.FINISHED


def _check_payload(payload: bytes, overhead: int) -> None:
    if overhead + len(payload) > MAX_MESSAGE_LEN:
        raise HandshakeError(f"payload too long for a {MAX_MESSAGE_LEN}-byte Noise message")


def _check_message(message: bytes, overhead: int) -> None:
    if not overhead <= len(message) <= MAX_MESSAGE_LEN:
        raise HandshakeError(f"handshake message of {len(message)} bytes has an impossible length")


class Initiator(_Role):
    """The client side: write message 1, read message 2, get SessionKeys.

    ``responder_static_public`` is the pinned server key: if the server does not hold the
    matching private key it cannot decrypt message 1. ``ephemeral_private`` exists only
    so that tests can reproduce known vectors; leave it None otherwise.
    """

    def __init__(
        self,
        static_private: bytes,
        responder_static_public: bytes,
        psk: bytes,
        prologue: bytes,
        ephemeral_private: bytes | None = None,
    ) -> None:
        self._rs = _check_public(responder_static_public)
        self._psk = _check_psk(psk)
        s = _load_private(static_private)
        self._hs = HandshakeState(s, _ephemeral(ephemeral_private), self._rs, prologue)
        self._step = _Step.WRITE_INIT

    def write_init(self, payload: bytes) -> bytes:
        """Build message 1: ``-> e, es, s, ss`` followed by the encrypted payload.

        The payload is encrypted to the server's static key and authenticated by ours, but
        it carries no server ephemeral yet: anyone recording it can replay it, and it is not
        forward secret against the server's static key. Put nothing secret in it; the
        caller defends against replay (a timestamp in the payload, as WireGuard does).
        """
        self._begin(_Step.WRITE_INIT)
        _check_payload(payload, INIT_OVERHEAD)
        hs = self._hs
        e_public = hs.write_e()  # e: a fresh key per handshake, sent in the clear
        hs.mix_dh(hs.e, self._rs)  # es: from here on, only the real server can follow
        s_public = hs.s.public_key().public_bytes_raw()
        encrypted_s = hs.symmetric.encrypt_and_hash(s_public)  # s: our identity, hidden
        hs.mix_dh(hs.s, self._rs)  # ss: needs our static private key (or the server's)
        message = e_public + encrypted_s + hs.symmetric.encrypt_and_hash(payload)
        self._step = _Step.READ_RESPONSE
        return message

    def read_response(self, message: bytes) -> tuple[bytes, SessionKeys]:
        """Process message 2: ``<- e, ee, se, psk`` then the payload; return (payload, keys).

        The payload's MAC verifies only if the sender could compute every secret mixed so
        far: ``es`` (so it holds the pinned server's static private key), ``ee`` (so this is
        an answer to our ephemeral, not a replay) and the psk. Anything else raises
        HandshakeError.
        """
        self._begin(_Step.READ_RESPONSE)
        _check_message(message, RESPONSE_OVERHEAD)
        hs = self._hs
        re = message[:DHLEN]
        hs.read_e(re)  # e: the server's fresh ephemeral
        hs.mix_dh(hs.e, re)  # ee: forward secrecy, both ephemerals are thrown away after
        hs.mix_dh(hs.s, re)  # se: the keys now need our static private key too
        hs.symmetric.mix_key_and_hash(self._psk)  # psk: the pre-shared secret, last of all
        payload = hs.symmetric.decrypt_and_hash(message[DHLEN:])
        return payload, hs.session_keys(initiator=True)


class Responder(_Role):
    """The server side: read message 1, choose the psk for that client, write message 2.

    The split into two calls is what IK makes possible: after ``read_init`` the server
    knows which client is asking and can look up (or refuse) its psk before answering.
    """

    def __init__(
        self,
        static_private: bytes,
        prologue: bytes,
        ephemeral_private: bytes | None = None,
    ) -> None:
        s = _load_private(static_private)
        e = _ephemeral(ephemeral_private)
        self._hs = HandshakeState(s, e, s.public_key().public_bytes_raw(), prologue)
        self._rs = b""
        self._re = b""
        self._step = _Step.READ_INIT

    def read_init(self, message: bytes) -> tuple[bytes, bytes]:
        """Process message 1; return (initiator static public key, payload).

        Success means the sender encrypted to our static key (``es``) and holds the private
        key for the returned static key (``ss``; unless our own static key has leaked, since
        ``ss`` is computable from either side). It does not mean the sender is authorised:
        the caller checks the key against its registry, and the psk is only tested when the
        initiator reads message 2. The payload may be a replay (see Initiator.write_init).
        """
        self._begin(_Step.READ_INIT)
        _check_message(message, INIT_OVERHEAD)
        hs = self._hs
        self._re = message[:DHLEN]
        hs.read_e(self._re)  # e
        hs.mix_dh(hs.s, self._re)  # es (from our side: our static, their ephemeral)
        self._rs = hs.symmetric.decrypt_and_hash(message[DHLEN : 2 * DHLEN + TAGLEN])  # s
        hs.mix_dh(hs.s, self._rs)  # ss
        payload = hs.symmetric.decrypt_and_hash(message[2 * DHLEN + TAGLEN :])
        self._step = _Step.WRITE_RESPONSE
        return self._rs, payload

    def write_response(self, psk: bytes, payload: bytes) -> tuple[bytes, SessionKeys]:
        """Build message 2 with the psk registered for this client; return (message, keys).

        The payload is already protected by ephemeral-ephemeral keys, so it is forward
        secret, and it is encrypted under the psk, so only the right client can read it.
        """
        self._begin(_Step.WRITE_RESPONSE)
        _check_psk(psk)
        _check_payload(payload, RESPONSE_OVERHEAD)
        hs = self._hs
        e_public = hs.write_e()  # e
        hs.mix_dh(hs.e, self._re)  # ee
        hs.mix_dh(hs.e, self._rs)  # se (from our side: our ephemeral, their static)
        hs.symmetric.mix_key_and_hash(psk)  # psk
        message = e_public + hs.symmetric.encrypt_and_hash(payload)
        return message, hs.session_keys(initiator=False)
