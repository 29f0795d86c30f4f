"""The roles of nats.conf, enforced by a real nats-server running the repository's file.

Each server is a subprocess started with ``nats.conf`` (or ``nats-tls.conf``) unchanged; the
test only sets the ``NATSD_*`` environment variables, with ports chosen free at run time.
Clients are nats-py connections as the three roles: ``bus`` (workers), ``app`` and ``dashboard``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from tests.support.natsconf import (
    NATS_CONF,
    NATS_TLS_CONF,
    NatsServer,
    free_port,
    passwords,
    region_env,
)
from writebus.client.subjects import WORKER_QUEUE, Subjects

SUBJECTS = Subjects()

#: How long to wait for something that should happen (a server starting, a message arriving).
EVENTUALLY = 10.0
#: How long to wait before concluding that something did not happen.
QUIET = 0.3


class Errors:
    """Errors reported asynchronously to a connection's error callback."""

    def __init__(self) -> None:
        self.seen: list[Exception] = []
        self._changed = asyncio.Event()

    async def callback(self, exc: Exception) -> None:
        """nats-py ``error_cb``."""
        self.seen.append(exc)
        self._changed.set()

    async def wait_for(self, text: str, timeout: float = EVENTUALLY) -> Exception:
        """Wait for an error whose message contains ``text`` (case-insensitive)."""

        async def found() -> Exception:
            while True:
                for exc in self.seen:
                    if text.lower() in str(exc).lower():
                        return exc
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(found(), timeout)
        except TimeoutError:
            raise AssertionError(f"no error containing {text!r}; got {self.seen!r}") from None


async def connect(
    server: NatsServer,
    user: str | None,
    password: str | None = None,
    *,
    errors: Errors | None = None,
    tls: ssl.SSLContext | None = None,
    url: str | None = None,
) -> Any:
    """A nats-py connection as ``user`` (its own password unless given), failing fast."""
    if user is not None and password is None:
        password = server.password(user)
    return await nats.connect(
        url or server.url,
        user=user,
        password=password,
        name=f"test-{user}",
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=5,
        error_cb=(errors or Errors()).callback,
        tls=tls,
    )


async def on_heartbeat(bus: Any, subject: str, data: bytes, got: asyncio.Future[bytes]) -> bytes:
    """Publish ``data`` every half second, as a worker publishes progress and status, until
    ``got`` has a message; return it. Under a loaded machine a single message published right
    after the subscription was seen lost now and then (about 1 run in 70 here); a dashboard
    waits for the next heartbeat anyway, so the tests do too."""
    deadline = asyncio.get_running_loop().time() + EVENTUALLY
    while not got.done():
        assert asyncio.get_running_loop().time() < deadline, f"nothing arrived on {subject}"
        await bus.publish(subject, data)
        await bus.flush()
        await asyncio.wait({got}, timeout=0.5)
    return got.result()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it returns True (propagation across servers has no event to wait
    on), failing after EVENTUALLY seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENTUALLY
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def did_not_happen(event: asyncio.Event) -> bool:
    """True when ``event`` stays unset for QUIET seconds."""
    try:
        await asyncio.wait_for(event.wait(), QUIET)
    except TimeoutError:
        return True
    return False


