"""The first thing a newcomer with no network needs to hear: the exchange does not resolve.

Both processes that talk to the exchange (``serve`` with its embedded relay and
``ingest``) resolve its hosts once at start; when one does not resolve they say so in one
plain line with the way out, and the feeds keep retrying under their backoff.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from urllib.parse import urlsplit

from pricectl.config import ExchangeSettings

__all__ = ["say_if_offline"]


def _hosts(exchange: ExchangeSettings) -> list[str]:
    hosts: list[str] = []
    for url in (exchange.ws_url, exchange.rest_url):
        try:
            host = urlsplit(url).hostname
        except ValueError:
            continue
        if host and host not in hosts:
            hosts.append(host)
    return hosts


async def say_if_offline(exchange: ExchangeSettings, hint: str, log: logging.Logger) -> bool:
    """Resolve the exchange's hosts once; on the first that does not resolve, log
    ``cannot resolve HOST: <hint>`` once and return True. Other resolver errors say
    nothing (they are not a missing network, and the feed's own errors will tell)."""
    loop = asyncio.get_running_loop()
    for host in _hosts(exchange):
        try:
            await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror:
            log.warning("cannot resolve %s: %s", host, hint)
            return True
        except OSError:
            return False
    return False
