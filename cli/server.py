"""``colonies server start``, ``colonies broker start`` and ``colonies dev``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import typer

from colonyos.client import Client
from colonyos.config import DEFAULT_NATS_URL, BrokerSettings, Settings, default_caller
from colonyos.connection import shown_url
from colonyos.errors import ConflictError
from colonyos.natsserver import (
    NatsServer,
    NatsServerError,
    PortInUseError,
    StoreInUseError,
    packaged_config,
)
from colonyos.security.keys import (
    Identity,
    default_identity_path,
    generate,
    load_identity,
    public_key_kind,
    write_seed,
)
from colonyos.security.members import Member
from colonyos.security.permissions import Role
from colonyos.security.serverconf import ServerKeys, secure_config, tls_config
from colonyos.subjects import SERVER_SCOPE, check_name

from ._common import JSON_OPTION, settings_of

if TYPE_CHECKING:
    # The broker and what it needs (the index on SQLite) load only for the commands that
    # run one: every other command starts without them.
    from colonyos.broker import Broker
from ._broker import metrics_url, serving_broker, stop_broker, stop_executor, wait_ready
from ._executors import build_executor
from ._output import console, print_json
from ._run import ExitCode, fail, run
from .stats import server_status

server_app = typer.Typer(
    help="The embedded NATS server with a broker; the installation's status.", no_args_is_help=True
)
broker_app = typer.Typer(help="The broker alone, against a NATS server.", no_args_is_help=True)

_DATA_DIR = typer.Option(
    Path(".colonies"), "--data-dir", envvar="COLONIES_DATA_DIR", help="Where data is kept."
)
_PORT = typer.Option(
    4222,
    "--port",
    min=0,
    max=65535,
    help="NATS client port on 127.0.0.1 (0: free ports, this and monitoring).",
)
_HTTP_PORT = typer.Option(
    None,
    "--http-port",
    min=0,
    max=65535,
    help="Monitoring port (/healthz, /varz) on 127.0.0.1 (default: --port + 4000, so 8222; "
    "free with --port 0; 0: none).",
    show_default=False,
)
_CONFIG = typer.Option(
    None, "--config", help="nats-server config file (default: the one shipped with colonyos)."
)
_METRICS_PORT = typer.Option(
    None,
    "--metrics-port",
    min=0,
    max=65535,
    envvar="COLONIES_METRICS_PORT",
    help="Serve Prometheus metrics at /metrics on this port (0: a free one); off unless given.",
    show_default=False,
)
_DEV_METRICS_PORT = typer.Option(
    0,
    "--metrics-port",
    min=0,
    max=65535,
    envvar="COLONIES_METRICS_PORT",
    help="Prometheus metrics at /metrics on this port (0: a free one).",
)
_METRICS_HOST = typer.Option(
    "127.0.0.1",
    "--metrics-host",
    envvar="COLONIES_METRICS_HOST",
    help="The address /metrics listens on (0.0.0.0: every interface).",
)
# NATS' own pair is 4222 and 8222: a server on another --port gets its monitoring port beside
# it, so that a second server does not fail on the first one's.
_HTTP_PORT_OFFSET = 4000


def _http_port(port: int, http_port: int | None) -> int | None:
    """The monitoring port to ask for: None for none, 0 for a free one."""
    if http_port is None:
        beside = port + _HTTP_PORT_OFFSET
        return beside if port and beside <= 65535 else 0
    return None if http_port == 0 else http_port


@contextlib.contextmanager
def _config(path: Path | None) -> Iterator[Path]:
    """The server config: the file given, else the one packaged with colonyos (the same
    wherever the command is started)."""
    if path is not None:
        if not path.is_file():
            raise fail(f"config {path}: no such file")
        yield path
        return
    with packaged_config() as packaged:
        yield packaged


_TLS_CERT = typer.Option(
    None,
    "--tls-cert",
    envvar="COLONIES_TLS_CERT",
    help="Server certificate (PEM): clients must then connect with TLS (--tls-ca).",
)
_TLS_KEY = typer.Option(
    None, "--tls-key", envvar="COLONIES_TLS_KEY", help="The certificate's private key (PEM)."
)
_SHARDED = typer.Option(
    False,
    "--sharded",
    envvar="COLONIES_SHARDED",
    help="Share the colonies out among the brokers started so (each colony led by one); "
    "without it, one broker leads every colony and the others stand by.",
)
_INSECURE = typer.Option(
    False,
    "--insecure",
    help="No identities: anyone who reaches the server may do anything (experiments only).",
)


def _server_config(
    data_dir: Path, base: Path, *, secure: bool, tls: tuple[Path, Path] | None
) -> tuple[Path, Path | None]:
    """The server config to start with, and the installation's keys (None when insecure):
    ``base`` as it is, or with the auth callout (the keys made on first start) and TLS added,
    written under the data directory before the server starts (the callout cannot be added by
    a reload)."""
    if not secure and tls is None:
        return base, None
    text = base.read_text()
    keys_dir = None
    if secure:
        keys_dir = data_dir / "keys"
        text = secure_config(text, ServerKeys.load_or_create(keys_dir))
    if tls is not None:
        for path in tls:
            if not path.is_file():
                raise fail(f"TLS file {path}: no such file")
        text = tls_config(text, *tls)
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / ("nats-secure.conf" if secure else "nats-tls.conf")
    config.write_text(text)
    return config, keys_dir


def _tls_pair(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    if cert is not None and key is not None:
        return cert, key
    if cert is not None or key is not None:
        raise fail("give both --tls-cert and --tls-key, or neither")
    return None


def _local_identity(settings: Settings) -> tuple[Identity, Path, bool]:
    """This user's key (made at the default place on first start); True if made now."""
    path = settings.identity or default_identity_path()
    if path.exists():
        return load_identity(path), path, False
    identity = generate()
    write_seed(path, identity)
    return identity, path, True


