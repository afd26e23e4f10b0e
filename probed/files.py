"""Reading small local files safely: regular files only, size-capped, never blocks on a FIFO or
a device.

Token files, `--config` and `--admin-token-file` are read with these. A plain open() of a FIFO
waits for a writer (forever, with the loop stopped behind it), and /dev/zero never ends; here the
file is opened non-blocking, checked with fstat on the open descriptor (no race with a swapped
path), and read up to a cap. Must never: read anything but a regular file, or more than asked.
"""

import os
import stat

_FILES_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
                (stat.S_ISSOCK, "a socket"))


class FileRefusedError(OSError):
    """A path that is not a regular file, or a file over its size cap; the message names both
    the path and why (an OSError, so callers that handle unreadable files handle these too)."""


def read_small_file(path: str, max_bytes: int, what: str = "file") -> bytes:
    """The content of the regular file at `path` (symlinks followed), at most `max_bytes`.

    Raises FileRefusedError for anything but a regular file or a file over `max_bytes`, and the
    OSError of open/read otherwise (missing, permission, symlink loop); `what` names the file in
    messages ("token file", "--config").
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILES_KINDS if test(mode)), "not a regular file")
            raise FileRefusedError("%s %r is %s; expected a regular file" % (what, path, kind))
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > max_bytes:
        raise FileRefusedError("%s %r is over %d bytes" % (what, path, max_bytes))
    return b"".join(chunks)


def read_small_text(path: str, max_bytes: int, what: str = "file") -> str:
    """read_small_file decoded as UTF-8; FileRefusedError when it is not UTF-8 text."""
    data = read_small_file(path, max_bytes, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileRefusedError("%s %r is not UTF-8 text (byte %d)" % (what, path, exc.start)
                               ) from None
