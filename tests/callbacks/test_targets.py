"""Where status callbacks may go: the URL check the API and the config use, the receiver key
(the same as the ledger's trigger derives), and the resolver that checks every address a host
name resolves to before a connection is made to it."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from goipd.callbacks.targets import CheckedResolver, RefusedTarget, check_status_url, receiver_key


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hooks.example.com/goipd?token=x", None),
        ("http://8.8.8.8:8080/", None),
        ("ftp://hooks.example.com/", 'expected an http:// or https:// URL, got scheme "ftp"'),
        ("hooks.example.com/status", "expected an http:// or https:// URL"),
        ("https:///status", "has no host"),
        ("https://user:pw@hooks.example.com/", "must not carry user:password@ credentials"),
        ("https://hooks.example.com:99999/", "is not a valid URL (bad host or port)"),
        ("https://hooks.example.com/" + "a" * 2048, "must be at most 2048 characters"),
        ("https://hooks.example.com/a b", "must be ASCII without spaces"),
        ("https://bücher.example/", "must be ASCII without spaces"),
        ("http://127.0.0.1:9000/", "127.0.0.1 is a loopback address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://[::ffff:10.1.2.3]/", "10.1.2.3 is a private address"),
        ("http://192.168.1.10/", "192.168.1.10 is a private address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
        ("http://0.0.0.0/", "0.0.0.0 is a unspecified address"),
        ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
        ("http://100.64.0.1/", "100.64.0.1 is a shared (carrier-grade NAT) address"),
        ("http://localhost:8080/", "localhost is a loopback host"),
        ("http://api.localhost/", "api.localhost is a loopback host"),
    ],
)
def test_status_urls_are_checked(url: str, problem: str | None) -> None:
    found = check_status_url(url, allow_private=False)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found


def test_private_targets_pass_when_allowed_but_credentials_never() -> None:
    assert check_status_url("http://127.0.0.1:9000/x", allow_private=True) is None
    assert check_status_url("http://localhost/x", allow_private=True) is None
    assert check_status_url("http://u:p@127.0.0.1/", allow_private=True) is not None


def test_the_receiver_is_scheme_host_and_port_without_path_or_query() -> None:
    assert (
        receiver_key("https://Hooks.Example.com:8443/a/b?t=1#f") == "https://hooks.example.com:8443"
    )
    assert receiver_key("http://h.example?token=secret") == "http://h.example"
    assert receiver_key("http://[::1]:80#x") == "http://[::1]:80"


def _table(*addresses: str) -> Any:
    async def getaddrinfo(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        family = socket.AF_INET6 if ":" in addresses[0] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return getaddrinfo


async def test_a_host_name_resolving_to_any_private_address_is_refused() -> None:
    resolver = CheckedResolver(lambda: False, _table("93.184.215.14", "10.0.0.7"))
    with pytest.raises(RefusedTarget, match=r"10\.0\.0\.7 is a private address"):
        await resolver.resolve("rebind.example", 443)
    public = CheckedResolver(lambda: False, _table("93.184.215.14"))
    [found] = await public.resolve("hooks.example", 443)
    # The connection goes to the address checked, not to a name resolved again.
    assert (found["host"], found["hostname"], found["port"]) == (
        "93.184.215.14",
        "hooks.example",
        443,
    )
    assert found["flags"] & socket.AI_NUMERICHOST


async def test_the_real_resolver_refuses_a_name_of_loopback_unless_allowed() -> None:
    name = socket.gethostname()
    if not all(info[4][0].startswith("127.") for info in socket.getaddrinfo(name, 80)):
        pytest.skip("this host's name does not resolve to loopback")
    with pytest.raises(RefusedTarget, match="loopback"):
        await CheckedResolver(lambda: False).resolve(name, 80)
    assert await CheckedResolver(lambda: True).resolve(name, 80)
