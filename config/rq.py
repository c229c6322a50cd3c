"""Settings module for the plain RQ CLI: ``rq worker -c config.rq ...``.

RQ reads upper-case names from this module; the Redis URL comes from ``LVM_REDIS_URL``
so that `rq worker`, `lvmq` and the producers all talk to the same Redis.
"""

from config.settings import load_settings

REDIS_URL = load_settings().redis_url
