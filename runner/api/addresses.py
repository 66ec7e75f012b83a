"""Where downloads may go: public addresses only, unless the API itself is a private one.

Result URLs come from the server's answers. A hostile or compromised server could point them
(or a redirect) at this machine or its network (127.0.0.1, 10.x, 169.254.169.254 …) to make
the runner fetch what it should not. Against a public API, private addresses are refused:
IP literals here, names through ``PublicOnlyResolver``. Against the emulator or a local proxy
(itself at a private address) they are allowed.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class PrivateAddress(OSError):
    """A download was about to reach a private address."""


def is_private(host: str | None) -> bool:
    """Whether ``host`` (an IP literal or ``localhost``) lies outside the public internet."""
    if not host:
        return False
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # a name: the resolver decides
    return not address.is_global or address.is_multicast


class PublicOnlyResolver(AbstractResolver):
    """Resolves names as usual and refuses any that lead only to private addresses."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [entry for entry in found if not is_private(entry["host"])]
        if not public:
            raise PrivateAddress(f"{host} resolves to a private address; refused")
        return public

    async def close(self) -> None:
        await self._inner.close()


def resolver_for(api_host: str | None) -> Any:
    """The resolver a session talking to ``api_host`` should use (None: aiohttp's own)."""
    return None if is_private(api_host) else PublicOnlyResolver()
