"""portshare.TlsHandshake: the server's handshake state machine behind TLS, driven with bytes and
a made-up clock, as the gatekeeper's selector loop drives it. A TLS client and a tunlib
initiator play the other end, in memory."""

from __future__ import annotations

import functools
import socket

import pytest
from test_session import ALICE, CLIENT_PRIVATE, PSK, SERVER_PRIVATE, T0, Registry, init_frame

import session
from carrier import TlsCarrier, TlsEndpoint, client_context
from framing import FrameType, classify_first_frame
from handshake import Initiator, public_key
from portshare import TlsFront, TlsHandshake, Visit
from session import Established, Refuse, Send, ServerHandshake

SERVER_PUBLIC = public_key(SERVER_PRIVATE)


class Peer:
    """The far end: a TLS client endpoint, fed with what the machine's Sends carry."""

    def __init__(self, server: TlsHandshake) -> None:
        self.server = server
        self.tls = TlsEndpoint(client_context(), server_side=False, server_name="www.example.test")
        self.actions: list = []
        self.received = b""

    def pump(self, plaintext: bytes = b"") -> list:
        """Finish the TLS handshake if needed, send ``plaintext``; return the machine's non-Send actions."""
        new: list = []
        for _ in range(10):
            done = self.tls.handshake()
            if plaintext and done:
                self.tls.ssl.write(plaintext)
                plaintext = b""
            out = self.tls.outgoing.read()
            actions = self.server.receive(out) if out else []
            for action in actions:
                if isinstance(action, Send):
                    self.tls.incoming.write(action.data)
                else:
                    new.append(action)
            self.actions += actions
            if done and not out and not plaintext:
                break
        if self.tls.handshake():
            self.received += self.tls.read_available(1 << 20)
        return new


def tls_machine(context, registry: Registry) -> TlsHandshake:
    classify = functools.partial(classify_first_frame, SERVER_PUBLIC)
    return TlsHandshake(TlsFront(context, classify), ServerHandshake(registry.admission(), T0), T0)


def test_a_client_is_established_inside_tls(context) -> None:
    server = tls_machine(context, Registry(ALICE))
    peer = Peer(server)
    initiator = Initiator(CLIENT_PRIVATE, SERVER_PUBLIC, PSK, session.PROLOGUE)
    assert peer.pump(init_frame(initiator)) == []
    assert peer.received[4] == FrameType.HANDSHAKE_RESPONSE
    _, keys = initiator.read_response(peer.received[5:])
    (established,) = peer.pump(session.SendState(keys.send_key).seal(b""))
    assert isinstance(established, Established) and established.record == ALICE
    a, _b = socket.socketpair()
    assert isinstance(server.connection(a), TlsCarrier)
    a.close()


@pytest.mark.parametrize("registry", [Registry(), Registry(ALICE)], ids=["unknown-client", "stale"])
def test_refusals_become_the_website_never_a_reject(context, registry: Registry) -> None:
    registry.timestamps[ALICE.public_key] = b"\xff" * 12  # a newer handshake was confirmed: replays are stale
    initiator = Initiator(CLIENT_PRIVATE, SERVER_PUBLIC, PSK, session.PROLOGUE)
    frame = init_frame(initiator)
    server = tls_machine(context, registry)
    peer = Peer(server)
    (visit,) = peer.pump(frame)
    assert isinstance(visit, Visit)
    assert visit.received == frame
    assert visit.reason == ("unknown-client-to-website" if not registry.records else "stale-to-website")
    assert peer.received == b""  # nothing of tunlib's came back: no REJECT


def test_web_requests_and_silence(context) -> None:
    server = tls_machine(context, Registry(ALICE))
    (visit,) = Peer(server).pump(b"GET / HTTP/1.1\r\n\r\n")
    assert isinstance(visit, Visit) and visit.received == b"GET / HTTP/1.1\r\n\r\n"

    silent = tls_machine(context, Registry(ALICE))
    assert Peer(silent).pump() == []
    assert silent.expire(T0 + 1) is None
    late = silent.expire(T0 + session.HANDSHAKE_TIMEOUT)
    assert isinstance(late, Visit) and late.received == b""

    mute = tls_machine(context, Registry(ALICE))
    refusal = mute.expire(T0 + session.FIRST_BYTE_TIMEOUT)
    assert isinstance(refusal, Refuse) and refusal.reason == "timeout"


def test_not_tls_is_a_raw_visit(context) -> None:
    server = tls_machine(context, Registry(ALICE))
    (visit,) = server.receive(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert isinstance(visit, Visit) and visit.endpoint is None
    assert visit.received == b"SSH-2.0-OpenSSH_9.2\r\n"
