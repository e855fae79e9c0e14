"""A small Kubernetes API client on the standard library (asyncio streams, ssl), for the
Kubernetes executor: an executor installs with colonyos's core only, without the ``kubernetes``
package or an HTTP library.

Where it finds the cluster, first that applies:

1. ``--kubeconfig FILE``;
2. in a pod (``KUBERNETES_SERVICE_HOST`` set): the pod's service account (its token, CA and
   namespace under ``/var/run/secrets/kubernetes.io/serviceaccount``);
3. ``$KUBECONFIG`` (its first file), else ``~/.kube/config``.

A kubeconfig is YAML, and the core has no YAML parser: a kubeconfig in JSON is read as it is;
any other is converted with ``kubectl config view --raw --flatten -o json`` when kubectl is on
PATH; else the executor refuses to start, saying how to convert it. Of a kubeconfig's ways to
authenticate, it takes a client certificate and key, a bearer token (or token file), and the
server's CA (``insecure-skip-tls-verify`` too); ``exec`` and ``auth-provider`` plugins are
refused by name.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import subprocess
import tempfile
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .platform import PlatformError

__all__ = ["ApiError", "Cluster", "KubeAPI", "load_cluster"]

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# A reply larger than this is refused (a list of an executor's Jobs is far smaller).
_MAX_BODY = 64 * 2**20
_TIMEOUT_S = 30.0
_KUBECTL_VIEW = ("kubectl", "config", "view", "--raw", "--flatten", "-o", "json")


class ApiError(PlatformError):
    """The API server refused a request: its status code and its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Cluster:
    """Where the API server is and how to talk to it."""

    server: str  # https://host:port (or http:// for a local proxy)
    namespace: str = "default"
    token: str = ""
    ssl: ssl.SSLContext | None = None


# -- finding the cluster ------------------------------------------------------------------


def load_cluster(kubeconfig: str | None = None, namespace: str | None = None) -> Cluster:
    """The cluster to use (see the module's docstring for the order); PlatformError saying what
    is missing or not understood."""
    if kubeconfig:
        return from_kubeconfig(Path(kubeconfig), namespace)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster(namespace)
    env = os.environ.get("KUBECONFIG", "")
    path = Path(env.split(os.pathsep)[0]) if env else Path.home() / ".kube" / "config"
    if not path.exists():
        raise PlatformError(
            f"no cluster to talk to: {path} does not exist and this is not a pod "
            "(KUBERNETES_SERVICE_HOST is not set); give one with --kubeconfig FILE"
        )
    return from_kubeconfig(path, namespace)


