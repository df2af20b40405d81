import ipaddress

import httpx
import pytest

from capabilities import egress
from capabilities.egress import EgressRefusedError, HostAllowList, PublicAddressTransport, is_public
from tests.http_receiver import HttpReceiver


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata services
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "203.0.113.7",  # documentation range
    ],
)
def test_loopback_private_link_local_and_reserved_addresses_are_not_public(address):
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_internet_addresses_are_public(address):
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.example.com/x?token=1", True),
        ("https://HOOKS.Example.com./x", True),
        ("https://a.tenant.example.org/x", True),
        ("https://tenant.example.org/x", False),  # `*.` is for subdomains only
        ("https://hooks.example.com.evil.net/x", False),
        ("https://evil.net/hooks.example.com", False),
        ("https://xn--bcher-kva.de/", True),  # the allow-list's bücher.de, IDNA-encoded
        ("http://127.0.0.1/", False),
    ],
)
def test_the_allow_list_matches_host_names_and_subdomain_wildcards(url, allowed):
    hosts = HostAllowList(["hooks.example.com", "*.tenant.example.org", "bücher.de"])
    assert hosts.allows(httpx.URL(url)) is allowed


@pytest.mark.parametrize("entry", ["https://hooks.example.com", "hooks.example.com:443", "a/b", ""])
def test_an_allow_list_entry_must_be_a_bare_host_name(entry):
    with pytest.raises(ValueError, match="is not a host name"):
        HostAllowList([entry])


class Resolver:
    """Answers each lookup with the next of `answers`, as a DNS server under someone's control
    could; records the lookups."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        return self.answers.pop(0)


async def post(url: str, resolver: Resolver) -> httpx.Response:
    async with httpx.AsyncClient(transport=PublicAddressTransport(resolver), timeout=5) as client:
        return await client.post(url, content=b"{}")


@pytest.mark.parametrize(
    "addresses",
    [["127.0.0.1"], ["169.254.169.254"], ["10.0.0.7"], ["93.184.216.34", "127.0.0.1"]],
)
async def test_a_name_resolving_to_any_non_public_address_is_refused(addresses):
    with HttpReceiver() as receiver:
        port = httpx.URL(receiver.url).port
        with pytest.raises(EgressRefusedError, match="not a public address"):
            await post(f"http://hooks.example.com:{port}/hook", Resolver(addresses))
        assert receiver.requests == []


async def test_an_address_literal_is_checked_without_a_lookup():
    resolver = Resolver()
    with pytest.raises(EgressRefusedError):
        await post("http://169.254.169.254/latest/meta-data/", resolver)
    assert resolver.lookups == []


async def test_every_request_resolves_and_checks_again_and_connects_to_the_checked_address(
    monkeypatch,
):
    # Loopback stands in for a public address here: only it can reach the test's receiver.
    monkeypatch.setattr(egress, "is_public", lambda address: str(address) == "127.0.0.1")
    with HttpReceiver() as receiver:
        port = httpx.URL(receiver.url).port
        url = f"http://hooks.example.com:{port}/hook"
        # The record changes between two deliveries, as DNS rebinding makes it.
        resolver = Resolver(["127.0.0.1"], ["127.0.0.2"])
        transport = PublicAddressTransport(resolver)
        async with httpx.AsyncClient(transport=transport, timeout=5) as client:
            assert (await client.post(url, content=b"{}")).status_code == 200
            with pytest.raises(EgressRefusedError, match=r"\['127.0.0.2'\]"):
                await client.post(url, content=b"{}")
        assert resolver.lookups == [("hooks.example.com", port)] * 2
        [request] = receiver.requests
        assert request.headers["host"] == f"hooks.example.com:{port}"


async def test_a_name_that_does_not_resolve_is_a_connect_error():
    async def nowhere(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(httpx.ConnectError, match="cannot resolve hooks.invalid"):
        async with httpx.AsyncClient(transport=PublicAddressTransport(nowhere)) as client:
            await client.post("https://hooks.invalid/x")