# --- one region ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    """A single nats-server (region syd, no gateway peers) running the repository's nats.conf."""
    srv = NatsServer(
        region="syd",
        env=region_env("syd"),
        conf=NATS_CONF,
        workdir=tmp_path_factory.mktemp("nats-syd"),
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


class Worker:
    """A bus worker serving writes and RPCs in the workers' queue group, like bus/worker.py."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.received = asyncio.Event()
        self.subs: list[Any] = []

    async def start(self, region: str = "syd") -> None:
        """Subscribe to writebus.write and this region's RPC subject."""
        for subject in (SUBJECTS.write, SUBJECTS.rpc(region)):
            self.subs.append(
                await self.nc.subscribe(subject, queue=WORKER_QUEUE, cb=self._on_request)
            )
        await self.nc.flush()

    async def _on_request(self, msg: Any) -> None:
        self.received.set()
        await msg.respond(b"done:" + msg.data)


@pytest.fixture
async def worker(server: NatsServer) -> AsyncIterator[Worker]:
    """A connected bus worker on ``server``."""
    nc = await connect(server, "bus")
    w = Worker(nc)
    await w.start()
    try:
        yield w
    finally:
        await nc.close()


async def test_anonymous_connection_is_refused(server: NatsServer) -> None:
    """A client without credentials is refused: there is no anonymous or default user."""
    with pytest.raises(nats.errors.Error, match="(?i)authorization violation"):
        await connect(server, None)


@pytest.mark.parametrize("user", ["bus", "app", "dashboard"])
async def test_wrong_password_is_refused(server: NatsServer, user: str) -> None:
    """A known user with a wrong password cannot connect."""
    with pytest.raises(nats.errors.Error, match="(?i)authorization violation"):
        await connect(server, user, "not-" + server.password(user))


async def test_unknown_user_is_refused(server: NatsServer) -> None:
    """A user name nats.conf does not define cannot connect."""
    with pytest.raises(nats.errors.Error, match="(?i)authorization violation"):
        await connect(server, "admin", server.password("bus"))


async def test_app_write_request_reaches_worker_and_gets_reply(
    server: NatsServer, worker: Worker
) -> None:
    """An app's request on writebus.write (and writebus.rpc.<region>) reaches a bus worker in
    the queue group, and the worker's reply (allow_responses) reaches the app."""
    app = await connect(server, "app")
    try:
        reply = await app.request(SUBJECTS.write, b"INSERT", timeout=EVENTUALLY)
        assert reply.data == b"done:INSERT"
        reply = await app.request(SUBJECTS.rpc("syd"), b"lsn?", timeout=EVENTUALLY)
        assert reply.data == b"done:lsn?"
    finally:
        await app.close()


async def test_dashboard_receives_worker_progress(server: NatsServer) -> None:
    """A dashboard subscribed to writebus.lsn.> receives a worker's progress broadcast."""
    dashboard = await connect(server, "dashboard")
    bus = await connect(server, "bus")
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_progress(msg: Any) -> None:
        if not got.done():
            got.set_result(msg.data)

    try:
        await dashboard.subscribe(SUBJECTS.lsn_all, cb=on_progress)
        await dashboard.flush()
        assert await on_heartbeat(bus, SUBJECTS.lsn("syd"), b"0/16B3748", got) == b"0/16B3748"
    finally:
        await dashboard.close()
        await bus.close()


async def test_dashboard_receives_node_status(server: NatsServer) -> None:
    """A dashboard subscribed to writebus.status.> receives a bus node's status message."""
    dashboard = await connect(server, "dashboard")
    bus = await connect(server, "bus")
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_status(msg: Any) -> None:
        if not got.done():
            got.set_result(msg.data)

    try:
        await dashboard.subscribe("writebus.status.>", cb=on_status)
        await dashboard.flush()
        body = b'{"region": "syd"}'
        assert await on_heartbeat(bus, "writebus.status.syd", body, got) == body
    finally:
        await dashboard.close()
        await bus.close()


async def test_dashboard_discovers_workers_through_srv(server: NatsServer) -> None:
    """A bus node registers for NATS service discovery; the dashboard role, using its own
    inbox prefix, may send $SRV.PING and reads the node's name and metadata in the reply."""

    from writebus.bus.discovery import register

    bus = await connect(server, "bus")
    dashboard = await nats.connect(
        server.url,
        user="dashboard",
        password=server.password("dashboard"),
        inbox_prefix=b"_INBOX.dashboard",
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=5,
    )
    service = await register(
        bus, region="syd", prefix="writebus", replica_id="syd-1", subjects=["writebus.write"]
    )
    try:
        assert service is not None
        reply = await dashboard.request("$SRV.PING.writebus", b"", timeout=EVENTUALLY)
        info = json.loads(reply.data)
        assert info["name"] == "writebus" and info["metadata"]["region"] == "syd"
        assert info["metadata"]["replica_id"] == "syd-1"
    finally:
        await service.stop()
        await dashboard.close()
        await bus.close()


async def test_dashboard_request_never_reaches_worker(server: NatsServer, worker: Worker) -> None:
    """A dashboard's request on writebus.write is refused with a permissions violation: the
    worker never sees it and the dashboard gets no reply."""
    errors = Errors()
    dashboard = await connect(server, "dashboard", errors=errors)
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await dashboard.request(SUBJECTS.write, b"DROP TABLE notes", timeout=QUIET)
        await errors.wait_for('permissions violation for publish to "writebus.write"')
        assert await did_not_happen(worker.received)
    finally:
        await dashboard.close()


async def test_a_write_nats_refuses_to_deliver_is_answered_at_once_as_not_applied(
    server: NatsServer, worker: Worker
) -> None:
    """A writebus Database connected as a user who may not publish writes (the dashboard's
    credentials, a wrong allow-list): the server refuses the publish, and the write fails at
    once with ForbiddenError, not applied -- it waited out its whole budget for an "unknown
    outcome" before. The worker never saw it."""
    from writebus.client.db import Database
    from writebus.client.errors import ForbiddenError, Outcome
    from writebus.client.settings import Settings

    settings = Settings(region="lax", primary_region="syd", nats_urls=(server.url,),
                        nats_user="dashboard", nats_password=server.password("dashboard"),
                        rpc_timeout=3.0)  # fmt: skip
    async with Database(settings) as db:
        with pytest.raises(ForbiddenError) as refused:
            await db.execute("INSERT INTO notes VALUES (1)")
    assert refused.value.outcome is Outcome.NOT_APPLIED and not refused.value.retryable
    assert "to 'writebus.write'" in str(refused.value)
    assert await did_not_happen(worker.received)


async def test_app_cannot_impersonate_a_worker(server: NatsServer) -> None:
    """An app may not subscribe to writebus.write or writebus.rpc.> (even in the workers'
    queue group): the server refuses the subscription, so another app's write finds no
    responder instead of being answered by the impostor."""
    errors = Errors()
    impostor = await connect(server, "app", errors=errors)
    victim = await connect(server, "app")
    stolen = asyncio.Event()

    async def steal(msg: Any) -> None:
        stolen.set()
        await msg.respond(b"forged")

    try:
        for subject in (SUBJECTS.write, SUBJECTS.rpc("syd")):
            await impostor.subscribe(subject, queue=WORKER_QUEUE, cb=steal)
            await errors.wait_for(f'permissions violation for subscription to "{subject}"')
            with pytest.raises(nats.errors.NoRespondersError):
                await victim.request(subject, b"INSERT", timeout=EVENTUALLY)
        assert not stolen.is_set()
    finally:
        await impostor.close()
        await victim.close()


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("app", "writebus.lsn.syd"),  # forging progress would fake read-your-writes
        ("app", "writebus.status.syd"),  # forging a node's health
        ("dashboard", "writebus.status.syd"),
        ("dashboard", "writebus.write"),
        ("dashboard", "writebus.rpc.syd"),
        ("dashboard", "writebus.lsn.syd"),
        ("bus", "writebus.write"),  # workers answer writes; they do not send them
    ],
)
async def test_publish_outside_role_is_refused(server: NatsServer, user: str, subject: str) -> None:
    """Publishing outside a role's allow-list is reported as a permissions violation and the
    message reaches no subscriber."""
    errors = Errors()
    sender = await connect(server, user, errors=errors)
    listener = await connect(server, "bus")
    arrived = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        arrived.set()

    try:
        await listener.subscribe(subject, cb=on_msg)
        await listener.flush()
        await sender.publish(subject, b"x")
        await sender.flush()
        await errors.wait_for(f'permissions violation for publish to "{subject}"')
        assert await did_not_happen(arrived)
    finally:
        await sender.close()
        await listener.close()


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("app", "writebus.write"),
        ("app", "writebus.rpc.lax"),
        ("app", ">"),
        ("dashboard", "writebus.write"),
        ("dashboard", "_INBOX.>"),  # other clients' replies
        ("dashboard", "_INBOX.abc.>"),  # ... only its own inbox prefix is allowed
        ("bus", "_INBOX.>"),  # workers reply to inboxes; they need not read them
    ],
)
async def test_subscribe_outside_role_is_refused(
    server: NatsServer, user: str, subject: str
) -> None:
    """Subscribing outside a role's allow-list is reported as a permissions violation."""
    errors = Errors()
    nc = await connect(server, user, errors=errors)
    try:
        await nc.subscribe(subject)
        await nc.flush()
        await errors.wait_for(f'permissions violation for subscription to "{subject}"')
    finally:
        await nc.close()


