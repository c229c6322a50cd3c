"""A job that does nothing: RQ's own round trip, the floor under queue overhead."""


def noop(request: dict) -> dict:
    return {"ok": True}
