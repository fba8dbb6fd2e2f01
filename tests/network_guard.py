"""Refuse every network connection except loopback and local sockets.

Imported by the tests' conftest for pytest's own process, and run as an IPython start-up file in
the kernels nbval starts, so a notebook that tried to download something would fail loudly.
"""

import ipaddress
import socket

_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex


class NetworkBlockedError(ConnectionRefusedError):
    """Raised for any connection the course must not make (it runs offline)."""


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_local(address):
        raise NetworkBlockedError(f"network access to {address!r} is blocked: the course runs offline")
    return _original_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise NetworkBlockedError(f"network access to {address!r} is blocked: the course runs offline")
    return _original_connect_ex(self, address)


def install() -> None:
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex


def uninstall() -> None:
    socket.socket.connect = _original_connect
    socket.socket.connect_ex = _original_connect_ex


if __name__ == "network_guard_startup":  # run by the IPython start-up file of notebook kernels
    install()