# --- two regions joined by a gateway ---------------------------------------------------------


@pytest.fixture
async def two_regions(tmp_path: Path) -> AsyncIterator[dict[str, NatsServer]]:
    """syd and lax, one node each, joined by an authenticated gateway. Both get the same
    NATSD_GATEWAYS list (each ignores its own entry) and the same passwords."""
    gw = {"syd": free_port(), "lax": free_port()}
    gateways = (
        "[" + ", ".join(f"{{name: {r}, urls: [nats://127.0.0.1:{p}]}}" for r, p in gw.items()) + "]"
    )
    shared = passwords()
    servers = {
        r: NatsServer(
            region=r,
            env=region_env(r, gateways=gateways, gateway_port=gw[r], **shared),
            conf=NATS_CONF,
            workdir=tmp_path,
        )
        for r in gw
    }
    try:
        for srv in servers.values():
            await srv.start()
        for r, srv in servers.items():
            other = "lax" if r == "syd" else "syd"
            await srv.wait_for_log(f'Outbound gateway connection to "{other}".*registered')
            await srv.wait_for_log(f'Inbound gateway connection from "{other}".*registered')
        yield servers
    finally:
        for srv in servers.values():
            await srv.stop()


async def test_gateway_carries_writes_and_progress_between_regions(
    two_regions: dict[str, NatsServer],
) -> None:
    """An app in lax writes through a bus worker in syd and gets the reply across the gateway,
    and a dashboard in syd receives the lax worker's progress."""
    syd, lax = two_regions["syd"], two_regions["lax"]
    syd_worker = await connect(syd, "bus")
    lax_worker = await connect(lax, "bus")
    app = await connect(lax, "app")
    dashboard = await connect(syd, "dashboard")
    progress = asyncio.Event()

    async def on_progress(msg: Any) -> None:
        if msg.subject == SUBJECTS.lsn("lax"):
            progress.set()

    try:
        await Worker(syd_worker).start("syd")
        await dashboard.subscribe(SUBJECTS.lsn_all, cb=on_progress)
        await dashboard.flush()
        replies: list[bytes] = []

        async def write_answered() -> bool:
            # Until the worker's queue interest has crossed the gateway there is no responder.
            try:
                replies.append((await app.request(SUBJECTS.write, b"INSERT", timeout=1)).data)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                return False
            return True

        await eventually(write_answered, "a write from lax answered by the syd worker")
        assert replies == [b"done:INSERT"]

        async def progress_seen() -> bool:
            # Published again until the dashboard's interest has crossed the gateway.
            await lax_worker.publish(SUBJECTS.lsn("lax"), b"0/3000060")
            await lax_worker.flush()
            try:
                await asyncio.wait_for(progress.wait(), 0.2)
            except TimeoutError:
                return False
            return True

        await eventually(progress_seen, "lax progress at the syd dashboard")
    finally:
        for nc in (syd_worker, lax_worker, app, dashboard):
            await nc.close()


