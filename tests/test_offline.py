"""The course runs offline: tests and notebook kernels refuse every connection but loopback."""

import os
import socket

import network_guard
import pytest


def test_a_remote_connection_is_refused_in_tests():
    with pytest.raises(network_guard.NetworkBlockedError, match="blocked"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)


def test_loopback_stays_open(free_port):
    with socket.socket() as server:
        server.bind(("127.0.0.1", free_port))
        server.listen(1)
        with socket.create_connection(("127.0.0.1", free_port), timeout=2):
            pass


def test_notebook_kernels_refuse_remote_connections_too():
    from jupyter_client.manager import start_new_kernel

    assert "IPYTHONDIR" in os.environ, "conftest should give kernels a start-up file"
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        reply = client.execute_interactive(
            "import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=1)", timeout=60
        )
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "NetworkBlockedError"
        # The guard leaves the learner's namespace alone.
        clean = client.execute_interactive("assert not {'install', 'uninstall', 'NetworkBlockedError'} & set(dir())", timeout=30)
        assert clean["content"]["status"] == "ok"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