def _start_server(data_dir: Path, port: int, http_port: int | None, config: Path) -> NatsServer:
    server = NatsServer(
        data_dir / "jetstream", port=port, http_port=_http_port(port, http_port), config=config
    )
    try:
        return server.start()
    except PortInUseError as err:
        flag = "--port" if err.kind == "client" else "--http-port"
        other = "0 for any free port" if err.kind == "client" else "0 for none"
        raise fail(
            f"{err} (is another server running?): choose another with {flag} N, or {flag} {other}",
            ExitCode.SYSTEM,
        ) from None
    except StoreInUseError as err:
        raise fail(
            f"{err}: stop it, or choose another directory with --data-dir", ExitCode.SYSTEM
        ) from None
    except NatsServerError as err:
        raise fail(str(err), ExitCode.SYSTEM) from None


def _broker_settings(**overrides: object) -> BrokerSettings:
    """The broker's settings, from the environment where not given: a COLONIES_* variable that
    cannot be read (COLONIES_LEASE_TTL=abc) is a usage error, named, not a crash."""
    try:
        return BrokerSettings.from_env(None, **overrides)
    except (ValueError, msgspec.ValidationError) as err:
        raise fail(str(err)) from None


async def _until_signalled(*stoppers: asyncio.Event) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(
    settings: Settings,
    data_dir: Path,
    port: int,
    http_port: int | None,
    config: Path,
    *,
    dev: bool,
    insecure: bool,
    tls: tuple[Path, Path] | None,
    metrics: tuple[str, int | None] = ("127.0.0.1", None),
    dashboard_port: int = 0,
    sharded: bool = False,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if insecure:
            console.print(
                "[bold red]INSECURE:[/] no identities; anyone who can reach this server may "
                "submit, read, cancel and approve anything in any colony"
            )
        config, keys_dir = _server_config(data_dir, config, secure=not insecure, tls=tls)
        server = _start_server(data_dir, port, http_port, config)
        stack.callback(server.stop)
        settings = msgspec.structs.replace(settings, nats_url=server.url)
        broker = serving_broker(
            _broker_settings(
                nats_url=server.url,
                prefix=settings.prefix,
                data_dir=data_dir,
                keys_dir=keys_dir,
                tls_ca=settings.tls_ca,
                sharded=sharded,
                metrics_host=metrics[0],
                metrics_port=metrics[1],
            )
        )
        broker_task = asyncio.create_task(broker.run())
        stack.push_async_callback(stop_broker, broker, broker_task)
        await wait_ready(broker, broker_task, lead=True)
        you = None
        if keys_dir is not None:
            you = await _enrol_local_user(broker, settings)
        executor_task = None
        if dev:
            async with await Client.connect(settings, name="colonies-dev") as client:
                with contextlib.suppress(ConflictError):
                    # Secure: no auto-approve (anyone who reaches the server could be an
                    # approved executor); your own executors, with your key, need no approval.
                    await client.colony_add(settings.colony, auto_approve=keys_dir is None)
            executor = build_executor("echo", settings, "echo", "echo-dev")
            executor_task = asyncio.create_task(executor.run())
            stack.push_async_callback(stop_executor, executor, executor_task)
            await executor.ready.wait()
        shown = await _start_dashboard(stack, settings, dashboard_port) if dev else None
        _banner(server, data_dir, settings, dev, you, metrics_url(broker), shown)
        await _until_signalled()
        console.print("stopping…")


async def _start_dashboard(
    stack: contextlib.AsyncExitStack, settings: Settings, port: int
) -> str | None:
    """The dashboard of ``colonies dev``, as you: its address for the banner, or (not started:
    no aiohttp, the port taken) why not; the rest runs on without it."""
    from .dashboard import DEFAULT_HOST, serving

    client = await stack.enter_async_context(
        await Client.connect(settings, name="colonies-dashboard")
    )
    try:
        url = await stack.enter_async_context(serving(client, DEFAULT_HOST, port))
    except ImportError:
        return "[yellow]not started:[/] pip install 'colonyos[dashboard]'"
    except OSError as e:
        why = e.strerror or e
        return f"[yellow]not started:[/] {DEFAULT_HOST}:{port}: {why} (--dashboard-port)"
    return url


async def _enrol_local_user(broker: Broker, settings: Settings) -> str:
    """The user who starts the server owns it: its key (made now if it has none) is recorded
    as server owner under its name. Returns what to say about it."""
    identity, path, made = _local_identity(settings)
    name = settings.caller or default_caller()
    refused = await _enrol(broker, name, identity.public_key)
    if refused is not None:
        return f"{refused} (another --data-dir starts afresh)"
    made_text = "made now, " if made else ""
    return f"{name} (server owner; key {identity.public_key[:12]}…, {made_text}seed in {path})"


async def _enrol(broker: Broker, name: str, public_key: str) -> str | None:
    """Record ``public_key`` as a server owner under ``name``, unless the name has a record
    already: a start (the same ``--owner`` given at every start, as a compose file does) must
    not undo a removal or take a name over. Returns why it was not recorded, if it was not."""
    assert broker.members is not None
    held = await broker.members.get(SERVER_SCOPE, name)
    if held is not None and held.public_key == public_key and not held.removed:
        return None  # enrolled at an earlier start
    if held is not None and held.removed:
        return f"server owner {name!r} was removed: not enrolled again by a start"
    if held is not None:
        return (
            f"server owner {name!r} is enrolled with another key ({held.public_key[:12]}…): "
            "not replaced by a start"
        )
    owner = Member(
        colony_name=SERVER_SCOPE, name=name, public_key=public_key, role=Role.SERVER_OWNER
    )
    await broker.members.put(owner)
    return None


def _banner(
    server: NatsServer,
    data_dir: Path,
    settings: Settings,
    dev: bool,
    you: str | None,
    metrics: str | None = None,
    dashboard: str | None = None,
) -> None:
    console.print(f"[green]NATS[/] {server.url}   data in {data_dir}/   prefix {settings.prefix}")
    if you is not None:
        console.print(f"[green]secure[/] you are {you}", soft_wrap=True)
    if server.monitor_url is not None:
        console.print(f"[green]monitoring[/] {server.monitor_url}/varz")
    console.print("[green]broker[/] ready")
    if metrics is not None:
        console.print(f"[green]metrics[/] {metrics}")
    if dev:
        whose = "executors" if you is None else "executors with your key"
        console.print(f"[green]colony[/] {settings.colony} ({whose} approved automatically)")
        console.print("[green]executor[/] echo-dev (type echo)")
        if dashboard is not None:
            console.print(f"[green]dashboard[/] {dashboard}", highlight=False)
        console.print("\nIn another terminal, try:")
        for line in _first_steps(server.url):
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    console.print("\nCtrl-C stops everything; data is kept for the next start.")


def _first_steps(url: str) -> list[str]:
    """What to type next, wherever the server was started: the repository's example spec if
    it is at hand, else one written on the spot; the server's URL if it is not the default."""
    steps = [] if url == DEFAULT_NATS_URL else [f"export COLONIES_NATS_URL={url}"]
    spec = "examples/echo.json"
    if not Path(spec).is_file():
        spec = "hello.json"
        body = '{"funcname": "echo", "args": ["hello"], "conditions": {"executortype": "echo"}}'
        steps.append(f"echo '{body}' > {spec}")
    return [
        *steps,
        f"colonies function submit --spec {spec} --wait",
        "colonies process pss",
        "colonies log get --process <process id>",
    ]


def _run_server(
    ctx: typer.Context,
    data_dir: Path,
    port: int,
    http_port: int | None,
    config: Path | None,
    *,
    dev: bool,
    insecure: bool,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    metrics: tuple[str, int | None] = ("127.0.0.1", None),
    dashboard_port: int = 0,
    sharded: bool = False,
) -> None:
    tls = _tls_pair(tls_cert, tls_key)
    with _config(config) as conf:
        serving = _serve(
            settings_of(ctx),
            data_dir,
            port,
            http_port,
            conf,
            dev=dev,
            insecure=insecure,
            tls=tls,
            metrics=metrics,
            dashboard_port=dashboard_port,
            sharded=sharded,
        )
        run(serving)


@server_app.command("start")
def server_start(
    ctx: typer.Context,
    data_dir: Path = _DATA_DIR,
    port: int = _PORT,
    http_port: int | None = _HTTP_PORT,
    config: Path | None = _CONFIG,
    insecure: bool = _INSECURE,
    tls_cert: Path | None = _TLS_CERT,
    tls_key: Path | None = _TLS_KEY,
    metrics_port: int | None = _METRICS_PORT,
    metrics_host: str = _METRICS_HOST,
    sharded: bool = _SHARDED,
) -> None:
    """Start an embedded NATS server (JetStream) and a broker, in the foreground. Secure
    unless --insecure: you (your key) own the server. With brokers started beside it with
    --sharded, start it with --sharded too."""
    _run_server(
        ctx,
        data_dir,
        port,
        http_port,
        config,
        dev=False,
        insecure=insecure,
        tls_cert=tls_cert,
        tls_key=tls_key,
        metrics=(metrics_host, metrics_port),
        sharded=sharded,
    )


@server_app.command("config")
def server_config(
    data_dir: Path = _DATA_DIR,
    config: Path | None = _CONFIG,
    tls_cert: Path | None = _TLS_CERT,
    tls_key: Path | None = _TLS_KEY,
    as_json: bool = JSON_OPTION,
) -> None:
    """Write a secure installation's keys and nats-server config under --data-dir, for a
    nats-server you run yourself; start brokers with the same --data-dir."""
    tls = _tls_pair(tls_cert, tls_key)
    with _config(config) as base:
        written, keys_dir = _server_config(data_dir, base, secure=True, tls=tls)
    if as_json:
        print_json({"keysdir": str(keys_dir), "config": str(written)})
        return
    console.print(f"keys in {keys_dir}/ (private: give them to brokers only)")
    console.print(f"server config {written}")
    console.print(f"start the server with:  nats-server -c {written} -js -sd {data_dir}/jetstream")
    console.print(
        f"and brokers with:       colonies broker start --data-dir {data_dir} "
        "--owner NAME=PUBLIC_KEY"
    )


@broker_app.command("start")
def broker_start(
    ctx: typer.Context,
    data_dir: Path = _DATA_DIR,
    owner: str = typer.Option(
        "",
        "--owner",
        envvar="COLONIES_SERVER_OWNER",
        help="NAME=PUBLIC_KEY: enrol this key as a server owner under NAME (secure servers).",
    ),
    keys_dir: Path | None = typer.Option(
        None,
        "--keys-dir",
        envvar="COLONIES_KEYS_DIR",
        help="The installation's keys (default: DATA_DIR/keys, if there): brokers that share "
        "keys need not share a data directory.",
        show_default=False,
    ),
    metrics_port: int | None = _METRICS_PORT,
    metrics_host: str = _METRICS_HOST,
    sharded: bool = _SHARDED,
) -> None:
    """Start a broker against --nats; run several for fail-over (one leads, others stand by),
    or with --sharded to share the colonies out. On a secure server it uses the keys under
    --data-dir (colonies server config), or --keys-dir."""
    settings = settings_of(ctx)
    name, _, key = owner.partition("=")
    if owner and (not name or public_key_kind(key) != "user"):
        raise fail(f"--owner {owner!r}: give NAME=PUBLIC_KEY, the key a user's (U..., 56 chars)")

    if keys_dir is not None and not keys_dir.is_dir():
        raise fail(f"--keys-dir {keys_dir}: no such directory (colonies server config makes it)")
    keys = keys_dir or data_dir / "keys"

    async def go() -> None:
        broker = serving_broker(
            _broker_settings(
                nats_url=settings.nats_url,
                prefix=settings.prefix,
                data_dir=data_dir,
                keys_dir=keys if keys.is_dir() else None,
                tls_ca=settings.tls_ca,
                sharded=sharded,
                metrics_host=metrics_host,
                metrics_port=metrics_port,
            )
        )
        task = asyncio.create_task(broker.run())
        try:
            await wait_ready(broker, task)
            if owner:
                refused = await _enrol(broker, check_name("name", name), key)
                if refused is None:
                    console.print(f"[green]server owner[/] {name} ({key[:12]}…)")
                else:
                    console.print(f"[yellow]--owner:[/] {refused}")
            if broker.settings.keys_dir is None:
                console.print(
                    f"[yellow]insecure:[/] no keys in {keys}/ (colonies server config makes "
                    "them): this broker serves anyone who reaches NATS"
                )
            console.print(f"[green]broker[/] ready on {shown_url(settings.nats_url)}")
            if (url := metrics_url(broker)) is not None:
                console.print(f"[green]metrics[/] {url} (figures while this broker leads)")
            await _until_signalled()
        finally:
            await stop_broker(broker, task)

    run(go())


def dev(
    ctx: typer.Context,
    data_dir: Path = _DATA_DIR,
    port: int = _PORT,
    http_port: int | None = _HTTP_PORT,
    config: Path | None = _CONFIG,
    insecure: bool = _INSECURE,
    tls_cert: Path | None = _TLS_CERT,
    tls_key: Path | None = _TLS_KEY,
    metrics_port: int = _DEV_METRICS_PORT,
    metrics_host: str = _METRICS_HOST,
    dashboard_port: int | None = typer.Option(
        None,
        "--dashboard-port",
        min=0,
        max=65535,
        help="The dashboard's port on 127.0.0.1 (default: 8100; free with --port 0).",
        show_default=False,
    ),
) -> None:
    """Everything for development: NATS, a broker, colony 'dev', an echo executor and the
    dashboard. Secure unless --insecure: you (your key) own the server and colony 'dev'."""
    from .dashboard import DEFAULT_PORT

    _run_server(
        ctx,
        data_dir,
        port,
        http_port,
        config,
        dev=True,
        insecure=insecure,
        tls_cert=tls_cert,
        tls_key=tls_key,
        metrics=(metrics_host, metrics_port),
        dashboard_port=(DEFAULT_PORT if port else 0) if dashboard_port is None else dashboard_port,
    )


server_app.command("status")(server_status)