def in_cluster(namespace: str | None = None, base: Path = SERVICE_ACCOUNT) -> Cluster:
    """The pod's own service account."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    try:
        token = (base / "token").read_text().strip()
        context = ssl.create_default_context(cafile=str(base / "ca.crt"))
    except OSError as err:
        raise PlatformError(
            f"in a pod, but its service account cannot be read ({err}): is "
            "automountServiceAccountToken off?"
        ) from None
    if not namespace:
        with contextlib.suppress(OSError):
            namespace = (base / "namespace").read_text().strip()
    host = f"[{host}]" if ":" in host else host
    return Cluster(f"https://{host}:{port}", namespace or "default", token, context)


def read_kubeconfig(path: Path) -> dict[str, Any]:
    """The kubeconfig at ``path`` as JSON: as it is, or converted by kubectl."""
    try:
        text = path.read_text()
    except OSError as err:
        raise PlatformError(f"kubeconfig {path}: cannot be read: {err.strerror}") from None
    try:
        value = json.loads(text)
    except ValueError:
        value = _converted(path)
    if not isinstance(value, dict):
        raise PlatformError(f"kubeconfig {path}: not a kubeconfig (not an object)")
    return value


def _converted(path: Path) -> Any:
    how = f"kubectl config view --raw --flatten -o json --kubeconfig {path} > config.json"
    try:
        done = subprocess.run(
            [*_KUBECTL_VIEW, "--kubeconfig", str(path)],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise PlatformError(
            f"kubeconfig {path} is not JSON and kubectl is not on PATH to read its YAML: convert "
            f"it elsewhere ({how}) and give that with --kubeconfig"
        ) from None
    if done.returncode != 0:
        raise PlatformError(f"kubeconfig {path}: kubectl cannot read it: {done.stderr.strip()}")
    try:
        return json.loads(done.stdout)
    except ValueError as err:
        raise PlatformError(f"kubeconfig {path}: kubectl's JSON is not JSON: {err}") from None


def _named(config: dict[str, Any], kind: str, name: str, path: Path) -> dict[str, Any]:
    for entry in config.get(kind + "s") or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(kind)
            return value if isinstance(value, dict) else {}
    raise PlatformError(f"kubeconfig {path}: no {kind} named {name!r}")


def from_kubeconfig(path: Path, namespace: str | None = None) -> Cluster:
    """The current context of the kubeconfig at ``path``."""
    config = read_kubeconfig(path)
    current = config.get("current-context")
    if not current:
        raise PlatformError(f"kubeconfig {path}: no current-context")
    context = _named(config, "context", current, path)
    cluster = _named(config, "cluster", str(context.get("cluster", "")), path)
    user = _named(config, "user", str(context.get("user", "")), path) if context.get("user") else {}
    server = str(cluster.get("server", ""))
    if not server.startswith(("https://", "http://")):
        raise PlatformError(f"kubeconfig {path}: cluster server {server!r} is not an https URL")
    for plugin in ("exec", "auth-provider"):
        if plugin in user:
            raise PlatformError(
                f"kubeconfig {path}: user {context.get('user')!r} authenticates with an "
                f"{plugin} plugin, which this executor does not run: give it a token or a "
                "client certificate (a service account's token, for instance)"
            )
    base = path.parent

    def data(section: dict[str, Any], key: str) -> bytes | None:
        if value := section.get(key + "-data"):
            return base64.b64decode(value)
        if file := section.get(key):
            try:
                return (base / str(file)).read_bytes()
            except OSError as err:
                raise PlatformError(f"kubeconfig {path}: {key} {file}: {err.strerror}") from None
        return None

    token = str(user.get("token", ""))
    if not token and user.get("tokenFile"):
        try:
            token = (base / user["tokenFile"]).read_text().strip()
        except OSError as err:
            raise PlatformError(f"kubeconfig {path}: tokenFile: {err.strerror}") from None
    context_ssl = None
    if server.startswith("https://"):
        context_ssl = _tls(
            data(cluster, "certificate-authority"),
            bool(cluster.get("insecure-skip-tls-verify")),
            data(user, "client-certificate"),
            data(user, "client-key"),
        )
    return Cluster(
        server.rstrip("/"),
        namespace or str(context.get("namespace") or "default"),
        token,
        context_ssl,
    )


def _tls(ca: bytes | None, insecure: bool, cert: bytes | None, key: bytes | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.decode() if ca else None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert and key:
        _load_client_cert(context, cert, key)
    return context


def _load_client_cert(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl reads a certificate and key from files only: from a private directory, removed at
    once."""
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        for file, content in ((cert_path, cert), (key_path, key)):
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
        context.load_cert_chain(cert_path, key_path)


# -- talking to it ------------------------------------------------------------------------


