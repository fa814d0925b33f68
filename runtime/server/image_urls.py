"""An `image_url` from a chat message to an encoded image and its size, then to decoded RGB, within limits.

- `data:image/...;base64,...`  always accepted (what the OpenAI client sends for a local file);
- a local path or `file://` URL  only under the directory given with --allow-local-images;
- `http(s)://`  only with --allow-remote-images, then with a byte limit and a time limit for the download,
  and only from public addresses (checked after DNS resolution and again on every redirect; the connection
  goes to the address that was checked), unless --allow-image-network names a private network. Every
  failure to fetch gives the same error, so the server can't be used to map a network.

The byte limit is checked before anything is decoded (from the base64 length, the file size, or while
downloading); the pixel and side limits from the image header (`fetch_encoded`), before the request is
queued for decoding (`decode`).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import logging
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import ImageError
from ..image_io import image_size, load_image
from .api_error import ApiError

log = logging.getLogger("aerie.server")

MAX_REDIRECTS = 3
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 16 * 1024**2
    max_pixels: int = 16_000_000
    max_side: int = 16_384  # see image_io.DEFAULT_MAX_SIDE: decoding cost grows with the rows
    local_dir: Path | None = None  # images may be read from under this directory
    allow_remote: bool = False
    remote_timeout: float = 10.0  # seconds for the whole download
    remote_networks: tuple[Network, ...] = ()  # private networks remote images may come from as well


@dataclass
class EncodedImage:
    """An image file's contents (or its path under the allowed directory) and its size from the header."""

    data: bytes | Path
    width: int
    height: int
    param: str  # where it is in the request, for error messages

    @property
    def pixels(self) -> int:
        return self.width * self.height


def fetch_encoded(url: str, limits: ImageLimits, param: str) -> EncodedImage:
    """The bytes an `image_url` names and its size read from the header; ApiError 400 naming `param`."""
    if url.startswith("data:"):
        data: bytes | Path = decode_data_url(url, limits, param)
    elif url.startswith(("http://", "https://")):
        data = download(url, limits, param)
    else:
        data = local_path(url, limits, param)
    try:
        width, height = image_size(data, limits.max_pixels, limits.max_side)
    except ImageError as e:
        raise ApiError(400, str(e), param, "invalid_image") from None
    return EncodedImage(data, width, height, param)


def decode(image: EncodedImage, limits: ImageLimits) -> Image.Image:
    try:
        return load_image(image.data, limits.max_pixels, limits.max_side)
    except ImageError as e:
        raise ApiError(400, str(e), image.param, "invalid_image") from None


def too_large(size: int, limits: ImageLimits, param: str) -> ApiError:
    return ApiError(400, f"the image is {size:,} bytes, over the server's limit of {limits.max_bytes:,}; "
                         "send a smaller image", param, "image_too_large")


def decode_data_url(url: str, limits: ImageLimits, param: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ApiError(400, "a data: URL must be base64 (data:image/png;base64,...)", param, "invalid_image_url")
    media = header[len("data:"):-len(";base64")]
    if media and not media.startswith("image/"):
        raise ApiError(400, f"the data: URL holds {media!r}, not an image", param, "invalid_image_url")
    return decode_base64(payload, limits, param, "the data: URL")


def decode_base64(payload: str, limits: ImageLimits, param: str, what: str) -> bytes:
    if len(payload) * 3 // 4 > limits.max_bytes + 2:
        raise too_large(len(payload) * 3 // 4, limits, param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{what} is not valid base64", param, "invalid_image_url") from None


def decode_base64_image(text: str, limits: ImageLimits, param: str) -> bytes:
    """An image file's bytes from a data: URL or bare base64 (vLLM's Triton backend takes bare base64)."""
    if text.startswith("data:"):
        return decode_data_url(text, limits, param)
    return decode_base64(text, limits, param, "the image")


def local_path(url: str, limits: ImageLimits, param: str) -> Path:
    if limits.local_dir is None:
        raise ApiError(400, "local image paths are refused by this server; send the image as a data: URL "
                            "(or start the server with --allow-local-images DIR)", param, "invalid_image_url")
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path) if url.startswith("file://") else url)
    root = limits.local_dir.resolve()
    try:
        resolved = (root / path).resolve()  # an absolute path stays itself; a relative one is under the root
    except (OSError, ValueError):  # a symlink loop, a NUL byte
        raise ApiError(400, f"{url}: not a readable path", param, "invalid_image_url") from None
    if not resolved.is_relative_to(root):
        raise ApiError(400, f"{url}: only images under {root} may be read", param, "invalid_image_url")
    if resolved.is_file() and resolved.stat().st_size > limits.max_bytes:
        raise too_large(resolved.stat().st_size, limits, param)
    return resolved


