"""Tools the tests need that this host's Debian 12 lacks, or has too old, taken from Debian's own
archive: each one package, checked against its SHA-256 and unpacked into ``.cache/<tool>/`` beside
the project. Nothing is installed system-wide, no service starts, nothing runs as root.
``python -m harness.debian_tools fetch`` gets them (``make test``, ``make chaos`` and so ``.ci/run``
call it); offline, the tests that need one skip and say how to get it.

- **A Redis 7.2+ server** (WAITAOF). Debian 12's redis-server is 7.0. bookworm-backports ships
  Valkey 8.0, the Linux Foundation's fork of Redis 7.2.4: it answers ``redis_version:7.2.4``,
  speaks the same protocol (WAITAOF and Sentinel included) and links the same libraries as
  Debian's redis-server. ``LVM_TEST_REDIS_SERVER`` names any other 7.2+ binary instead.
- **docker compose** (``config`` validates the compose file and each profile; no engine needed).
  Debian 13's ``docker-compose`` package is Compose v2, one static Go binary.
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
ARCHIVE = "https://deb.debian.org/debian/pool/main"


@dataclass(frozen=True)
class Tool:
    name: str
    package: str  # the path of the .deb under the archive's pool
    sha256: str
    binary: str  # the program, relative to the unpacked package
    link: tuple[str, str] | None = None  # (name, target): a name to start it by, beside its binary

    @property
    def path(self) -> Path:
        return CACHE / self.name / (self.link[0] if self.link else self.binary)


# Valkey's server is one binary under several names; Debian ships it as valkey-check-rdb (the mode
# is chosen by the name it is started as), so valkey-server is linked to it.
VALKEY = Tool("valkey", "v/valkey/valkey-tools_8.0.1+dfsg1-1~bpo12+1_amd64.deb",
              "d2c2ea67642fa9571a07138b80ae52ebe566311c952aef25a39c1d5050697853", "usr/bin/valkey-check-rdb",
              ("usr/bin/valkey-server", "valkey-check-rdb"))  # fmt: skip
COMPOSE = Tool("compose", "d/docker-compose/docker-compose_2.26.1-4_amd64.deb",
               "47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea",
               "usr/libexec/docker/cli-plugins/docker-compose")  # fmt: skip
TOOLS = (VALKEY, COMPOSE)
WANTED = (7, 2)


def version(binary: str) -> tuple[int, ...]:
    """The Redis version a server binary speaks: Valkey 8 reports 8.0 and implements 7.2's commands."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"v=(\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def redis_72() -> str | None:
    """A redis-server of 7.2 or newer: $LVM_TEST_REDIS_SERVER, the host's own, or the fetched one."""
    for candidate in (os.environ.get("LVM_TEST_REDIS_SERVER"), shutil.which("redis-server"), str(VALKEY.path)):
        if candidate and Path(candidate).exists() and version(candidate) >= WANTED:
            return candidate
    return None


def compose() -> list[str] | None:
    """The command that runs Compose v2: the host's ``docker compose`` plugin, or the fetched one."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return [str(COMPOSE.path)] if COMPOSE.path.exists() else None


WHY_NO_REDIS_72 = (
    "needs a redis-server 7.2+ (WAITAOF); this host's is older and none was fetched: run "
    "`python -m harness.debian_tools fetch` (make test does; it needs deb.debian.org) or set LVM_TEST_REDIS_SERVER"
)
WHY_NO_COMPOSE = (
    "needs docker compose v2; this host has no plugin and none was fetched: run "
    "`python -m harness.debian_tools fetch` (make test does; it needs deb.debian.org)"
)


def _data_tar(data: bytes) -> tarfile.TarFile:
    """A .deb is an ar archive holding data.tar.*: read it with the standard library alone."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not a Debian package (no ar header)")
    pos = 8
    while pos < len(data):
        name = data[pos : pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48 : pos + 58].decode().strip())
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(data[pos + 60 : pos + 60 + size]))
        pos += 60 + size + (size % 2)
    raise ValueError("no data.tar member in the package")


def _unpack_deb(data: bytes, into: Path) -> None:
    with _data_tar(data) as tar:
        tar.extractall(into, filter="data")


def download(package: str, sha256: str) -> bytes:
    """A package from the archive (``package``: its path under the pool), checked against its
    SHA-256. Raises OSError when the archive cannot be reached and ValueError when the package
    is not the one pinned."""
    url = f"{ARCHIVE}/{package}"
    with urllib.request.urlopen(url, timeout=120) as reply:
        data = reply.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{url}: SHA-256 {digest}, expected {sha256}")
    return data


def package_file(package: str, sha256: str, member: str) -> bytes:
    """One file of a pinned Debian package (``download``), read in memory: nothing is written
    or installed."""
    data = download(package, sha256)
    with _data_tar(data) as tar:
        found = tar.extractfile(member)  # as the archive names it, e.g. ./usr/share/doc/...
        if found is None:
            raise ValueError(f"{package}: {member} is not a file")
        return found.read()


def fetch(tool: Tool) -> str:
    if tool.path.exists():
        return f"{tool.name}: here already ({tool.path})"
    if sys.platform != "linux" or platform.machine() != "x86_64":
        here = f"{sys.platform} {platform.machine()}"
        return f"{tool.name}: not fetched: the package is Debian's amd64 build (this is {here})"
    try:
        data = download(tool.package, tool.sha256)
    except OSError as exc:
        return f"{tool.name}: not fetched ({exc}): the tests that need it will skip"
    except ValueError as exc:
        raise SystemExit(f"{exc}; not unpacked") from None
    folder = CACHE / tool.name
    shutil.rmtree(folder, ignore_errors=True)
    _unpack_deb(data, folder)
    if tool.link:
        (folder / tool.link[0]).symlink_to(tool.link[1])
    return f"{tool.name}: fetched {tool.package.rsplit('/', 1)[1]} into {tool.path}"


def main(argv: list[str]) -> int:
    if argv[:1] != ["fetch"]:
        print("usage: python -m harness.debian_tools fetch   (a Redis 7.2+ server and docker compose, into .cache/)")
        return 2
    server, compose_command = redis_72(), compose()
    if server is not None and Path(server) != VALKEY.path:
        print(f"valkey: not needed, this host's redis-server is 7.2+ ({server})")
    else:
        print(fetch(VALKEY))
    print(fetch(COMPOSE) if compose_command in (None, [str(COMPOSE.path)]) else "compose: the host has one")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
