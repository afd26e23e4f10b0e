"""probed.files: small local files are read from regular files only, capped, and never block.

The FIFO cases would hang forever in a plain open() (no writer ever comes), so each test runs
under a short pytest timeout: a regression fails instead of stalling the suite.
"""

import os
from pathlib import Path

import pytest

from probed.client import read_bearer_token
from probed.files import FileRefusedError, read_small_file, read_small_text

pytestmark = pytest.mark.timeout(10)


def test_a_regular_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b'{"checks": []}\n')
    assert read_small_file(str(path), 100) == b'{"checks": []}\n'
    assert read_small_text(str(path), 100, "--config") == '{"checks": []}\n'


def test_a_symlink_to_a_regular_file_works(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"token\n")
    os.symlink("real", str(tmp_path / "link"))
    assert read_small_file(str(tmp_path / "link"), 100) == b"token\n"


def test_a_fifo_is_refused_at_once_and_named(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(str(fifo))  # no writer: open() for reading without O_NONBLOCK waits forever
    with pytest.raises(FileRefusedError) as info:
        read_small_file(str(fifo), 100, "token file")
    assert str(info.value) == "token file %r is a FIFO (named pipe); expected a regular file" % (
        str(fifo))
    assert isinstance(info.value, OSError)  # callers that handle unreadable files handle this


def test_the_bearer_token_reader_refuses_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(str(fifo))
    with pytest.raises(OSError, match="FIFO"):
        read_bearer_token(str(fifo))


@pytest.mark.parametrize("path,kind", [("/dev/zero", "a character device"),
                                       ("/dev/null", "a character device")])
def test_a_device_is_refused(path: str, kind: str) -> None:
    with pytest.raises(FileRefusedError, match="is %s; expected a regular file" % kind):
        read_small_file(path, 100, "--admin-token-file")


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileRefusedError, match="is a directory"):
        read_small_file(str(tmp_path), 100)


def test_a_file_over_the_cap_is_refused_and_one_at_the_cap_is_not(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 101)
    with pytest.raises(FileRefusedError, match=r"'%s' is over 100 bytes" % path):
        read_small_file(str(path), 100, "--config")
    path.write_bytes(b"x" * 100)
    assert len(read_small_file(str(path), 100)) == 100


def test_missing_and_unreadable_files_raise_the_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        read_small_file(str(tmp_path / "absent"), 100)
    assert info.value.filename == str(tmp_path / "absent")
    os.symlink("loop", str(tmp_path / "loop"))
    with pytest.raises(OSError) as loop:
        read_small_file(str(tmp_path / "loop"), 100)
    assert not isinstance(loop.value, FileRefusedError)


def test_text_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bin"
    path.write_bytes(b"ok\xff")
    with pytest.raises(FileRefusedError, match="is not UTF-8 text"):
        read_small_text(str(path), 100)
