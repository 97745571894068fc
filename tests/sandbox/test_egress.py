"""The egress proxy with real curl, real TLS and real Redis: allowlist, address checks, secret swap, rotation."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis import asyncio as aioredis

from app.sandbox.egress.ca import RunCA
from app.sandbox.egress.http import Scrubber
from app.sandbox.egress.policy import EgressPolicy, SystemResolver, forbidden_reason, host_matches, live_secrets
from app.sandbox.egress.proxy import EgressProxy
from app.store.vault import Vault
from app.testing.https_server import EchoServer
from tests.support.echo import echo_until_eof

KEY = b"k" * 32
VALUE = "sntrys_" + "R3alSecretValue" * 4
ROTATED = "sntrys_" + "R0tatedSecretVal" * 4


@dataclass
class Net:
    """Two HTTPS services (`api` carries the secret, `other` does not), a plain-HTTP one, and the run's proxy."""

    run_ca: RunCA
    bundle: Path
    proxy: EgressProxy
    proxy_port: int
    api: EchoServer
    api_port: int
    other: EchoServer
    other_port: int
    plain: EchoServer
    plain_port: int
    vault: Vault
    placeholder: str
    events: list[tuple[str, dict[str, object]]] = field(default_factory=list)


@pytest.fixture
async def net(tmp_path: Path, aredis: aioredis.Redis) -> AsyncIterator[Net]:
    upstream_ca = RunCA(tmp_path / "upstream-ca")
    api = EchoServer(upstream_ca.server_context("api.allowed.test"))
    other = EchoServer(upstream_ca.server_context("other.allowed.test"))
    plain = EchoServer()
    vault = Vault(aredis, KEY)
    await vault.set("SENTRY_AUTH_TOKEN", VALUE, ["api.allowed.test"])
    placeholders = await vault.placeholders("run1", ["SENTRY_AUTH_TOKEN"])
    policy = EgressPolicy(
        allow=(
            "api.allowed.test",
            "*.allowed.test",
            "plain.allowed.test",
            "sneaky.test",
            "nat64.test",
            "sixtofour.test",
        ),
        secrets=live_secrets(vault, placeholders),
    )
    resolver = SystemResolver(
        overrides={h: "127.0.0.1" for h in ("api.allowed.test", "other.allowed.test", "plain.allowed.test")},
        hosts={
            "sneaky.test": ["127.0.0.1"],
            "nat64.test": ["64:ff9b::7f00:1"],
            "sixtofour.test": ["2002:a9fe:a9fe::1"],
        },
    )
    trust = ssl.create_default_context(cafile=str(upstream_ca.cert_path))
    events: list[tuple[str, dict[str, object]]] = []

    async def record(type_: str, data: dict[str, object]) -> None:
        events.append((type_, data))

    run_ca = RunCA(tmp_path / "run-ca")
    proxy = EgressProxy(policy, ca=run_ca, on_event=record, resolver=resolver, upstream_ca=trust)
    _, proxy_port = await proxy.start_tcp()
    ports = [await s.start() for s in (api, other, plain)]
    # The sandbox trusts the system bundle plus the run CA; here the test CA plays the system bundle.
    bundle = run_ca.bundle_path(upstream_ca.cert_path)
    yield Net(
        run_ca,
        bundle,
        proxy,
        proxy_port,
        api,
        ports[0],
        other,
        ports[1],
        plain,
        ports[2],
        vault,
        placeholders["SENTRY_AUTH_TOKEN"],
        events,
    )
    await proxy.close()
    for server in (api, other, plain):
        await server.close()


async def curl(
    net: Net, url: str, *headers: str, proxy: str | None = None, extra: tuple[str, ...] = ()
) -> tuple[int, str, str]:
    """Run the real curl through the proxy, trusting the run's bundle; returns (exit code, stdout, stderr)."""
    args = [
        "curl",
        *extra,
        "-sS",
        "--max-time",
        "20",
        "--proxy",
        proxy or f"http://127.0.0.1:{net.proxy_port}",
        "--cacert",
        str(net.bundle),
        url,
    ]
    for header in headers:
        args += ["-H", header]
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


