"""mDNS/DNS-SD advertisement of a running control plane: `_edgefabric._tcp.local.` (python-zeroconf).

The service instance is `edgefabric-<host>-<port>._edgefabric._tcp.local.`; its SRV record carries
the API port and its TXT record the properties `api` (REST base URL) and `nats` (broker URL), which
`edgefabric-agent enroll --discover` reads.

Invariants:
- Announced only on the interface the API is bound to (`127.0.0.1`: loopback only); a wildcard
  bind (`0.0.0.0`) announces on every interface, with every IPv4 address of the host.
- `advertise()` returns once the name is registered (probing done) and, on exit, sends the goodbye
  packets before closing, so browsers drop the entry at once instead of waiting for its TTL.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import ifaddr
from zeroconf import InterfaceChoice, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from control_plane.errors import AdvertisementError

SERVICE_TYPE = "_edgefabric._tcp.local."
_WILDCARDS = {"0.0.0.0", "::", ""}


def instance_name(port: int) -> str:
    """`edgefabric-<hostname>-<port>`: unique per API listener on a host."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"
    return f"edgefabric-{host}-{port}"


def advertised_addresses(host: str) -> list[str]:
    """The addresses announced for an API bound to `host`."""
    if host in _WILDCARDS:
        return sorted(
            {
                str(ip.ip)
                for adapter in ifaddr.get_adapters()
                for ip in adapter.ips
                if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback
            }
        ) or ["127.0.0.1"]
    try:
        return [str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])]
    except OSError as e:
        raise AdvertisementError(host, str(e)) from e


@asynccontextmanager
async def advertise(*, host: str, port: int, api_url: str, nats_url: str) -> AsyncIterator[ServiceInfo]:
    """Announce the control plane while the block runs."""
    addresses = advertised_addresses(host)
    name = instance_name(port)
    info = ServiceInfo(
        SERVICE_TYPE,
        f"{name}.{SERVICE_TYPE}",
        port=port,
        addresses=[ipaddress.ip_address(address).packed for address in addresses],
        properties={"api": api_url, "nats": nats_url},
        server=f"{name}.local.",
    )
    interfaces: InterfaceChoice | list[str] = InterfaceChoice.All if host in _WILDCARDS else addresses
    try:
        zeroconf = AsyncZeroconf(interfaces=interfaces)
    except OSError as e:
        raise AdvertisementError(host, str(e)) from e
    try:
        await (await zeroconf.async_register_service(info, allow_name_change=True))
        yield info
        await (await zeroconf.async_unregister_service(info))
    finally:
        await zeroconf.async_close()
