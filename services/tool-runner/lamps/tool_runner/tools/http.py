"""`http`: fetch a URL for the model, only from hosts the operator allowed.

The tool exists only when the tools file gives it an allowlist. Every hop, the first request and
each redirect, is checked by us (the client follows no redirect on its own): the URL must match the
allowlist, and every address its host resolves to must be public unless it falls in a network
listed under `allow_private`. The request then goes to the address we checked, with the name kept
for the Host header and TLS, so a DNS answer that changes between check and connect (rebinding)
cannot reach an internal address. Responses are read up to a byte limit and truncated beyond it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from lamps.common.version import package_version
from lamps.tool_runner.errors import InvalidArguments, ToolFailure
from lamps.tool_runner.registry import Tool, ToolSpec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


@dataclass(frozen=True)
class AllowRule:
    """One allowlist entry: a host (`example.com`, `*.example.com`, `10.0.0.5`, `host:8080`)
    or a URL prefix (`https://api.example.com/v1/`)."""

    host: str
    subdomains: bool = False
    port: int | None = None
    scheme: str | None = None
    path_prefix: str | None = None

    @classmethod
    def parse(cls, entry: str) -> AllowRule:
        text = entry.strip()
        if "://" in text:
            return cls._parse_prefix(text)
        if not text or "/" in text:
            raise ValueError(f"allowlist entry {entry!r} is neither a host nor a URL prefix")
        host, port = _split_host_port(text)
        if host.startswith("*."):
            return cls(host=_normal_host(host[2:]), subdomains=True, port=port)
        return cls(host=_normal_host(host), port=port)

    @classmethod
    def _parse_prefix(cls, text: str) -> AllowRule:
        try:
            url = httpx.URL(text)
        except httpx.InvalidURL as exc:
            raise ValueError(f"allowlist entry {text!r} is not a URL: {exc}") from None
        if url.scheme not in _DEFAULT_PORTS or not url.host:
            raise ValueError(f"allowlist entry {text!r} must be an http or https URL")
        return cls(
            host=_normal_host(url.host),
            port=url.port or _DEFAULT_PORTS[url.scheme],
            scheme=url.scheme,
            path_prefix=url.path or "/",
        )

    def permits(self, url: httpx.URL) -> bool:
        host, port = _normal_host(url.host), _port(url)
        if self.subdomains:
            if not host.endswith("." + self.host):
                return False
        elif host != self.host:
            return False
        if self.port is not None and port != self.port:
            return False
        if self.scheme is not None and url.scheme != self.scheme:
            return False
        return self.path_prefix is None or _under(url.path, self.path_prefix)


@dataclass(frozen=True)
class HttpSettings:
    """The `http` section of the tools file."""

    allow: tuple[str, ...]
    # Networks (CIDR) or addresses that may be reached although not public.
    allow_private: tuple[str, ...] = ()
    max_response_bytes: int = 256 * 1024
    timeout_seconds: float = 10.0
    max_redirects: int = 5
    max_concurrency: int = 16
    rules: tuple[AllowRule, ...] = field(init=False, repr=False)
    private_networks: tuple[IPNetwork, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.allow:
            raise ValueError("http.allow must list at least one host or URL prefix")
        object.__setattr__(self, "rules", tuple(AllowRule.parse(e) for e in self.allow))
        try:
            networks = tuple(ipaddress.ip_network(n, strict=False) for n in self.allow_private)
        except ValueError as exc:
            raise ValueError(f"http.allow_private: {exc}") from None
        object.__setattr__(self, "private_networks", networks)
        if self.max_response_bytes < 1 or self.max_redirects < 0 or self.timeout_seconds <= 0:
            raise ValueError(
                "http: max_response_bytes and timeout_seconds must be positive, "
                "max_redirects not negative"
            )

    def url_allowed(self, url: httpx.URL) -> bool:
        return any(rule.permits(url) for rule in self.rules)

    def address_refusal(self, host: str, address: IPAddress) -> str | None:
        """Why `address` may not be reached, or None when it may."""
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        ip = mapped or address
        if any(a in net for a in {address, ip} for net in self.private_networks):
            return None
        if ip.is_global and not ip.is_multicast:
            return None
        return (
            f"{host} resolves to {ip} ({_kind(ip)} address); the tool runner reaches such "
            "addresses only when http.allow_private lists them"
        )


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, by the system's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


class HttpTool(Tool):
    """GET or POST a URL on the allowlist and return the response text."""

    def __init__(self, settings: HttpSettings, resolver: Resolver = system_resolver) -> None:
        self.settings = settings
        self._resolve = resolver
        # trust_env=False: proxy variables must not route requests around our checks.
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(settings.timeout_seconds),
            headers={"user-agent": f"lamps-tool-runner/{package_version()}"},
        )
        allowed = ", ".join(settings.allow)
        self._spec = ToolSpec(
            name="http",
            description=f"Fetches a web page or API response by URL. Allowed: {allowed}",
            arguments_schema={
                "type": "object",
                "properties": {
                    "url": {"type": "string", "maxLength": 2048, "description": "http(s) URL"},
                    "method": {"enum": ["GET", "POST"], "default": "GET"},
                    "body": {"type": "string", "description": "Request body (POST)"},
                },
                "required": ["url"],
                "additionalProperties": False,
            },
            timeout_seconds=settings.timeout_seconds,
            max_concurrency=settings.max_concurrency,
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(self, arguments: dict[str, Any]) -> str:
        url = _parse_url(arguments["url"])
        method: str = arguments.get("method", "GET")
        body: str | None = arguments.get("body")
        for _ in range(self.settings.max_redirects + 1):
            address = await self._check(url)
            status, location, text = await self._fetch(url, address, method, body)
            if location is None:
                return _result(url, status, text)
            url = _redirect_target(url, location)
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, body = "GET", None
        raise ToolFailure(f"more than {self.settings.max_redirects} redirects")

    async def _check(self, url: httpx.URL) -> IPAddress:
        """The address to connect to, after the allowlist and address checks."""
        if not self.settings.url_allowed(url):
            raise ToolFailure(
                f"{url.scheme}://{url.netloc.decode()} is not on the tool runner's allowlist "
                f"({', '.join(self.settings.allow)})"
            )
        try:
            addresses = await self._resolve(url.host, _port(url))
        except OSError as exc:
            raise ToolFailure(f"cannot resolve {url.host}: {exc.strerror or exc}") from None
        if not addresses:
            raise ToolFailure(f"cannot resolve {url.host}")
        for address in addresses:
            refusal = self.settings.address_refusal(url.host, address)
            if refusal is not None:
                raise ToolFailure(refusal)
        return addresses[0]

    async def _fetch(
        self, url: httpx.URL, address: IPAddress, method: str, body: str | None
    ) -> tuple[int, str | None, str]:
        """(status, redirect location or None, body text) from `address`, pinned."""
        request = self._client.build_request(
            method,
            url.copy_with(host=str(address)),
            content=body.encode() if body is not None else None,
            headers={"host": url.netloc.decode(), "accept": "text/*, application/json"},
            extensions={"sni_hostname": url.host} if url.scheme == "https" else None,
        )
        try:
            response = await self._client.send(request, stream=True)
            try:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    return response.status_code, response.headers["location"], ""
                return response.status_code, None, await self._read_text(response)
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise ToolFailure(f"{url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ToolFailure(f"request to {url} failed: {exc}") from None

    async def _read_text(self, response: httpx.Response) -> str:
        content_type = response.headers.get("content-type", "text/plain").lower()
        if not content_type.startswith(_TEXT_TYPES):
            raise ToolFailure(f"the response is {content_type.split(';')[0]}, not text")
        limit = self.settings.max_response_bytes
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > limit:
                text = bytes(data[:limit]).decode(response.encoding or "utf-8", "replace")
                return f"{text}\n[response truncated at {limit} bytes]"
        return bytes(data).decode(response.encoding or "utf-8", "replace")


def _parse_url(text: str) -> httpx.URL:
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise InvalidArguments(f"{text!r} is not a URL: {exc}") from None
    if url.scheme not in _DEFAULT_PORTS or not url.host:
        raise InvalidArguments(f"{text!r} is not an http or https URL")
    if url.userinfo:
        raise InvalidArguments("URLs with credentials are not allowed")
    return url


def _redirect_target(url: httpx.URL, location: str) -> httpx.URL:
    """Where a redirect leads. The model's arguments were fine: a location we will not follow
    (another scheme, credentials, not a URL) is the site's failure, not INVALID_ARGUMENTS."""
    try:
        return _parse_url(str(url.join(location)))
    except (InvalidArguments, httpx.InvalidURL) as exc:
        reason = exc.message if isinstance(exc, InvalidArguments) else str(exc)
        raise ToolFailure(f"{url} redirected to a URL the tool does not follow: {reason}") from None


def _result(url: httpx.URL, status: int, text: str) -> str:
    if status >= 400:
        raise ToolFailure(f"{url} answered HTTP {status}: {text[:200]}")
    return text


def _split_host_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, None


def _normal_host(host: str) -> str:
    """Lower case without a trailing dot; IP addresses in their canonical form."""
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _port(url: httpx.URL) -> int:
    return url.port or _DEFAULT_PORTS[url.scheme]


def _under(path: str, prefix: str) -> bool:
    """`path` is `prefix` or below it: /api matches /api and /api/x, not /api-admin."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


def _kind(ip: IPAddress) -> str:
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return "non-public"