def last_headers(server: EchoServer) -> dict[str, str]:
    """The headers of the last request `server` received (what went out of the proxy)."""
    headers = server.requests[-1]["headers"]
    assert isinstance(headers, dict)
    return headers


def secret_free(events: list[tuple[str, dict[str, object]]]) -> bool:
    text = json.dumps(events)
    return VALUE not in text and ROTATED not in text


async def test_placeholder_becomes_the_value_only_on_the_secrets_domain(net: Net) -> None:
    assert net.placeholder != VALUE and len(net.placeholder) == len(VALUE)
    code, out, err = await curl(
        net,
        f"https://api.allowed.test:{net.api_port}/echo",
        f"Authorization: Bearer {net.placeholder}",
        f"X-Custom: a {net.placeholder} b",
    )
    assert code == 0, err
    received = last_headers(net.api)
    assert received["authorization"] == f"Bearer {VALUE}"
    assert received["x-custom"] == f"a {VALUE} b"
    seen = json.loads(out)["headers"]  # what the upstream echoed back reaches the sandbox scrubbed
    assert seen["authorization"] == f"Bearer {net.placeholder}" and seen["x-custom"] == f"a {net.placeholder} b"
    assert VALUE not in out

    code, out, err = await curl(
        net, f"https://other.allowed.test:{net.other_port}/echo", f"Authorization: Bearer {net.placeholder}"
    )
    assert code == 0, err
    assert json.loads(out)["headers"]["authorization"] == f"Bearer {net.placeholder}"

    allowed = [d for t, d in net.events if t == "egress.allowed"]
    assert {"host": "api.allowed.test", "mode": "intercept", "swapped": ["SENTRY_AUTH_TOKEN"]}.items() <= allowed[
        0
    ].items()
    assert allowed[1]["host"] == "other.allowed.test" and allowed[1]["mode"] == "tunnel"
    assert secret_free(net.events)


@pytest.mark.parametrize("path", ["/echo/split", "/echo/head"])
async def test_a_reply_that_echoes_the_value_reaches_the_sandbox_with_the_placeholder(net: Net, path: str) -> None:
    """The secret's own domain may echo what it was sent, in a header (a CORS preflight) or in a body split
    over many chunks: the value must not come back into the sandbox, where the agent could copy it into
    the pull request."""
    url = f"https://api.allowed.test:{net.api_port}{path}"
    code, out, err = await curl(net, url, f"Authorization: Bearer {net.placeholder}", extra=("-D", "-"))
    assert code == 0, err
    assert last_headers(net.api)["authorization"] == f"Bearer {VALUE}"
    assert VALUE not in out and net.placeholder in out, out
    assert last_headers(net.api)["accept-encoding"] == "identity"


