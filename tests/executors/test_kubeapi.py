"""Where the Kubernetes executor finds its cluster (kubeconfig in JSON or YAML, in-cluster) and how
it talks to it (TLS with the cluster's CA, a client certificate or a bearer token), against the
fake API server over real TLS."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from colonyos.executors.kubeapi import ApiError, KubeAPI, in_cluster, load_cluster
from colonyos.executors.kubernetes import Jobs
from colonyos.executors.platform import PlatformError
from tests.kubefake import FakeKube


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def mtls(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[FakeKube]:
    """The fake API server asking for a client certificate of its CA (no token)."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    ca.configure_trust(tls)
    tls.verify_mode = ssl.CERT_REQUIRED
    fake = FakeKube(tmp_path / "pods")
    await fake.start(tls)
    try:
        yield fake
    finally:
        await fake.close()


def config(
    server: str, user: dict[str, Any], cluster: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "main",
        "contexts": [{"name": "main", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "u", "user": user}],
    }


async def test_client_certificate_and_ca_from_files_next_to_the_kubeconfig(
    mtls: FakeKube, ca: trustme.CA, tmp_path: Path
) -> None:
    cert = ca.issue_cert("executor")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "me.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    (tmp_path / "me.key").write_bytes(cert.private_key_pem.bytes())
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            config(
                mtls.url,
                {"client-certificate": "me.pem", "client-key": "me.key"},
                {"certificate-authority": "ca.pem"},
            )
        )
    )
    cluster = load_cluster(str(path))
    assert cluster.namespace == "default" and cluster.token == ""
    jobs = Jobs(KubeAPI(cluster), cluster.namespace, "dev.k1")
    assert await jobs.held() == []
    assert (
        "GET",
        "/apis/batch/v1/namespaces/default/jobs?labelSelector=colonies.executor%3Ddev.k1",
    ) in mtls.requests


async def test_without_its_client_certificate_the_server_is_not_reached(
    mtls: FakeKube, ca: trustme.CA, tmp_path: Path
) -> None:
    path = tmp_path / "config.json"
    ca_data = base64.b64encode(ca.cert_pem.bytes()).decode()
    path.write_text(
        json.dumps(config(mtls.url, {"token": "t"}, {"certificate-authority-data": ca_data}))
    )
    api = KubeAPI(load_cluster(str(path)))
    with pytest.raises(
        PlatformError,
        # TLS 1.3: the server's refusal of the handshake comes as the first read.
        match=r"^the Kubernetes API (closed the connection without an answer \(does it take this client's certificate\?\)|at https://127\.0\.0\.1:\d+: the connection broke: .*CERTIFICATE_REQUIRED)",
    ):
        await api.request("GET", "/api/v1/namespaces/default/pods")


async def test_a_server_of_another_ca_is_refused(mtls: FakeKube, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    other = base64.b64encode(trustme.CA().cert_pem.bytes()).decode()
    path.write_text(
        json.dumps(config(mtls.url, {"token": "t"}, {"certificate-authority-data": other}))
    )
    with pytest.raises(PlatformError, match="CERTIFICATE_VERIFY_FAILED"):
        await KubeAPI(load_cluster(str(path))).request("GET", "/api/v1/namespaces/default/pods")


async def test_a_refusal_carries_the_servers_status_and_message(tmp_path: Path) -> None:
    fake = FakeKube(tmp_path / "pods", token="right")
    await fake.start()
    try:
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config(fake.url, {"token": "wrong"})))
        with pytest.raises(
            ApiError, match=r"GET /apis/batch/v1/namespaces/default/jobs/x: 401 Unauthorized"
        ) as err:
            await KubeAPI(load_cluster(str(path))).request(
                "GET", "/apis/batch/v1/namespaces/default/jobs/x"
            )
        assert err.value.status == 401
    finally:
        await fake.close()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_a_yaml_kubeconfig_is_read_through_kubectl(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: main\n"
        "contexts:\n- name: main\n  context: {cluster: c, user: u, namespace: science}\n"
        "clusters:\n- name: c\n  cluster: {server: 'https://10.0.0.1:6443', insecure-skip-tls-verify: true}\n"
        "users:\n- name: u\n  user: {token: abc}\n"
    )
    cluster = load_cluster(str(path))
    assert (cluster.server, cluster.namespace, cluster.token) == (
        "https://10.0.0.1:6443",
        "science",
        "abc",
    )
    assert cluster.ssl is not None and cluster.ssl.verify_mode is ssl.CERT_NONE


def test_a_yaml_kubeconfig_without_kubectl_says_how_to_convert_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no kubectl
    path = tmp_path / "config"
    path.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(
        PlatformError,
        match=r"is not JSON and kubectl is not on PATH.*kubectl config view --raw --flatten -o json",
    ):
        load_cluster(str(path))


@pytest.mark.parametrize(
    ("user", "error"),
    [
        ({"exec": {"command": "aws"}}, "authenticates with an exec plugin"),
        ({"auth-provider": {"name": "gcp"}}, "authenticates with an auth-provider plugin"),
    ],
)
def test_auth_plugins_are_refused_by_name(tmp_path: Path, user: dict[str, Any], error: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config("https://k:6443", user)))
    with pytest.raises(PlatformError, match=error):
        load_cluster(str(path))


def test_a_kubeconfig_without_a_current_context_or_a_cluster_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    raw = config("https://k:6443", {"token": "t"})
    path.write_text(json.dumps({**raw, "current-context": ""}))
    with pytest.raises(PlatformError, match="no current-context"):
        load_cluster(str(path))
    path.write_text(json.dumps({**raw, "clusters": []}))
    with pytest.raises(PlatformError, match="no cluster named 'c'"):
        load_cluster(str(path))


def test_in_a_pod_the_service_account_is_used(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "namespace").write_text("batch")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    cluster = in_cluster(base=tmp_path)
    assert (cluster.server, cluster.namespace, cluster.token) == (
        "https://10.96.0.1:443",
        "batch",
        "sa-token",
    )
    assert in_cluster("other", base=tmp_path).namespace == "other"  # --namespace wins
    (tmp_path / "token").unlink()
    with pytest.raises(PlatformError, match="in a pod, but its service account cannot be read"):
        in_cluster(base=tmp_path)


def test_nothing_to_talk_to_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(PlatformError, match=r"no cluster to talk to: .*absent does not exist"):
        load_cluster()


def test_the_executor_installs_with_the_core_only() -> None:
    """No Kubernetes client, HTTP library or YAML parser: the standard library talks to the API."""
    # nats-py imports aiohttp when it is installed (as it is in tests): count what the
    # executor adds to the core's executor base.
    code = (
        "import sys, colonyos.executor\n"
        "base = set(sys.modules)\n"
        "import colonyos.executors.kubernetes\n"
        "heavy = ('kubernetes', 'aiohttp', 'httpx', 'requests', 'yaml', 'typer', 'rich', "
        "'sqlite_utils', 'colonyos.broker')\n"
        "print(','.join(sorted(m for m in set(sys.modules) - base if m in heavy or m.split('.')[0] in heavy)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