async def test_gateway_with_wrong_password_is_refused(server: NatsServer, tmp_path: Path) -> None:
    """A region that does not know the gateway password cannot join the supercluster."""
    gateways = f"[{{name: syd, urls: [nats://127.0.0.1:{server.env['NATSD_GATEWAY_PORT']}]}}]"
    rogue = NatsServer(
        region="rogue",
        env=region_env("rogue", gateways=gateways),
        conf=NATS_CONF,
        workdir=tmp_path,
    )
    await rogue.start()
    try:
        await server.wait_for_log('authentication error - User "gateway"')
        assert "rogue" not in (server.monitor("gatewayz").get("inbound_gateways") or {})
    finally:
        await rogue.stop()


# --- several nodes in one region ------------------------------------------------------------


def route_urls(password: str, ports: list[int]) -> str:
    """A NATSD_ROUTES value: route URLs carrying the route user's credentials."""
    return "[" + ", ".join(f"nats://route:{password}@127.0.0.1:{p}" for p in ports) + "]"


@pytest.fixture
async def syd_cluster(tmp_path: Path) -> AsyncIterator[list[NatsServer]]:
    """Two nodes of region syd, each listing both route URLs (its own entry is ignored)."""
    ports = [free_port(), free_port()]
    shared = passwords()
    routes = route_urls(shared["NATSD_CLUSTER_PASSWORD"], ports)
    nodes = [
        NatsServer(
            region="syd",
            env=region_env(
                "syd",
                NATSD_SERVER_NAME=f"nats-syd-{i + 1}",
                NATSD_CLUSTER_PORT=str(port),
                NATSD_ROUTES=routes,
                **shared,
            ),
            conf=NATS_CONF,
            workdir=tmp_path,
        )
        for i, port in enumerate(ports)
    ]
    try:
        for node in nodes:
            await node.start()
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def test_region_nodes_form_a_cluster(syd_cluster: list[NatsServer]) -> None:
    """Nodes of one region whose route URLs carry the route password form a cluster: an app on
    one node reaches a bus worker connected to the other."""
    first, second = syd_cluster
    worker_nc = await connect(second, "bus")
    app = await connect(first, "app")
    try:
        await Worker(worker_nc).start("syd")

        async def write_answered() -> bool:
            # Until the worker's interest has crossed the route there is no responder.
            try:
                await app.request(SUBJECTS.write, b"INSERT", timeout=1)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                return False
            return True

        await eventually(write_answered, "a write on node 1 answered by a worker on node 2")
    finally:
        await worker_nc.close()
        await app.close()