async def test_a_plain_connection_holds_one_upstream_at_a_time(net: Net) -> None:
    """Absolute-URI requests on one client connection to ever new hosts must not open an upstream socket
    each (the connection cap counts client connections): the proxy keeps one upstream per connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", net.proxy_port)
    try:
        for host in ("plain.allowed.test", "api.allowed.test", "plain.allowed.test", "api.allowed.test"):
            target = f"http://{host}:{net.plain_port}/echo"
            writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}:{net.plain_port}\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            chunked = b"transfer-encoding: chunked" in head.lower()
            if chunked:
                while (size := int((await reader.readline()).strip(), 16)) > 0:
                    await reader.readexactly(size + 2)
                await reader.readline()
            else:
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            async with asyncio.timeout(5):  # the proxy closed the previous upstream; the server sees it go
                await net.plain.until_open(1)
    finally:
        writer.close()


async def test_a_value_the_host_kept_comes_back_as_the_placeholder(net: Net) -> None:
    """A request with the placeholder stores the value at the secret's own host; a later request without
    one reads it back: every reply of a host a secret is bound to is scrubbed."""
    url = f"https://api.allowed.test:{net.api_port}"
    code, _, err = await curl(net, f"{url}/echo", f"X-Store: {net.placeholder}")
    assert code == 0, err
    code, out, err = await curl(net, f"{url}/echo/last")
    assert code == 0, err
    assert VALUE not in out and json.loads(out)["headers"]["x-store"] == net.placeholder


def test_the_scrubber_holds_back_only_what_could_begin_a_value() -> None:
    """A stream of events must not wait for the next chunk unless its end could be the start of a value."""
    scrub = Scrubber([(b"s3cr3t-value", b"PLACEHOLDER1")])
    assert scrub.chunk(b"data: tick\n\n") == b"data: tick\n\n"
    assert scrub.chunk(b"token s3cr") == b"token "
    assert scrub.chunk(b"3t-value!") == b"PLACEHOLDER1!"
    assert scrub.chunk(b"ends with s") == b"ends with " and scrub.end() == b"s"


async def test_a_compressed_reply_to_a_request_carrying_a_secret_is_refused(net: Net) -> None:
    _, out, err = await curl(
        net, f"https://api.allowed.test:{net.api_port}/echo/gzip", f"Authorization: Bearer {net.placeholder}"
    )
    assert "gzip-encoded body, which the proxy cannot check for the values of the secrets" in out, (out, err)
    assert VALUE not in out


async def test_only_secrets_of_the_host_are_swapped(net: Net) -> None:
    other_value = "ghp_" + "0therSecretV4lue" * 3
    await net.vault.set("GITHUB_TOKEN", other_value, ["elsewhere.test"])
    other = net.vault.placeholder("GITHUB_TOKEN", other_value, "run-x")
    net.proxy.policy = dataclasses.replace(
        net.proxy.policy, secrets=live_secrets(net.vault, {"SENTRY_AUTH_TOKEN": net.placeholder, "GITHUB_TOKEN": other})
    )
    code, out, err = await curl(
        net,
        f"https://api.allowed.test:{net.api_port}/echo",
        f"Authorization: Bearer {net.placeholder}",
        f"X-Other: {other}",
    )
    assert code == 0, err
    received = last_headers(net.api)
    assert received["authorization"] == f"Bearer {VALUE}" and received["x-other"] == other
    code, out, err = await curl(net, f"http://plain.allowed.test:{net.plain_port}/echo", f"X-Key: {net.placeholder}")
    assert code == 0, err
    assert json.loads(out)["headers"]["x-key"] == net.placeholder
    assert other_value not in json.dumps(net.events)


async def test_basic_auth_carries_the_value_after_swap(net: Net) -> None:
    basic = base64.b64encode(f"user:{net.placeholder}".encode()).decode()
    code, out, err = await curl(net, f"https://api.allowed.test:{net.api_port}/echo", f"Authorization: Basic {basic}")
    assert code == 0, err
    sent = last_headers(net.api)["authorization"].removeprefix("Basic ")
    assert base64.b64decode(sent).decode() == f"user:{VALUE}"
    assert json.loads(out)["headers"]["authorization"] == f"Basic {basic}", "the echo is scrubbed back"


async def test_rotation_reaches_the_next_request(net: Net) -> None:
    url = f"https://api.allowed.test:{net.api_port}/echo"
    await curl(net, url, f"x-api-key: {net.placeholder}")
    await net.vault.set("SENTRY_AUTH_TOKEN", ROTATED, ["api.allowed.test"])
    code, _, err = await curl(net, url, f"x-api-key: {net.placeholder}")
    assert code == 0, err
    assert [r["headers"]["x-api-key"] for r in net.api.requests] == [VALUE, ROTATED]  # type: ignore[index]
    assert secret_free(net.events)


async def test_plain_http_is_allowlisted_and_swapped(net: Net) -> None:
    await net.vault.set("SENTRY_AUTH_TOKEN", VALUE, ["plain.allowed.test"])
    code, out, err = await curl(
        net, f"http://plain.allowed.test:{net.plain_port}/echo", f"Authorization: Bearer {net.placeholder}"
    )
    assert code == 0, err
    assert json.loads(out) == {"method": "GET", "path": "/echo", "headers": json.loads(out)["headers"]}
    assert last_headers(net.plain)["authorization"] == f"Bearer {VALUE}"
    assert VALUE not in out
    code, out, _ = await curl(net, "http://evil.example/steal")
    assert "not in the routine's network.allow" in out
    assert (
        "egress.denied",
        {
            "host": "evil.example",
            "port": 80,
            "reason": "evil.example is not in the routine's network.allow; add it there to let the run reach it",
        },
    ) in net.events


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://evil.example/", "not in the routine's network.allow"),
        ("https://sneaky.test/", "127.0.0.1 is a loopback address"),
        ("https://localhost/", "not in the routine's network.allow"),
        ("https://127.0.0.1:6379/", "127.0.0.1 is a loopback address"),
        ("https://169.254.169.254/", "cloud metadata address"),
        ("https://nat64.test/", "carries 127.0.0.1: 127.0.0.1 is a loopback address"),
        ("https://sixtofour.test/", "carries 169.254.169.254: 169.254.169.254 is a cloud metadata address"),
        ("https://[64:ff9b::a00:1]/", "carries 10.0.0.1"),
    ],
)
async def test_denied_destinations_get_403_and_an_event(net: Net, url: str, reason: str) -> None:
    code, _, err = await curl(net, url)
    assert code != 0 and "403" in err
    [(kind, data)] = net.events
    assert kind == "egress.denied" and reason in str(data["reason"])


@pytest.mark.parametrize(
    ("scheme", "host_header"),
    [
        ("https", "other.allowed.test"),  # another site behind the same front
        ("https", "api.allowed.test:1"),  # the right name, another port
        ("https", "evil.example"),
        ("http", "evil.example"),
        ("https", "evil.example@api.allowed.test"),  # a front that reads the part before @
        ("https", "api.allowed.test/.evil.example"),
        ("https", "api.allowed.test#x"),
        ("https", "api.allowed.test:443:1"),
        ("https", "[api.allowed.test]"),
    ],
)
async def test_a_request_naming_another_host_than_its_tunnel_is_refused(
    net: Net, scheme: str, host_header: str
) -> None:
    await net.vault.set("SENTRY_AUTH_TOKEN", VALUE, ["api.allowed.test", "plain.allowed.test"])
    host, port = ("api.allowed.test", net.api_port) if scheme == "https" else ("plain.allowed.test", net.plain_port)
    code, out, err = await curl(
        net, f"{scheme}://{host}:{port}/echo", f"Host: {host_header}", f"Authorization: Bearer {net.placeholder}"
    )
    assert "403" in out + err or "not " in out, (code, out, err)
    assert "each host needs its own request" in out
    assert net.api.requests == [] and net.plain.requests == [], "nothing reached the upstream"
    denied = [d for t, d in net.events if t == "egress.denied"]
    assert denied and denied[0]["host"] == host and host_header in str(denied[0]["reason"])
    assert secret_free(net.events)


async def test_the_same_host_in_another_spelling_is_the_same_host(net: Net) -> None:
    code, out, err = await curl(
        net, f"https://api.allowed.test:{net.api_port}/echo", f"Host: API.allowed.test.:{net.api_port}"
    )
    assert code == 0 and json.loads(out)["path"] == "/echo", (out, err)


async def test_connect_to_redis_port_is_refused_even_when_allowlisted(tmp_path: Path) -> None:
    proxy = EgressProxy(EgressPolicy(allow=("localhost", "127.0.0.1")), ca=RunCA(tmp_path / "ca"))
    path = str(tmp_path / "egress.sock")
    await proxy.start_unix(path)
    reader, writer = await asyncio.open_unix_connection(path)
    for target in (b"127.0.0.1:6379", b"localhost:6379"):
        writer.write(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 403"), head
        writer.close()
        reader, writer = await asyncio.open_unix_connection(path)
    writer.close()
    await proxy.close()


async def test_malformed_targets_get_400_and_the_proxy_goes_on(tmp_path: Path) -> None:
    proxy = EgressProxy(EgressPolicy(allow=("api.allowed.test",)), ca=RunCA(tmp_path / "ca"))
    path = str(tmp_path / "egress.sock")
    await proxy.start_unix(path)
    for request in (
        b"CONNECT [not-an-ip]:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://[x/ HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), head
        writer.close()
    await proxy.close()


@pytest.fixture
async def tunnel(tmp_path: Path) -> AsyncIterator[tuple[EgressProxy, str, int]]:
    """A proxy on a unix socket that allows echo.test, which resolves (as the operator says) to a local echo."""
    service = await asyncio.start_server(echo_until_eof, "127.0.0.1", 0)
    resolver = SystemResolver(overrides={"echo.test": "127.0.0.1"})
    proxy = EgressProxy(EgressPolicy(allow=("echo.test",)), ca=RunCA(tmp_path / "ca"), resolver=resolver)
    path = await proxy.start_unix(str(tmp_path / "egress.sock"))
    yield proxy, path, int(service.sockets[0].getsockname()[1])
    await proxy.close()
    service.close()
    await service.wait_closed()


async def test_a_tunnel_carries_bytes_both_ways_and_passes_on_the_end_of_each_side(
    tunnel: tuple[EgressProxy, str, int],
) -> None:
    _, path, port = tunnel
    payload = os.urandom(8 * 1024 * 1024)
    reader, writer = await asyncio.open_unix_connection(path)
    # the first bytes ride with the CONNECT head, as a client that does not wait for the answer sends them
    writer.write(b"CONNECT echo.test:%d HTTP/1.1\r\nHost: echo.test:%d\r\n\r\n" % (port, port) + payload[:1000])
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")

    async def send() -> None:
        writer.write(payload[1000:])
        await writer.drain()
        writer.write_eof()

    async with asyncio.timeout(60):  # a guard against a hang, not a speed limit
        sending = asyncio.create_task(send())
        received = await reader.read(-1)
        await sending
    writer.close()
    assert received == payload + b"END " + hashlib.sha256(payload).hexdigest().encode()


async def test_closing_the_proxy_ends_its_open_tunnels(tunnel: tuple[EgressProxy, str, int]) -> None:
    proxy, path, port = tunnel
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"CONNECT echo.test:%d HTTP/1.1\r\nHost: echo.test:%d\r\n\r\nping" % (port, port))
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    assert await reader.readexactly(4) == b"ping"
    await proxy.close()
    async with asyncio.timeout(60):
        assert await reader.read(-1) == b""
    writer.close()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
async def test_unix_socket_listener_behind_a_forwarder(net: Net, tmp_path: Path) -> None:
    path = str(tmp_path / "egress.sock")
    await net.proxy.start_unix(path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    socat = await asyncio.create_subprocess_exec(
        "socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{path}"
    )
    try:
        await _listening(port)
        code, _, err = await curl(
            net,
            f"https://api.allowed.test:{net.api_port}/echo",
            f"Authorization: Bearer {net.placeholder}",
            proxy=f"http://127.0.0.1:{port}",
        )
        assert code == 0, err
        assert last_headers(net.api)["authorization"] == f"Bearer {VALUE}"
    finally:
        socat.terminate()
        await socat.wait()


async def _listening(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return
    raise AssertionError(f"socat did not listen on {port}")


def test_address_rules() -> None:
    import ipaddress

    for ip in (
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "fd00:ec2::254",
        "::1",
        "fe80::1",
        "fc00::1",
        "224.0.0.1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b:1::a9fe:a9fe",  # local-use NAT64 of the metadata address
        "2002:0a00:0001::1",  # 6to4 of 10.0.0.1
        "::127.0.0.1",  # IPv4-compatible
        "::10.0.0.1",
    ):
        assert forbidden_reason(ipaddress.ip_address(ip)) is not None, ip
    for ip in ("93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1", "2606:4700::1111"):
        assert forbidden_reason(ipaddress.ip_address(ip)) is None, ip
    assert host_matches("api.sentry.io", ["*.sentry.io"]) and not host_matches("sentry.io", ["*.sentry.io"])
    assert not host_matches("evilsentry.io", ["*.sentry.io"]) and host_matches("Sentry.IO.", ["sentry.io"])


async def test_a_client_that_does_not_trust_the_run_ca_is_reported(net: Net, tmp_path: Path) -> None:
    net.bundle = RunCA(tmp_path / "unrelated").cert_path
    code, _, err = await curl(net, f"https://api.allowed.test:{net.api_port}/echo")
    assert code != 0, err
    for _ in range(500):
        if any(t == "egress.error" for t, _ in net.events):
            break
        await asyncio.sleep(0.01)
    [(kind, data)] = net.events
    assert kind == "egress.error" and "must trust SSL_CERT_FILE" in str(data["reason"])
    assert net.api.requests == []
