"""Keys on disk and the JWTs made from them: private files, clear refusals, signatures."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colonyos.cli.main import app
from colonyos.errors import IdentityError
from colonyos.security import jwt
from colonyos.security.keys import generate, load_identity, public_key_kind, verify, write_seed


def test_a_seed_is_written_for_its_owner_only_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "me.nk"
    me = generate()
    write_seed(path, me)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_identity(path).public_key == me.public_key
    with pytest.raises(IdentityError, match="already exists"):
        write_seed(path, generate())
    assert load_identity(path).public_key == me.public_key


def test_a_seed_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "me.nk"
    write_seed(path, generate())
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_identity(path)


@pytest.mark.parametrize("text", [b"", b"hello", b"SUAMXXXXXXXXXXXXXXXXXXXXXXXX", b"UABC"])
def test_a_file_that_is_not_a_seed_is_refused_clearly(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "me.nk"
    path.write_bytes(text)
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="seed"):
        load_identity(path)


def test_a_missing_identity_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="colonies key generate"):
        load_identity(tmp_path / "nothing.nk")


def test_signatures_are_checked_against_the_right_key() -> None:
    me, other = generate(), generate()
    sig = me.sign(b"nonce")
    assert verify(me.public_key, b"nonce", sig)
    assert not verify(other.public_key, b"nonce", sig)
    assert not verify(me.public_key, b"nonce!", sig)
    last = me.public_key[-1]
    broken = me.public_key[:-1] + ("B" if last == "A" else "A")  # its checksum no longer holds
    assert not verify(broken, b"nonce", sig)
    assert public_key_kind(me.public_key) == "user"
    assert public_key_kind(generate("account").public_key) == "account"
    assert public_key_kind("not a key") is None


def test_a_jwt_whose_claims_or_signature_changed_is_refused() -> None:
    issuer = generate("account")
    token = jwt.encode({"sub": "x", "nats": {"pub": {"allow": ["a"]}}}, issuer)
    assert jwt.decode(token)["iss"] == issuer.public_key
    head, _, sig = token.split(".")
    widened = jwt.encode({"sub": "x", "nats": {"pub": {"allow": [">"]}}}, issuer).split(".")[1]
    with pytest.raises(jwt.JwtError, match="signature"):
        jwt.decode(f"{head}.{widened}.{sig}")
    # Claims naming the issuer, signed by another key.
    mallory = generate("account")
    body = base64.urlsafe_b64encode(
        json.dumps({"sub": "x", "iss": issuer.public_key}).encode()
    ).rstrip(b"=")
    signed = mallory.sign(head.encode() + b"." + body)
    forged = f"{head}.{body.decode()}.{base64.urlsafe_b64encode(signed).rstrip(b'=').decode()}"
    with pytest.raises(jwt.JwtError, match="signature"):
        jwt.decode(forged)


def test_key_generate_and_show_agree(tmp_path: Path) -> None:
    runner = CliRunner()
    path = tmp_path / "mine.nk"
    made = runner.invoke(app, ["key", "generate", "--out", str(path)])
    assert made.exit_code == 0, made.output
    public = made.stdout.strip().splitlines()[-1]
    shown = runner.invoke(app, ["--identity", str(path), "key", "show"])
    assert shown.exit_code == 0 and shown.stdout.strip() == public
    again = runner.invoke(app, ["key", "generate", "--out", str(path)])
    assert again.exit_code == 2 and "already exists" in again.output
    kept = runner.invoke(app, ["key", "generate", "--out", str(path), "--keep"])
    assert kept.exit_code == 0 and kept.stdout.strip().splitlines()[-1] == public, kept.output
    junk = tmp_path / "junk.nk"
    junk.write_text("not a seed\n")
    junk.chmod(0o600)
    refused = runner.invoke(app, ["key", "generate", "--out", str(junk), "--keep"])
    assert refused.exit_code == 2 and "does not hold an nkey seed" in refused.output


def test_broker_start_names_a_keys_dir_that_is_not_there(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = tmp_path / "keys"
    result = runner.invoke(app, ["broker", "start", "--keys-dir", str(missing)])
    assert result.exit_code == 2, result.output
    assert f"--keys-dir {missing}: no such directory" in result.output


def test_server_urls_are_logged_without_credentials() -> None:
    from colonyos.connection import shown_url

    assert shown_url("nats://broker:secret@127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert shown_url("nats://a:b@h1:1,tls://token@h2:2,nats://h3:3") == (
        "nats://h1:1,tls://h2:2,nats://h3:3"
    )
