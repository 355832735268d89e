"""The ``redis`` block: what it accepts, what it refuses by key path, and the passwords
read by the composition root (never echoed, masked in reprs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from iap import config
from iap.adapters.redis_client import backend
from iap.adapters.redis_passwords import RedisPasswords
from iap.app import secrets
from iap.errors import ConfigError

CANARY = "canary-pw-7f3a"


def document(redis: dict[str, Any]) -> dict[str, Any]:
    route = {"name": "app", "upstream": "http://127.0.0.1:8081", "policy": {"public": True}}
    return {"public_url": "https://edge.contoso.com", "routes": [route], "redis": redis}


def problems_of(redis: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(document(redis))
    return info.value.problems


def parsed(redis: dict[str, Any]) -> config.Redis:
    settings = config.parse(document(redis)).redis
    assert settings is not None
    return settings


def files(tmp_path: Path, *names: str) -> dict[str, str]:
    made = {}
    for name in names:
        (tmp_path / name).write_text("x")
        made[name] = str(tmp_path / name)
    return made


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("redis://cache.internal:6379/2", "redis"),
        ("rediss://cache.redis.cache.windows.net:6380", "redis-tls"),
        ("unix:///run/redis/redis.sock", "redis-unix"),
    ],
)
def test_urls_accepted(url: str, name: str) -> None:
    settings = parsed({"url": url})
    assert settings.url == url
    assert settings.timeout == 0.5
    assert backend(settings) == name


def test_userinfo_is_refused_pointing_to_username_and_password_file() -> None:
    [problem] = problems_of({"url": f"redis://iap:{CANARY}@cache:6379/0"})
    assert problem.startswith("redis.url: ")
    assert "redis.username and redis.password_file" in problem
    assert CANARY not in problem


@pytest.mark.parametrize(
    ("redis", "expected"),
    [
        ({}, "redis: set url (or a sentinel block)"),
        (
            {"url": "http://cache"},
            "redis.url: expected a redis://, rediss://, unix:// or redis+sentinel:// URL",
        ),
        ({"url": "redis://cache/x"}, "redis.url: the path of a redis URL is the database"),
        ({"url": "unix://host/sock"}, "redis.url: expected unix:///path/to/redis.sock"),
        ({"url": "redis://cache", "timeout": "0s"}, "redis.timeout: "),
        ({"url": "redis://cache", "cluster": "maybe"}, "redis.cluster: "),
        ({"url": "redis+sentinel://s1:26379"}, "redis.url: expected redis+sentinel://HOST:PORT"),
        ({"url": "redis+sentinel://s1/m"}, "redis.url: expected redis+sentinel://HOST:PORT"),
        ({"url": "redis+sentinel://s1:26379/m/x"}, "redis.url: expected redis+sentinel://"),
        ({"url": "redis+sentinel://s1:26379/m?db=1"}, "redis.url: expected redis+sentinel://"),
        ({"url": "redis+sentinel://s1:1,bad/m"}, "redis.url: expected redis+sentinel://"),
        ({"url": "redis://c", "password": CANARY}, "redis.password: "),
    ],
)
def test_refused_by_key_path(redis: dict[str, Any], expected: str) -> None:
    [problem] = problems_of(redis)
    assert problem.startswith(expected), problem
    assert CANARY not in problem


def test_tls_files_need_rediss(tmp_path: Path) -> None:
    ca = files(tmp_path, "ca.pem")["ca.pem"]
    [problem] = problems_of({"url": "redis://cache", "ca_file": ca})
    assert problem == "redis: ca_file, cert_file and key_file need a rediss:// url"
    assert parsed({"url": "rediss://cache", "ca_file": ca}).ca_file == Path(ca)


def test_a_client_key_goes_with_its_certificate(tmp_path: Path) -> None:
    made = files(tmp_path, "cert.pem", "key.pem")
    [problem] = problems_of({"url": "rediss://cache", "cert_file": made["cert.pem"]})
    assert problem == "redis: cert_file and key_file go together"
    both = {"cert_file": made["cert.pem"], "key_file": made["key.pem"]}
    assert parsed({"url": "rediss://cache", **both}).key_file == Path(made["key.pem"])


def test_sentinel_block(tmp_path: Path) -> None:
    sentinel = {"master": "mymaster", "addresses": ["10.0.0.1:26379", "10.0.0.2:26379"]}
    settings = parsed({"sentinel": sentinel, "url": "redis:///3"})
    assert settings.sentinel is not None
    assert [str(a) for a in settings.sentinel.addresses] == ["10.0.0.1:26379", "10.0.0.2:26379"]
    assert backend(settings) == "redis-sentinel"
    [problem] = problems_of({"sentinel": sentinel, "url": "redis://cache:6379/0"})
    assert problem.startswith("redis: with sentinel, url may only carry the database")
    [problem] = problems_of({"sentinel": sentinel, "url": "rediss:///0"})
    assert "TLS through sentinels is not supported" in problem
    [problem] = problems_of({"sentinel": {"master": "m", "addresses": []}})
    assert problem.startswith("redis.sentinel.addresses: ")


def test_passwords_are_read_once_and_masked(tmp_path: Path) -> None:
    (tmp_path / "redis.pw").write_text(CANARY + "\n")
    (tmp_path / "sentinel.pw").write_text("sentinel-" + CANARY)
    settings = parsed(
        {
            "sentinel": {
                "master": "m",
                "addresses": ["127.0.0.1:26379"],
                "password_file": str(tmp_path / "sentinel.pw"),
            },
            "password_file": str(tmp_path / "redis.pw"),
            "username": "iap",
        }
    )
    problems: list[str] = []
    passwords = secrets.redis_passwords(settings, problems)
    assert problems == []
    assert passwords.password == CANARY
    assert passwords.sentinel_password == "sentinel-" + CANARY
    assert CANARY not in repr(passwords)
    assert CANARY not in str(passwords)
    assert repr(passwords) == "RedisPasswords(password=***, sentinel_password=***)"
    assert repr(RedisPasswords()) == "RedisPasswords(password=None, sentinel_password=None)"
    assert CANARY not in repr(settings)  # the config holds the path, never the password


def test_an_empty_or_vanished_password_file_is_a_problem_naming_its_key(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pw"
    empty.write_text("\n")
    gone = tmp_path / "gone.pw"
    gone.write_text("x")
    settings = parsed({"url": "redis://cache", "password_file": str(empty)})
    problems: list[str] = []
    assert secrets.redis_passwords(settings, problems).password is None
    assert problems == ["redis.password_file: expected one non-empty line"]
    settings = parsed({"url": "redis://cache", "password_file": str(gone)})
    gone.unlink()
    problems = []
    secrets.redis_passwords(settings, problems)
    assert problems == ["redis.password_file: cannot read (FileNotFoundError)"]


def test_a_sentinel_url_is_the_sentinel_block() -> None:
    settings = parsed({"url": "redis+sentinel://10.0.0.1:26379,sentinel-b:26380/mymaster/3"})
    sentinel = settings.sentinels
    assert sentinel is not None
    assert sentinel.master == "mymaster"
    assert [str(a) for a in sentinel.addresses] == ["10.0.0.1:26379", "sentinel-b:26380"]
    assert settings.database == 3
    assert backend(settings) == "redis-sentinel"
    assert parsed({"url": "redis+sentinel://s:26379/m"}).database == 0
    assert parsed({"url": "redis+sentinel://s:26379/m/"}).sentinels is not None


@pytest.mark.parametrize("userinfo", [f"iap:{CANARY}", f":{CANARY}", "iap"])
def test_a_sentinel_url_refuses_credentials(userinfo: str) -> None:
    [problem] = problems_of({"url": f"redis+sentinel://{userinfo}@s1:26379,s2:26379/m"})
    assert problem.startswith("redis.url: credentials do not belong in the URL")
    assert "redis.username and redis.password_file" in problem
    assert CANARY not in problem


def test_a_sentinel_url_and_a_sentinel_block_at_once_are_refused() -> None:
    block = {"master": "m", "addresses": ["127.0.0.1:26379"]}
    [problem] = problems_of({"url": "redis+sentinel://s:26379/m", "sentinel": block})
    assert problem == (
        "redis: set the sentinels once: a redis+sentinel:// url or a sentinel block, not both"
    )


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("redis://cfg.cache.amazonaws.com:6379", "redis-cluster"),
        ("rediss://c:6380/0", "redis-cluster-tls"),
    ],
)
def test_cluster_mode(url: str, name: str) -> None:
    settings = parsed({"url": url, "cluster": True})
    assert settings.cluster is True
    assert settings.sentinels is None
    assert backend(settings) == name
    assert parsed({"url": url}).cluster is False


@pytest.mark.parametrize(
    ("redis", "expected"),
    [
        ({"url": "unix:///run/redis.sock"}, "redis: cluster needs a redis:// or rediss:// url"),
        ({"url": "redis+sentinel://s:26379/m"}, "redis: cluster needs a redis:// or rediss://"),
        (
            {"url": "redis:///0", "sentinel": {"master": "m", "addresses": ["s:26379"]}},
            "redis: cluster needs a redis:// or rediss:// url naming a node of the cluster",
        ),
        ({"url": "redis://node:6379/2"}, "redis: cluster: a Redis Cluster has only database 0"),
    ],
)
def test_cluster_mode_refuses_what_a_cluster_cannot_do(
    redis: dict[str, Any], expected: str
) -> None:
    [problem] = problems_of(redis | {"cluster": True})
    assert problem.startswith(expected), problem