async def test_route_with_wrong_password_is_refused(
    syd_cluster: list[NatsServer], tmp_path: Path
) -> None:
    """A node that does not know the route password cannot join the region's cluster."""
    first = syd_cluster[0]
    first_route_port = int(first.env["NATSD_CLUSTER_PORT"])
    rogue = NatsServer(
        region="syd",
        env=region_env(
            "syd",
            NATSD_SERVER_NAME="nats-syd-rogue",
            NATSD_ROUTES=route_urls("not-the-password", [first_route_port]),
        ),
        conf=NATS_CONF,
        workdir=tmp_path,
    )
    await rogue.start()
    try:
        await first.wait_for_log("Router connection closed: Authentication Failure")
        names = {r.get("remote_name") for r in first.monitor("routez").get("routes") or []}
        assert "nats-syd-rogue" not in names
    finally:
        await rogue.stop()


# --- TLS -----------------------------------------------------------------------------------


async def test_tls_config_serves_clients_over_tls(tmp_path: Path) -> None:
    """With nats-tls.conf the server demands TLS; a client that trusts the CA (NATS_TLS_CA in
    the client settings) connects, one that does not is refused."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    env = region_env("syd", NATSD_TLS_CERT=str(cert_file), NATSD_TLS_KEY=str(key_file))
    srv = NatsServer(region="syd", env=env, conf=NATS_TLS_CONF, workdir=tmp_path)
    await srv.start()
    try:
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        app = await connect(srv, "app", tls=client_ctx, url=f"tls://127.0.0.1:{srv.port}")
        try:
            assert app.is_connected
            await app.flush()
        finally:
            await app.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        info = await reader.readline()
        writer.close()
        await writer.wait_closed()
        assert b'"tls_required":true' in info
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(srv, "app", url=f"tls://127.0.0.1:{srv.port}")
    finally:
        await srv.stop()
