"""The lifecycle's Lua scripts, loaded one way.

Each script is a ``.lua`` file in ``wire/scripts/`` with its KEYS and ARGV at the top. ``source``
gives what Redis runs: the constants the Python side owns, declared as Lua locals, then
``prelude.lua`` (Redis's clock, the job-id rule, the event stream), then the script.
``rate_limited`` runs a script behind the caller's token bucket in the same step (the gateway's
submit). ``submit.lua`` alone needs no prelude, so redis-cli and other languages can EVAL the file
as it is (producer/redis_cli_chat.sh does).
"""

from __future__ import annotations

import functools
from pathlib import Path

from wire import keys

SCRIPTS = Path(__file__).with_name("scripts")
NAMES = (
    "submit",
    "claim",
    "renew",
    "finish",
    "release",
    "recover",
    "beat",
    "cancel",
    "token",
    "slots",
    "pause",
    "drain",
)
GUARDS = ("rate_limit", "admit", "audit")

# Python-owned values a script needs, as Lua locals (an ARGV slot each would shift every index).
CONSTANTS: dict[str, int | str] = {
    "EVENTS_MAXLEN": keys.EVENTS_MAXLEN,
    "WIP_GRACE_S": keys.WIP_GRACE_S,
    "JOB_ID_MAX": keys.JOB_ID_MAX,
    "JOB_ID_CLASS": keys.JOB_ID_LUA_CLASS,
    "TENANT_MAX": keys.TENANT_MAX,
    "AUDIT_MAXLEN": keys.AUDIT_MAXLEN,
    "STATS_TTL_S": keys.STATS_TTL_S,
    "LIGHT_LIVE_MS": keys.LIGHT_LIVE_MS,
}


def path(name: str) -> Path:
    return SCRIPTS / f"{name}.lua"


def _body(name: str) -> str:
    """A script file without its shebang line (submit.lua carries one to run raw)."""
    text = path(name).read_text()
    return text.split("\n", 1)[1] if text.startswith("#!") else text


# Shebang flags beyond the default. renew and beat may run at maxmemory: renew only moves the
# scores of leases that exist (and one liveness entry), beat overwrites a value of the same size;
# a worker that could not renew through a few seconds of OOM would see its running batches
# recovered by peers and computed twice, and one that could not beat would read as dead.
FLAGS = {"renew": "allow-oom", "beat": "allow-oom"}


def _head(name: str = "") -> str:
    """What comes before every script but raw submit.lua: the shebang (Redis 7 then refuses the
    whole script up front at maxmemory, never stops it halfway), the constants as Lua locals,
    then the prelude."""

    def literal(value: int | str) -> str:
        return str(value) if isinstance(value, int) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    declarations = "".join(f"local {name} = {literal(value)}\n" for name, value in CONSTANTS.items())
    shebang = f"#!lua flags={FLAGS[name]}\n" if name in FLAGS else "#!lua\n"
    return shebang + declarations + _body("prelude")


@functools.cache
def source(name: str) -> str:
    """The script ``name`` as Redis runs it."""
    return _head(name) + _body(name)


@functools.cache
def guarded(name: str, *guards: str) -> str:
    """``name`` behind ``guards`` (outermost first), as one script: each guard's file runs the
    next one in as ``run(KEYS, ARGV)``, taking its own ARGV from the front and its own KEYS from
    the back. ``guarded("submit", "rate_limit", "admit")`` is the gateway's submit: the caller's
    token bucket, then the queue's admission bound and deadline, then submit.lua, in one step."""
    inner = "local run = (function()\nlocal function run(KEYS, ARGV)\n" + _body(name) + "\nend\nreturn run\nend)()\n"
    for guard in reversed(guards[1:]):
        inner += "run = (function(run)\nreturn function(KEYS, ARGV)\n" + _body(guard) + "\nend\nend)(run)\n"
    return _head() + inner + _body(guards[0])


def rate_limited(name: str) -> str:
    """``name`` behind the token bucket of ``rate_limit.lua``: KEYS gain the bucket last, ARGV gain
    rate and burst first; the reply is ``{1, reply}`` or ``{0, ms until a token}``."""
    return guarded(name, "rate_limit")


def audited(name: str, *guards: str) -> str:
    """``name`` (behind ``guards``) as an operator's action: the audit stream's record is written in
    the same step (audit.lua: KEYS gain the stream last, ARGV gain operator, action, target and
    detail first)."""
    return guarded(name, "audit", *guards)
