"""The signing keys directory (SPEC §5 ``tokens.keys_dir``) and ``iap keys new`` (SPEC §4)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from iap import cli
from iap.adapters.signing_keys import KeyDirectory, load_dir, write_new_key
from iap.domain.tokens import SigningKey, load_key, new_key_pem
from iap.errors import ConfigError

PBU = 1500.0
TTL = 300.0
T0 = 1_700_000_000


def put(directory: Path, name: str, pem: bytes, *, mtime: float = T0, mode: int = 0o600) -> Path:
    """Write a key file with an explicit mode and mtime (never the wall clock's)."""
    file = directory / name
    file.write_bytes(pem)
    file.chmod(mode)
    os.utime(file, (mtime, mtime))
    return file


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    return directory


def directory_of(path: Path) -> KeyDirectory:
    return KeyDirectory(path, publish_before_use=PBU, ttl=TTL)


# load_dir ---------------------------------------------------------------------------


def test_load_dir_reads_every_pem_file_with_its_mtime(keys_dir: Path) -> None:
    pems = [new_key_pem(), new_key_pem()]
    put(keys_dir, "a.pem", pems[0], mtime=T0)
    put(keys_dir, "b.pem", pems[1], mtime=T0 + 60.5)
    (keys_dir / "README").write_text("not a key")  # only *.pem files are keys
    keys, problems = load_dir(keys_dir)
    assert problems == []
    assert [(k.kid, k.created) for k in keys] == [
        (load_key(pems[0], created=0).kid, T0),
        (load_key(pems[1], created=0).kid, T0 + 60.5),
    ]


def test_a_bad_file_is_named_and_its_content_is_not(keys_dir: Path) -> None:
    put(keys_dir, "good.pem", new_key_pem())
    put(keys_dir, "bad.pem", b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    keys, problems = load_dir(keys_dir)
    assert len(keys) == 1
    assert problems == [f"{keys_dir / 'bad.pem'}: not a readable unencrypted PEM private key"]
    assert "c2VjcmV0" not in problems[0]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620])
def test_a_key_others_can_read_is_a_problem(keys_dir: Path, mode: int) -> None:
    put(keys_dir, "open.pem", new_key_pem(), mode=mode)
    keys, problems = load_dir(keys_dir)
    assert keys == []
    assert problems == [
        f"{keys_dir / 'open.pem'}: mode {mode:04o} is looser than 0600:"
        " group or world readable or writable"
    ]


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_are_fine(keys_dir: Path, mode: int) -> None:
    put(keys_dir, "k.pem", new_key_pem(), mode=mode)
    assert load_dir(keys_dir)[1] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_group_readable_key_owned_by_another_user_in_our_group_is_fine(keys_dir: Path) -> None:
    """A Kubernetes Secret volume with fsGroup: root:fsGroup, mode 0440, read via the group."""
    file = put(keys_dir, "k.pem", new_key_pem(), mode=0o440)
    os.chown(file, 4242, os.getegid())
    assert load_dir(keys_dir)[1] == []
    file.chmod(0o444)
    assert "group or world readable" in load_dir(keys_dir)[1][0]


def test_directory_problems(tmp_path: Path, keys_dir: Path) -> None:
    assert load_dir(tmp_path / "missing")[1] == [
        f"{tmp_path / 'missing'}: cannot list the directory: No such file or directory"
    ]
    assert "holds no *.pem key files" in load_dir(keys_dir)[1][0]
    (keys_dir / "sub.pem").mkdir()
    assert load_dir(keys_dir)[1] == [f"{keys_dir / 'sub.pem'}: not a regular file"]


def test_an_oversized_file_is_not_read(keys_dir: Path) -> None:
    put(keys_dir, "big.pem", b"x" * 20_000)
    assert "larger than" in load_dir(keys_dir)[1][0]


# KeyDirectory -----------------------------------------------------------------------


@pytest.mark.parametrize("setup", ["missing", "empty", "bad"])
def test_constructor_names_tokens_keys_dir(tmp_path: Path, keys_dir: Path, setup: str) -> None:
    path = tmp_path / "missing" if setup == "missing" else keys_dir
    if setup == "bad":
        put(keys_dir, "bad.pem", b"nope")
    with pytest.raises(ConfigError) as raised:
        directory_of(path)
    assert len(raised.value.problems) == 1
    assert raised.value.problems[0].startswith(f"tokens.keys_dir: {path}")