class KubeAPI:
    """HTTP/1.1 to the API server, one connection per request (a log followed holds its own)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        url = urllib.parse.urlsplit(cluster.server)
        self._tls = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._tls else 80)
        self._netloc = url.netloc
        self._base = url.path.rstrip("/")

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON reply of a request; ApiError with the server's message if its status is
        not 2xx."""
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation.
        async with _deadline(f"{method} {path}"):
            reader, writer = await self._open(method, path, body)
            try:
                async with self._broken():
                    status, headers = await _head(reader)
                    data = b"".join([c async for c in _body(reader, headers)])
            finally:
                writer.close()
        if not 200 <= status < 300:
            raise ApiError(status, f"{method} {path}: {status} {_message(data)}")
        return json.loads(data) if data else None

    async def lines(self, path: str) -> AsyncGenerator[bytes, None]:
        """Each line of a streamed reply (a log followed) as it comes, until the server ends it."""
        async with _deadline(f"GET {path}"):
            reader, writer = await self._open("GET", path, None)
        try:
            async with _deadline(f"GET {path}"), self._broken():
                status, headers = await _head(reader)
                if not 200 <= status < 300:
                    data = b"".join([c async for c in _body(reader, headers)])
                    raise ApiError(status, f"GET {path}: {status} {_message(data)}")
            pending = b""
            try:
                async for chunk in _body(reader, headers, limit=None):
                    pending += chunk
                    *done, pending = pending.split(b"\n")
                    for line in done:
                        yield line
            except (OSError, asyncio.IncompleteReadError, ValueError):
                pass  # the stream was cut: it ends here, as if the server had ended it
            if pending:
                yield pending
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def _broken(self) -> AsyncIterator[None]:
        """A connection that fails midway, said as the API's failure."""
        try:
            yield
        except (OSError, asyncio.IncompleteReadError, ValueError) as err:
            raise PlatformError(
                f"the Kubernetes API at {self.cluster.server}: the connection broke: "
                f"{err or type(err).__name__}"
            ) from None

    async def _open(
        self, method: str, path: str, body: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.open_connection(
                self._host,
                self._port,
                ssl=(self.cluster.ssl or ssl.create_default_context()) if self._tls else None,
                server_hostname=self._host if self._tls else None,
                limit=2**20,
            )
        except (OSError, ssl.SSLError) as err:
            raise PlatformError(
                f"the Kubernetes API at {self.cluster.server} cannot be reached: {err}"
            ) from None
        payload = b"" if body is None else json.dumps(body).encode()
        head = [
            f"{method} {self._base}{path} HTTP/1.1",
            f"Host: {self._netloc}",
            "Accept: application/json",
            "User-Agent: colonyos-kubernetes-executor",
            "Connection: close",
        ]
        if self.cluster.token:
            head.append(f"Authorization: Bearer {self.cluster.token}")
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        return reader, writer


@contextlib.asynccontextmanager
async def _deadline(what: str) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            yield
    except TimeoutError:
        raise PlatformError(
            f"the Kubernetes API did not answer {what} within {_TIMEOUT_S:g} s"
        ) from None


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise PlatformError(
            "the Kubernetes API closed the connection without an answer (does it take this "
            "client's certificate?)"
        )
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise PlatformError(f"the Kubernetes API answered {status_line[:80]!r}, not HTTP")
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _body(
    reader: asyncio.StreamReader, headers: dict[str, str], limit: int | None = _MAX_BODY
) -> AsyncIterator[bytes]:
    """The body's bytes as they come (chunked, sized, or to the end of the connection)."""
    seen = 0

    def count(n: int) -> None:
        nonlocal seen
        seen += n
        if limit is not None and seen > limit:
            raise PlatformError(f"the Kubernetes API's reply is larger than {limit} bytes")

    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            count(size)
            chunk = await reader.readexactly(size + 2)
            yield chunk[:-2]
    elif "content-length" in headers:
        size = int(headers["content-length"])
        count(size)
        if size:
            yield await reader.readexactly(size)
    else:
        while chunk := await reader.read(65536):
            count(len(chunk))
            yield chunk


def _message(data: bytes) -> str:
    """The message of a Kubernetes Status reply, else the reply's start."""
    try:
        status = json.loads(data)
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])
    except ValueError:
        pass
    return data[:500].decode(errors="replace")
