"""Settings from COLONIES_* variables: every documented variable is read into its type."""

from __future__ import annotations

from pathlib import Path

from colonyos.config import BrokerSettings, Settings


def test_client_settings_read_paths_and_names_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "COLONIES_NATS_URL": "nats://example:4222",
            "COLONIES_COLONY_NAME": "lab",
            "COLONIES_IDENTITY": "/keys/me.nk",
            "COLONIES_TLS_CA": "/keys/ca.pem",
            "COLONIES_USER": "alice",
            "COLONIES_REQUEST_TIMEOUT": "2.5",
        }
    )
    assert settings.identity == Path("/keys/me.nk") and settings.tls_ca == Path("/keys/ca.pem")
    assert (settings.colony, settings.caller, settings.request_timeout_s) == ("lab", "alice", 2.5)


def test_broker_settings_read_paths_from_the_environment() -> None:
    settings = BrokerSettings.from_env(
        {
            "COLONIES_DATA_DIR": "/var/colonies",
            "COLONIES_KEYS_DIR": "/var/colonies/keys",
            "COLONIES_TLS_CA": "/etc/ca.pem",
            "COLONIES_RETENTION": "12h",
        }
    )
    assert settings.data_dir == Path("/var/colonies")
    assert settings.keys_dir == Path("/var/colonies/keys")
    assert settings.tls_ca == Path("/etc/ca.pem")
    assert settings.retention_s == 12 * 3600
