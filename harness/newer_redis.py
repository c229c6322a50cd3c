"""A Redis 7.2+ server for the tests that need one (WAITAOF), where the host's is older.

Debian 12's redis-server is 7.0; WAITAOF came in 7.2. Debian's own bookworm-backports ships
Valkey 8.0 (the Linux Foundation's fork of Redis 7.2.4: it answers ``redis_version:7.2.4`` and
speaks the same protocol, WAITAOF and Sentinel included), built against the same libraries as
Debian's redis-server. ``python -m harness.newer_redis fetch`` downloads that one package from
Debian's archive, checks its SHA-256, and unpacks it into ``.cache/valkey/`` beside the project:
nothing is installed system-wide, no service starts, and nothing runs as root. ``make test`` and
``.ci/run`` call it; offline, the tests that need a newer server skip and say how to get one.

``LVM_TEST_REDIS_SERVER`` names any other 7.2+ ``redis-server`` binary to use instead.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "valkey"
# The server is one binary under several names: Debian's package ships it as valkey-check-rdb
# (the server's own mode is chosen by the name it is started as), so we link valkey-server to it.
SERVER = CACHE / "usr" / "bin" / "valkey-server"
PACKAGE = "valkey-tools_8.0.1+dfsg1-1~bpo12+1_amd64.deb"
URL = f"https://deb.debian.org/debian/pool/main/v/valkey/{PACKAGE}"
SHA256 = "d2c2ea67642fa9571a07138b80ae52ebe566311c952aef25a39c1d5050697853"
WANTED = (7, 2)


def version(binary: str) -> tuple[int, ...]:
    """The Redis version a server binary speaks: Valkey 8 reports 8.0 and implements 7.2's commands."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"v=(\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def binary() -> str | None:
    """A redis-server of 7.2 or newer: $LVM_TEST_REDIS_SERVER, the host's own, or the fetched one."""
    for candidate in (os.environ.get("LVM_TEST_REDIS_SERVER"), shutil.which("redis-server"), str(SERVER)):
        if candidate and Path(candidate).exists() and version(candidate) >= WANTED:
            return candidate
    return None


WHY_MISSING = (
    "needs a redis-server 7.2+ (WAITAOF); this host's is older and none was fetched: run "
    "`python -m harness.newer_redis fetch` (make test does; it needs deb.debian.org) or set LVM_TEST_REDIS_SERVER"
)


def _unpack_deb(data: bytes, into: Path) -> None:
    """A .deb is an ar archive holding data.tar.xz: read it with the standard library alone."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not a Debian package (no ar header)")
    pos = 8
    while pos < len(data):
        name = data[pos : pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48 : pos + 58].decode().strip())
        body = data[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                tar.extractall(into, filter="data")
            return
        pos += 60 + size + (size % 2)
    raise ValueError("no data.tar member in the package")


def fetch() -> str:
    if binary() is not None:
        return f"a redis-server 7.2+ is here already: {binary()}"
    if sys.platform != "linux" or platform.machine() != "x86_64":
        here = f"{sys.platform} {platform.machine()}"
        return f"no 7.2+ server fetched: the package is Debian's amd64 build (this is {here})"
    try:
        with urllib.request.urlopen(URL, timeout=60) as reply:
            data = reply.read()
    except OSError as exc:
        return f"no 7.2+ server fetched ({exc}): the WAITAOF tests will skip"
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{PACKAGE}: SHA-256 {digest}, expected {SHA256}; not unpacked")
    shutil.rmtree(CACHE, ignore_errors=True)
    _unpack_deb(data, CACHE)
    SERVER.symlink_to("valkey-check-rdb")
    if version(str(SERVER)) < WANTED:
        raise SystemExit(f"{SERVER} does not run here (missing libraries? ldd {SERVER})")
    return f"fetched Valkey 8.0.1 (Redis 7.2 protocol) into {SERVER}"


def main(argv: list[str]) -> int:
    if argv[:1] != ["fetch"]:
        print("usage: python -m harness.newer_redis fetch   (unpack a 7.2+ server into .cache/valkey)")
        return 2
    print(fetch())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