# --- remote images -----------------------------------------------------------------------------------


class FetchRefused(Exception):
    """Why a download failed, for the server's log; the client hears only that it failed."""


def allowed_address(address: str, networks: tuple[Network, ...]) -> bool:
    """A public address (not loopback, private, link-local, shared, reserved, multicast: every cloud metadata
    service is among these), or one in `networks`."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in networks):
        return True
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int, networks: tuple[Network, ...]) -> str:
    """The first address of `host`; FetchRefused if any of its addresses is one images may not come from
    (a name that also points inside is refused, whichever address a later lookup would give)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise FetchRefused(f"cannot resolve {host!r} ({e})") from None
    addresses = [info[4][0] for info in infos]
    refused = [a for a in addresses if not allowed_address(a, networks)]
    if not addresses or refused:
        raise FetchRefused(f"{host!r} resolves to {', '.join(refused) or 'nothing'}, not a public address")
    return addresses[0]


class PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to `address` (already checked) while the Host header names the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to `address`, the certificate checked against the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def open_url(url: str, limits: ImageLimits, deadline: float) -> http.client.HTTPResponse:
    """The response for `url` after at most MAX_REDIRECTS redirects, each hop's address checked first."""
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchRefused(f"{url!r} is not an http(s) URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = resolve(parts.hostname, port, limits.remote_networks)
        connection = (PinnedHTTPSConnection if parts.scheme == "https" else PinnedHTTPConnection)(
            parts.hostname, port, address, max(deadline - time.monotonic(), 0.1))
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        connection.request("GET", path, headers={"User-Agent": "aerie", "Accept": "image/*"})
        response = connection.getresponse()
        if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
            url = urllib.parse.urljoin(url, response.getheader("Location"))
            connection.close()
            continue
        if response.status != 200:
            connection.close()
            raise FetchRefused(f"HTTP {response.status}")
        return response
    raise FetchRefused(f"more than {MAX_REDIRECTS} redirects")


def download(url: str, limits: ImageLimits, param: str) -> bytes:
    if not limits.allow_remote:
        raise ApiError(400, "remote image URLs are refused by this server; send the image as a data: URL "
                            "(or start the server with --allow-remote-images)", param, "invalid_image_url")
    deadline = time.monotonic() + limits.remote_timeout
    try:
        response = open_url(url, limits, deadline)
        with response:
            declared = int(response.getheader("Content-Length") or 0)
            if declared > limits.max_bytes:
                raise too_large(declared, limits, param)
            chunks, size = [], 0
            while chunk := response.read1(64 * 1024):  # one recv at a time, so the deadline is seen
                size += len(chunk)
                if size > limits.max_bytes:
                    raise too_large(size, limits, param)
                if time.monotonic() > deadline:
                    raise FetchRefused(f"took longer than {limits.remote_timeout:g} s")
                chunks.append(chunk)
    except ApiError:
        raise
    except (FetchRefused, http.client.HTTPException, OSError, ValueError) as e:
        log.info("image download refused or failed: %s: %s", url, e)
        raise ApiError(400, "could not download an image from this URL (it must be a public http(s) address "
                            "that answers within the time limit)", param, "image_download_failed") from None
    return b"".join(chunks)
