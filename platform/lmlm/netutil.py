"""Free TCP ports on 127.0.0.1: the one helper for private Redis servers, Serve apps and test clusters."""
from __future__ import annotations

import socket

RAY_RESERVED = range(10002, 20000)  # Ray's client server may not sit here (STACK-NOTES)
# Ports handed out by this process (by free_port, or claimed by callers that pick ports another way),
# never handed out twice; a caller that has released its ports may discard them from this set.
handed_out: set[int] = set()


def port_free(port: int) -> bool:
    """Whether `port` can be bound on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port free on 127.0.0.1 right now, outside 10002-19999, not handed out before in this process."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RAY_RESERVED and port not in handed_out:
            handed_out.add(port)
            return port
    raise OSError("no free port found on 127.0.0.1")