def test_refresh_rereads_only_when_a_file_changes(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = put(keys_dir, "k1.pem", new_key_pem(), mtime=T0)
    directory = directory_of(keys_dir)
    (k1,) = directory.current.keys
    reads: list[Path] = []

    def counting(path: Path) -> tuple[list[SigningKey], list[str]]:
        reads.append(path)
        return load_dir(path)

    monkeypatch.setattr("iap.adapters.signing_keys.load_dir", counting)
    assert directory.refresh(T0 + 10) is None
    assert reads == []

    put(keys_dir, "k2.pem", new_key_pem(), mtime=T0 + 100)  # a new name
    assert directory.refresh(T0 + 100) is True
    assert [k.created for k in directory.current.keys] == [T0, T0 + 100]
    assert directory.refresh(T0 + 101) is None
    assert len(reads) == 1

    os.utime(first, (T0 + 200, T0 + 200))  # a new mtime: re-read, the key keeps its age
    assert directory.refresh(T0 + 200) is True
    assert directory.current.keys[0] == k1
    assert directory.refresh(T0 + 201) is None
    assert len(reads) == 2


def test_a_vanished_key_stays_published_for_ttl(keys_dir: Path) -> None:
    put(keys_dir, "k1.pem", new_key_pem(), mtime=T0)
    second = put(keys_dir, "k2.pem", new_key_pem(), mtime=T0 + 1)
    directory = directory_of(keys_dir)
    k2 = directory.current.keys[1]
    second.unlink()
    assert directory.refresh(T0 + 50) is True
    assert [k.kid for k in directory.current.keys] != [k2.kid]
    assert k2.kid in directory.current.published(T0 + 50 + TTL)
    assert k2.kid not in directory.current.published(T0 + 51 + TTL)


def test_a_bad_reread_keeps_the_old_set_and_is_reported_once(
    keys_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    put(keys_dir, "k1.pem", new_key_pem(), mtime=T0)
    directory = directory_of(keys_dir)
    before = directory.current
    bad = put(keys_dir, "k2.pem", b"half a key", mtime=T0 + 5)
    with caplog.at_level(logging.WARNING, logger="iap.tokens"):
        assert directory.refresh(T0 + 5) is False
        assert directory.refresh(T0 + 6) is None
    assert directory.current is before
    assert directory.problems == [f"{bad}: not a readable unencrypted PEM private key"]
    assert len(caplog.records) == 1
    assert "half a key" not in caplog.text

    put(keys_dir, "k2.pem", new_key_pem(), mtime=T0 + 7)  # the writer finished
    assert directory.refresh(T0 + 7) is True
    assert len(directory.current.keys) == 2
    assert directory.problems == []


def test_a_vanished_directory_keeps_the_old_set(keys_dir: Path) -> None:
    file = put(keys_dir, "k1.pem", new_key_pem(), mtime=T0)
    directory = directory_of(keys_dir)
    before = directory.current
    file.unlink()
    keys_dir.rmdir()
    assert directory.refresh(T0 + 1) is False
    assert directory.refresh(T0 + 2) is None
    assert directory.current is before
    keys_dir.mkdir()
    put(keys_dir, "k1.pem", new_key_pem(), mtime=T0 + 3)
    assert directory.refresh(T0 + 3) is True


def test_replacing_the_only_ready_key_in_one_step_warns(
    keys_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = put(keys_dir, "k1.pem", new_key_pem(), mtime=T0)
    directory = directory_of(keys_dir)
    first.unlink()
    put(keys_dir, "k2.pem", new_key_pem(), mtime=T0 + PBU + 10)
    with caplog.at_level(logging.WARNING, logger="iap.tokens"):
        assert directory.refresh(T0 + PBU + 10) is True
    assert "published less than publish_before_use ago" in caplog.text


# iap keys new -----------------------------------------------------------------------


def test_keys_new_writes_a_0600_key_named_by_its_kid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "deep" / "keys"
    assert cli.main(["keys", "new", "--dir", str(directory)]) == 0
    kid = capsys.readouterr().out.strip()
    file = directory / f"{kid}.pem"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert load_key(file.read_bytes(), created=0).kid == kid

    assert cli.main(["keys", "new", "--dir", str(directory)]) == 0
    second = capsys.readouterr().out.strip()
    assert second != kid
    assert sorted(p.name for p in directory.iterdir()) == sorted([f"{kid}.pem", f"{second}.pem"])
    keys, problems = load_dir(directory)
    assert (len(keys), problems) == (2, [])


def test_keys_new_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["keys"], ["keys", "new"], ["keys", "old", "--dir", "x"]):
        with pytest.raises(SystemExit) as raised:
            cli.main(argv)
        assert raised.value.code == 2
    assert "--dir" in capsys.readouterr().err


def test_keys_new_exits_1_when_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["keys", "new", "--dir", str(blocker)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"iap keys new: cannot write a key to {blocker}")


def test_write_new_key_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pem = new_key_pem()
    kid = load_key(pem, created=0).kid
    monkeypatch.setattr("iap.adapters.signing_keys.new_key_pem", lambda: pem)
    assert write_new_key(tmp_path)[0] == kid
    with pytest.raises(FileExistsError):
        write_new_key(tmp_path)
    assert (tmp_path / f"{kid}.pem").read_bytes() == pem
