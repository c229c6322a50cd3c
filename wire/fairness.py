"""Fair share's arithmetic, shared by the producer (a job's cost) and the worker (the quantum).

A claim takes jobs by deficit round robin over the tenants with queued jobs (wire/scripts/
claim.lua): each turn a tenant's deficit grows by QUANTUM x its weight, and each job it takes
spends the job's cost. Cost estimates the work a request asks for, in "one sentence decoded at
the default settings" units, from the fields that drive it: each response sentence is one
predict and one decode, and an iterative decoder (vec2text) repeats its decode per step. An
estimate, not a measurement: it only has to keep a tenant of 8-sentence, 200-step requests from
taking eight times its share of the worker's time for the price of one.
"""

from __future__ import annotations

QUANTUM = 4  # cost per turn and unit of weight: 4 default requests; an 8-sentence one waits 2 turns
STEPS_PER_UNIT = 20  # decode steps that cost as much as one more decode
MAX_COST = 1000  # admit.lua and claim.lua refuse or clamp beyond


def cost(decode_steps: int, response_sentences: int) -> int:
    """The cost of one request: sentences x (1 + decode steps / STEPS_PER_UNIT), at least 1."""
    per_sentence = 1 + decode_steps // STEPS_PER_UNIT
    return max(1, min(MAX_COST, response_sentences * per_sentence))


EMBED_TEXTS_PER_UNIT = 16  # texts an embed job encodes for the cost of one chat sentence (encode only)


def embed_cost(texts: int) -> int:
    """The cost of one embed job: 1 per EMBED_TEXTS_PER_UNIT texts, at least 1."""
    return max(1, min(MAX_COST, -(-texts // EMBED_TEXTS_PER_UNIT)))
