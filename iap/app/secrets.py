"""The secrets one process needs, read once at start-up: the session keyring, the OIDC
client credential and the Redis passwords (SPEC §5 ``session.keys_file``,
``oidc.client_secret_file``, ``oidc.client_certificate``, ``redis.password_file``,
``redis.sentinel.password_file``, ``IAP_SESSION_KEYS``, ``IAP_OIDC_CLIENT_SECRET``).

Invariants:
- A secret that cannot be had appends a problem naming its key, never the material, and
  the caller refuses to serve (every problem of the config is reported at once).
- Files are read here and nowhere else below the composition root; the values go to the
  parts that use them (the keyring to the session and cookie sealers, the credential to
  the OAuth client, the passwords to the Redis client).
"""

from __future__ import annotations

import os
from pathlib import Path

from iap.adapters.oauth import ClientCredential
from iap.adapters.redis_passwords import RedisPasswords
from iap.config import OIDC
from iap.config import Redis as RedisConfig
from iap.config import Session as SessionConfig
from iap.domain import sealing
from iap.domain.client_auth import ClientCertificate
from iap.environment import Environment


def session_keyring(
    session: SessionConfig, environment: Environment, problems: list[str]
) -> sealing.Keyring:
    """The cookie keyring from ``session.keys_file`` or ``IAP_SESSION_KEYS``."""
    try:
        if session.keys_file is not None:
            return sealing.Keyring.parse(session.keys_file.read_text(encoding="utf-8"))
        if environment.session_keys is None:
            raise KeyError("IAP_SESSION_KEYS")
        return sealing.Keyring.parse(environment.session_keys.replace(",", "\n"))
    except (OSError, UnicodeDecodeError, KeyError) as exc:
        problems.append(f"session.keys_file: cannot read ({type(exc).__name__})")
    except ValueError as exc:  # names the line, never the key
        problems.append(f"session.keys_file: {exc}")
    return sealing.Keyring([os.urandom(sealing.KEY_BYTES)])  # never used: problems raise


def client_credential(
    oidc: OIDC, environment: Environment, problems: list[str]
) -> ClientCredential:
    """The client's secret (file or ``IAP_OIDC_CLIENT_SECRET``) or certificate."""
    try:
        if oidc.client_certificate is not None:
            files = oidc.client_certificate
            certificate = ClientCertificate.load(
                files.cert_file.read_bytes(), files.key_file.read_bytes()
            )
            return ClientCredential(oidc.client_id, certificate=certificate)
        if oidc.client_secret_file is not None:
            secret = oidc.client_secret_file.read_text(encoding="utf-8").strip()
        else:
            secret = (environment.client_secret or "").strip()
        if not secret:
            problems.append("oidc.client_secret_file: the secret is empty")
        return ClientCredential(oidc.client_id, secret=secret)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"oidc: cannot read the client credential ({type(exc).__name__})")
    except ValueError as exc:  # ClientCertificate names what is wrong, never the key
        problems.append(f"oidc.client_certificate: {exc}")
    return ClientCredential(oidc.client_id)


def redis_passwords(redis: RedisConfig, problems: list[str]) -> RedisPasswords:
    """The passwords of ``redis.password_file`` and ``redis.sentinel.password_file``."""
    sentinel_file = redis.sentinel.password_file if redis.sentinel is not None else None
    return RedisPasswords(
        password=_password(redis.password_file, "redis.password_file", problems),
        sentinel_password=_password(sentinel_file, "redis.sentinel.password_file", problems),
    )


def _password(path: Path | None, key: str, problems: list[str]) -> str | None:
    """One password file's first line, or None without a file; a problem names ``key``."""
    if path is None:
        return None
    try:
        password = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{key}: cannot read ({type(exc).__name__})")
        return None
    if not password or "\n" in password:
        problems.append(f"{key}: expected one non-empty line")
        return None
    return password
