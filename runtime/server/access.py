"""Who may use the server: the API key, the Host a request names, the Origin of a browser's request, CORS.

- API key (`--api-key`, or the AERIE_API_KEY environment variable): the API (/v1/...), /metrics and every
  POST need `Authorization: Bearer KEY` (OpenAI's header; 401 otherwise). /health and the demo page's files
  stay open, as a load balancer and a browser fetch them without a key.
- Host: a web page can make a browser send requests to a server on the user's machine by pointing a name it
  controls at 127.0.0.1 (DNS rebinding). Such a request names the attacker's host, so only these are served:
  an IP address, `localhost`, this machine's names when bound beyond loopback, and `--allow-host` names.
- Origin: a page on another site can make a browser POST to the server (a `text/plain` form needs no CORS
  preflight). Browsers say where a request comes from in `Origin`: requests from another origin are refused
  (403) unless `--cors-origin` lists it, and only then are CORS headers sent.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from functools import lru_cache
from urllib.parse import urlsplit

from .api_error import ApiError

API_KEY_ENV = "AERIE_API_KEY"
ANY = "*"
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only."""
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(authority: str) -> str:
    """`example.com:8000` -> `example.com`, `[::1]:8000` -> `::1`, lowercase."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


@lru_cache(maxsize=1)
def machine_names() -> frozenset[str]:
    """The names this machine calls itself (what a client on the network may use to reach it)."""
    names = {socket.gethostname().lower()}
    try:
        names.add(socket.getfqdn().lower())
    except OSError:
        pass
    return frozenset(names)


class Access:
    """The access rules of one server: `check(...)` raises ApiError (401, 403) for a request they refuse."""

    def __init__(self, bind_host: str, api_key: str | None = None, allowed_hosts: tuple[str, ...] = (),
                 cors_origins: tuple[str, ...] = ()):
        self.api_key = api_key.encode() if api_key else None
        self.any_host = ANY in allowed_hosts
        self.hosts = {h.lower() for h in allowed_hosts} | LOCAL_NAMES
        if not is_loopback(bind_host):
            self.hosts |= machine_names() | {bind_host.lower()}
        self.any_origin = ANY in cors_origins
        self.origins = {o.rstrip("/").lower() for o in cors_origins if o != ANY}

    def check(self, method: str, path: str, headers) -> None:
        self.check_host(headers.get("Host"))
        origin = headers.get("Origin")
        if origin is not None and not (self.same_origin(origin, headers.get("Host")) or self.cors_allows(origin)):
            raise ApiError(403, f"requests from the web page at {origin!r} are refused; start the server with "
                                f"--cors-origin {origin} to let that page use it", code="origin_not_allowed")
        if self.needs_key(method, path):
            self.check_key(headers.get("Authorization"))

    def check_host(self, host: str | None) -> None:
        if self.any_host or host is None:  # HTTP/1.0 clients send no Host; a browser always does
            return
        name = host_name(host)
        if not (name in self.hosts or is_ip(name)):
            raise ApiError(403, f"the Host {host!r} is not one this server answers to (a DNS-rebinding guard); "
                                f"reach it by its address, or start it with --allow-host {name}",
                           code="host_not_allowed")

    @staticmethod
    def same_origin(origin: str, host: str | None) -> bool:
        parts = urlsplit(origin)
        return host is not None and parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()

    def cors_allows(self, origin: str) -> bool:
        return self.any_origin or origin.rstrip("/").lower() in self.origins

    def needs_key(self, method: str, path: str) -> bool:
        if self.api_key is None or method == "OPTIONS":
            return False
        return method != "GET" or path.startswith("/v1/") or path == "/metrics"

    def check_key(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key):
            raise ApiError(401, "a valid API key is needed: send the header `Authorization: Bearer KEY`",
                           code="invalid_api_key")

    def cors_headers(self, origin: str | None) -> dict[str, str]:
        """Access-Control-* headers for a request from `origin`, when --cors-origin allows it."""
        if origin is None or not self.cors_allows(origin):
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Max-Age": "600"}
