"""Settings module for the plain RQ CLI: ``rq worker -c config.rq ...``.

RQ reads upper-case names from this module; the Redis URL comes from ``LVM_REDIS_URL``
so that `rq worker`, `lvmq` and the producers all talk to the same Redis: REDIS_URL for
redis-py's own URLs, RQ's SENTINEL dict for a ``redis+sentinel://`` URL.
"""

from config.connections import parse_sentinel
from config.settings import load_settings

_url = load_settings().redis_url
_sentinel = parse_sentinel(_url)
if _sentinel is None:
    REDIS_URL = _url
else:  # RQ's own Sentinel settings (rq.cli.helpers.get_redis_from_config)
    SENTINEL = _sentinel.rq_settings()
