"""The HTTP tool: only allowlisted URLs, no private addresses unless listed, bounded answers."""

from __future__ import annotations

import ipaddress
import re

import httpx
import pytest

from lamps.tool_runner.errors import ToolFailure
from lamps.tool_runner.tools.http import AllowRule, HttpSettings, HttpTool, IPAddress
from lamps.v1 import common_pb2
from tests.tool_runner.conftest import RESPONSE_LIMIT, RunningToolRunner

OK = common_pb2.TOOL_ERROR_CODE_UNSPECIFIED
INVALID = common_pb2.TOOL_ERROR_CODE_INVALID_ARGUMENTS
FAILED = common_pb2.TOOL_ERROR_CODE_TOOL_FAILED


@pytest.mark.parametrize(
    ("entry", "url", "allowed"),
    [
        ("example.com", "https://example.com/a", True),
        ("example.com", "http://EXAMPLE.com./a", True),
        ("example.com", "https://api.example.com/", False),
        ("example.com", "https://example.com.evil.net/", False),
        ("*.example.com", "https://api.example.com/", True),
        ("*.example.com", "https://example.com/", False),
        ("*.example.com", "https://evilexample.com/", False),
        ("example.com:8443", "https://example.com:8443/", True),
        ("example.com:8443", "https://example.com/", False),
        ("10.0.0.5", "http://10.0.0.5:9000/", True),
        ("[::1]:8080", "http://[::1]:8080/", True),
        ("::1", "http://[0:0::1]/", True),
        ("https://api.example.com/v1", "https://api.example.com/v1/users", True),
        ("https://api.example.com/v1", "https://api.example.com/v1", True),
        ("https://api.example.com/v1", "https://api.example.com/v10", False),
        ("https://api.example.com/v1/", "https://api.example.com/v1-admin", False),
        ("https://api.example.com/v1", "http://api.example.com/v1", False),
        ("https://api.example.com/v1", "https://api.example.com:444/v1", False),
    ],
)
def test_allowlist_entries_match_hosts_ports_and_path_prefixes(
    entry: str, url: str, allowed: bool
) -> None:
    assert AllowRule.parse(entry).permits(httpx.URL(url)) is allowed


@pytest.mark.parametrize("entry", ["", "example.com/path", "ftp://example.com/"])
def test_an_unusable_allowlist_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="allowlist entry"):
        AllowRule.parse(entry)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "non-public"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 -- an address under test, not a bind
        ("224.0.0.1", "multicast"),
    ],
)
def test_non_public_addresses_are_refused_unless_listed(address: str, kind: str) -> None:
    ip = ipaddress.ip_address(address)
    refusal = HttpSettings(allow=("example.com",)).address_refusal("example.com", ip)
    assert refusal is not None
    assert f"({kind} address)" in refusal
    listed = HttpSettings(allow=("example.com",), allow_private=(address,))
    assert listed.address_refusal("example.com", ip) is None


def test_public_addresses_are_reachable() -> None:
    settings = HttpSettings(allow=("example.com",))
    assert settings.address_refusal("example.com", ipaddress.ip_address("93.184.215.14")) is None


def test_settings_refuse_an_empty_allowlist_or_a_bad_network() -> None:
    with pytest.raises(ValueError, match="at least one host"):
        HttpSettings(allow=())
    with pytest.raises(ValueError, match="allow_private"):
        HttpSettings(allow=("a.com",), allow_private=("not-a-network",))


def resolver_to(*addresses: str):  # type: ignore[no-untyped-def]
    """A DNS stand-in (DNS is outside our system) answering every name with `addresses`."""

    async def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in addresses]

    return resolve


@pytest.mark.parametrize("answer", [("10.1.2.3",), ("93.184.215.14", "127.0.0.1")])
async def test_a_name_that_resolves_to_a_private_address_is_refused_before_connecting(
    answer: tuple[str, ...],
) -> None:
    tool = HttpTool(HttpSettings(allow=("internal.example",)), resolver=resolver_to(*answer))
    try:
        with pytest.raises(ToolFailure, match=re.escape("internal.example resolves to")):
            await tool.call({"url": "http://internal.example/secrets"})
    finally:
        await tool.aclose()


async def test_fetching_an_allowed_loopback_page(
    tool_runner: RunningToolRunner, http_site: str
) -> None:
    result = await tool_runner.execute("http", {"url": f"{http_site}/text"})
    assert (result.error.code, result.output) == (OK, "hello from the allowed site")


async def test_posting_a_body(tool_runner: RunningToolRunner, http_site: str) -> None:
    result = await tool_runner.execute(
        "http", {"url": f"{http_site}/echo", "method": "POST", "body": '{"q": 1}'}
    )
    assert result.output == 'posted: {"q": 1}'


async def test_a_redirect_inside_the_allowlist_is_followed(
    tool_runner: RunningToolRunner, http_site: str
) -> None:
    result = await tool_runner.execute("http", {"url": f"{http_site}/redirect-in"})
    assert result.output == "hello from the allowed site"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/redirect-out", "http://example.com is not on the tool runner's allowlist"),
        ("/redirect-private", "10.0.0.1 resolves to 10.0.0.1 (private address)"),
        ("/redirect-loop", "more than 3 redirects"),
        # A redirect to another scheme is the site's failure, not the model's bad arguments.
        ("/redirect-file", "redirected to a URL the tool does not follow"),
        ("/missing", "answered HTTP 404: no such page"),
        ("/image", "the response is image/png, not text"),
    ],
)
async def test_refused_redirects_and_unusable_answers_are_readable_errors(
    tool_runner: RunningToolRunner, http_site: str, path: str, reason: str
) -> None:
    result = await tool_runner.execute("http", {"url": http_site + path})
    assert result.error.code == FAILED
    assert reason in result.error.message


async def test_an_oversized_response_is_truncated_at_the_limit(
    tool_runner: RunningToolRunner, http_site: str
) -> None:
    result = await tool_runner.execute("http", {"url": f"{http_site}/big"})
    assert result.error.code == OK
    body, note = result.output.rsplit("\n", 1)
    assert body == "a" * RESPONSE_LIMIT
    assert note == f"[response truncated at {RESPONSE_LIMIT} bytes]"


@pytest.mark.parametrize(
    ("url", "code", "reason"),
    [
        ("https://example.com/", FAILED, "is not on the tool runner's allowlist"),
        ("http://localhost:1/", FAILED, "is not on the tool runner's allowlist"),
        ("http://2130706433/", FAILED, "is not on the tool runner's allowlist"),
        ("http://10.0.0.1/", FAILED, "(private address)"),
        ("http://169.254.169.254/latest/meta-data/", FAILED, "(link-local address)"),
        ("file:///etc/passwd", INVALID, "is not an http or https URL"),
        ("http://user:pw@127.0.0.1/", INVALID, "credentials"),
        ("not a url", INVALID, "is not an http or https URL"),
    ],
)
async def test_disallowed_and_private_targets_are_refused(
    tool_runner: RunningToolRunner, url: str, code: int, reason: str
) -> None:
    result = await tool_runner.execute("http", {"url": url})
    assert result.error.code == code
    assert reason in result.error.message
