"""The bytes of an image's or video's http(s) URL.

A server fetches the URLs its clients send: `public_only()` (wb deploy, unless --allow_private_media_urls) makes
every connection of a fetch -- the first and each redirect's -- go to an address checked to be public, never a
loopback, private, link-local or reserved one (the server's own network). The check is made on the address
connected to, so a host that resolves to another address by the time of the connection is caught too.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import http.client
import ipaddress
import socket
import urllib.request

MAX_DOWNLOAD = 256 << 20  # bytes of one image or video URL (a server's client must not make it fetch without end)
_PUBLIC_ONLY = contextvars.ContextVar("public_only", default=False)


class FetchError(ValueError):
    """A URL that cannot be fetched (the media readers report it as the image or video it was)."""


@contextlib.contextmanager
def public_only(on: bool = True):
    """Within it, fetches connect to public addresses only (when `on`)."""
    token = _PUBLIC_ONLY.set(on)
    try:
        yield
    finally:
        _PUBLIC_ONLY.reset(token)


def download(url: str, timeout: float = 30) -> bytes:
    """A URL's bytes (at most MAX_DOWNLOAD); the last few are kept, so that a source's size and its pixels (read
    at different moments of one prompt's encoding) cost one download."""
    return _download(url, timeout, _PUBLIC_ONLY.get())


@functools.lru_cache(maxsize=16)
def _download(url: str, timeout: float, public: bool) -> bytes:
    opener = _PUBLIC_OPENER if public else urllib.request.build_opener()
    with opener.open(url, timeout=timeout) as response:  # noqa: S310 (http(s) only: the callers check)
        data = response.read(MAX_DOWNLOAD + 1)
    if len(data) > MAX_DOWNLOAD:
        raise FetchError(f"{url[:80]}: larger than {MAX_DOWNLOAD >> 20} MiB; download it and give the file")
    return data


download.cache_clear = _download.cache_clear  # (tests)


def _public_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **_):
    """socket.create_connection to the host's addresses, each checked to be public (the first that answers)."""
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise FetchError(f"{host}: cannot resolve it ({e})") from None
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
        if not ip.is_global:
            raise FetchError(f"{host} is a non-public address ({ip}); the server fetches public URLs only "
                             "(wb deploy --allow_private_media_urls fetches these too)")
    error = None
    for *_, sockaddr in infos:  # (an IPv6 address first on a machine without IPv6 routes: the next one)
        try:
            return socket.create_connection(sockaddr[:2], timeout, source_address)
        except OSError as e:
            error = e
    raise error


class _Public:
    """An http.client connection that opens its socket through _public_connection."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _public_connection


class _PublicHTTP(_Public, http.client.HTTPConnection):
    pass


class _PublicHTTPS(_Public, http.client.HTTPSConnection):
    pass


class _PublicHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_PublicHTTP, req)


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_PublicHTTPS, req, context=self._context)


# no proxy: the connection itself is the one checked
_PUBLIC_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _PublicHTTPHandler, _PublicHTTPSHandler)
