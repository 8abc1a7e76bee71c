"""Loaded at start-up by Python processes the e2e tests run with this folder on PYTHONPATH.

The operator run as a local process reads its relay pods' load reports from Redis at
`<name>-redis-N.<name>-redis.<namespace>.svc`: names that only a cluster's DNS knows. Outside a
cluster such a lookup would go to the machine's resolver, which is not on loopback. Here every
name except `localhost` and every address off loopback fails at once, as an unknown name
(socket.gaierror, an OSError: the operator then reports the load as unknown, as it does for an
unreachable shard). Nothing else in the process changes.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

_real_getaddrinfo = socket.getaddrinfo


def _loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and name != "localhost":
        try:
            allowed = ipaddress.ip_address(name).is_loopback
        except ValueError:  # a DNS name
            allowed = False
        if not allowed:
            raise socket.gaierror(
                socket.EAI_NONAME, f"{name}: lookups off loopback are disabled in the e2e tests"
            )
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_only
