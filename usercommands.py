"""The unprivileged user commands of ``client.py``: each one request to the daemon's socket.

    client.py import PROFILE [--name NAME]
    client.py list
    client.py remove NAME
    client.py connect [NAME] [--best | --random] [--full-tunnel | --route CIDR ...] [--kill-switch]
    client.py disconnect [--force]
    client.py status [--json]

All take ``--socket PATH`` (default /run/tunlib/client.sock) and need no root, only the right to
connect to that socket (root, or membership of group ``tunlib``). They never change the host
themselves: the daemon does (daemon.py).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from control import STATUS_KEYS, request
from controlsock import call
from daemon import DEFAULT_SOCKET
from errors import UserError

MAX_PROFILE_FILE = 64 * 1024


def say(text: str) -> None:
    print(text, flush=True)


def cmd_import(args: argparse.Namespace) -> int:
    path = Path(args.profile)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_PROFILE_FILE + 1)
    except OSError as exc:
        raise UserError(f"cannot read profile {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"profile {path} is not UTF-8 text") from None
    if len(text) > MAX_PROFILE_FILE:
        raise UserError(f"profile {path} is larger than {MAX_PROFILE_FILE} bytes")
    name = args.name or path.stem
    result = call(args.socket, request("import", name=name, profile=text))
    say(f"imported {result['name']}: {', '.join(result['endpoints'])}")
    say(f"the daemon keeps its own root-only copy; you may delete {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    entries = call(args.socket, request("list"))
    if not entries:
        say("no profiles imported (client.py import PROFILE)")
        return 0
    for entry in entries:
        endpoints = ", ".join(entry["endpoints"]) if entry["endpoints"] is not None else "(unreadable)"
        say(f"{entry['name']}\t{endpoints}\t{describe_result(entry['last_result'])}")
    return 0


def describe_result(result: dict[str, Any] | None) -> str:
    if not result:
        return "never connected"
    if result.get("ok"):
        return f"connected to {result.get('endpoint')} at {result.get('at')}"
    return f"failed at {result.get('at')} ({result.get('endpoint')}): {result.get('error')}"


def cmd_remove(args: argparse.Namespace) -> int:
    call(args.socket, request("remove", name=args.name))
    say(f"removed {args.name}")
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    pick = "best" if args.best else "random" if args.random else "first"
    status = call(
        args.socket,
        request(
            "connect",
            name=args.name,
            pick=pick,
            full_tunnel=args.full_tunnel,
            routes=[str(r) for r in args.route],
            kill_switch=args.kill_switch,
        ),
        on_progress=say,
    )
    say(f"connected: {status['profile']} at {status['endpoint']}, address {status['address']}")
    return 0


def cmd_disconnect(args: argparse.Namespace) -> int:
    result = call(args.socket, request("disconnect", force=args.force))
    say("disconnected" if result.get("was") != "disconnected" else "was not connected")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = call(args.socket, request("status"))
    if not isinstance(status, dict) or tuple(status) != STATUS_KEYS:
        raise UserError("the daemon's status reply does not have the expected keys")
    if args.json:
        json.dump(status, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_status(status))
    return 0


def format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def format_status(s: dict[str, Any]) -> str:
    """The human view of ``status``, in the spirit of ``wg show``."""
    lines = [f"state: {s['state']}"]
    if s["profile"] is not None:
        lines.append(f"profile: {s['profile']}")
    if s["endpoint"] is not None:
        lines += [f"endpoint: {s['endpoint']}", f"address: {s['address']}"]
    if s["connected_since"] is not None:
        lines.append(f"connected since: {s['connected_since']}")
    if s["last_handshake"] is not None:
        lines.append(f"latest handshake: {s['last_handshake']:.0f} seconds ago")
    if s["state"] != "disconnected":
        lines.append(
            f"transfer: {format_bytes(s['rx_bytes'])} received ({s['rx_packets']} packets), "
            f"{format_bytes(s['tx_bytes'])} sent ({s['tx_packets']} packets)"
        )
        drops = {k: v for k, v in s["dropped"].items() if v}
        lines.append("dropped: " + (", ".join(f"{k} {v}" for k, v in drops.items()) if drops else "none"))
        lines.append("routes: " + (", ".join(s["routes"]) or "none"))
        lines.append("dns: " + (", ".join(s["dns"]) or "unchanged"))
        lines.append(f"kill switch: {'on' if s['kill_switch'] else 'off'}")
    return "".join(f"{line}\n" for line in lines)


def cidr(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv4 network: {text!r}") from None


def add_user_commands(sub: argparse._SubParsersAction) -> None:
    """Add the commands above to ``client.py``'s parser."""

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text + " (no root needed: group tunlib)")
        p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"the daemon's socket (default {DEFAULT_SOCKET})")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        return p

    p = add("import", "give the daemon a profile; it keeps its own root-only copy")
    p.add_argument("profile", help="profile file printed by 'server.py add-client'")
    p.add_argument("--name", help="name to import it as (default: the file name without .conf)")
    p.set_defaults(func=cmd_import)

    p = add("list", "imported profiles, their endpoints and the last connection result")
    p.set_defaults(func=cmd_list)

    p = add("remove", "forget an imported profile")
    p.add_argument("name")
    p.set_defaults(func=cmd_remove)

    p = add("connect", "connect through the daemon; returns once connected")
    p.add_argument("name", nargs="?", help="profile to use (default: every imported profile)")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--best", action="store_true", help="try every endpoint, keep the fastest handshake")
    pick.add_argument("--random", action="store_true", help="pick an endpoint at random")
    routing = p.add_mutually_exclusive_group()
    routing.add_argument("--full-tunnel", action="store_true", help="send all IPv4 traffic through the tunnel")
    routing.add_argument(
        "--route", type=cidr, action="append", default=[], metavar="CIDR", help="send this network through (repeatable)"
    )
    p.add_argument("--kill-switch", action="store_true", help="block all traffic outside the tunnel until disconnect")
    p.set_defaults(func=cmd_connect)

    p = add("disconnect", "tear the tunnel down and restore routes, firewall and DNS")
    p.add_argument("--force", action="store_true", help="also when the session is stuck")
    p.set_defaults(func=cmd_disconnect)

    p = add("status", "the tunnel's state, counters, routes, DNS and kill switch")
    p.add_argument("--json", action="store_true", help="machine-readable: exactly the documented keys")
    p.set_defaults(func=cmd_status)
