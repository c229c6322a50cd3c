"""Fair share in the claim script: tenants in weighted turns, batch behind interactive with its
starvation bound, per-tenant caps, and the queue list still holding every queued id (the depth
`rq info` and KEDA read). Against the private redis-server, no worker process."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from config import load_settings
from helpers import lifecycle
from producer import protocol
from producer.client import ChatClient
from producer.errors import RateLimited
from wire import keys

Q = "lvm-lstm"


@pytest.fixture
def client(redis_url):
    return ChatClient(redis_url, load_settings())


def submit(client, tenant, n, priority="interactive", weight=1, max_queued=0, **fields):
    share = protocol.Share(tenant, priority, weight, max_queued)
    return client.submit_many([{"messages": [f"{tenant} {i}."], **fields} for i in range(n)], share=share)


def claimed(redis, limit, batch_every=10):
    life = lifecycle(redis)
    life.batch_every = batch_every
    return [j.id for j in life.claim(Q, limit, life.next_token()).jobs]


def test_a_flooding_tenant_gets_its_turn_and_no_more(redis, client):
    a = submit(client, "a", 40)
    b = submit(client, "b", 4)
    assert redis.llen(keys.queue(Q)) == 44  # every queued job is in the list RQ, KEDA and stats read
    first = claimed(redis, 8)
    assert first == a[:4] + b[:4]  # a turn is QUANTUM (4) default requests; b's arrive behind 40 of a's
    assert redis.llen(keys.queue(Q)) == 36
    assert claimed(redis, 4) == a[4:8]
    assert redis.lrange(keys.fair_ring(Q), 0, -1) == [b"a"]  # b ran out of work and left the ring


def test_weights_share_a_busy_queue(redis, client):
    a = submit(client, "a", 30, weight=3)
    b = submit(client, "b", 30)
    taken = claimed(redis, 32)
    assert sum(i in a for i in taken) == 24 and sum(i in b for i in taken) == 8


def test_a_costly_request_spends_more_of_its_tenants_share(redis, client):
    dear = submit(client, "a", 5, response_sentences=8)  # cost 8: two turns' quantum each
    cheap = submit(client, "b", 20)
    taken = claimed(redis, 10)
    assert sum(i in dear for i in taken) == 1 and sum(i in cheap for i in taken) == 9


def test_batch_yields_to_interactive_within_the_tenant(redis, client):
    backlog = submit(client, "a", 30, priority="batch")
    urgent = submit(client, "a", 3)
    other = submit(client, "b", 2, priority="batch")
    # a's turn (4 default requests): its 3 interactive jobs, then batch; then b's turn
    assert claimed(redis, 5) == urgent + [backlog[0], other[0]]


def test_batch_keeps_a_share_under_endless_interactive_work(redis, client):
    batch = submit(client, "a", 5, priority="batch")
    interactive = submit(client, "a", 20)
    taken = claimed(redis, 12, batch_every=3)
    assert [i in batch for i in taken] == [False, False, False, True] * 3
    assert [i for i in taken if i in interactive] == interactive[:9]


def yielding_life(redis, jobs=2, window_s=30.0):
    from worker.lifecycle import Lifecycle

    life = Lifecycle(redis, "w1", 0.2, 1, 1_048_576, 10)
    life.set_yield(jobs, window_s)
    return life


def test_batch_work_comes_in_small_batches_while_interactive_work_is_served(redis, client):
    life = yielding_life(redis, jobs=2)
    backlog = submit(client, "a", 40, priority="batch")
    claim = life.claim(Q, 8, life.next_token())  # no interactive job yet: a whole batch of batch jobs
    assert [j.id for j in claim.jobs] == backlog[:8] and not claim.yielding and not claim.capped
    urgent = submit(client, "a", 1)
    claim = life.claim(Q, 8, life.next_token())  # the interactive job, and no batch job beside it
    assert [j.id for j in claim.jobs] == urgent
    assert claim.yielding and claim.capped and (claim.interactive_taken, claim.batch_taken) == (1, 0)
    claim = life.claim(Q, 8, life.next_token())  # the window is open: 2 batch jobs at a time
    assert [j.id for j in claim.jobs] == backlog[8:10] and claim.capped and claim.batch_taken == 2
    assert life.claim(Q, 8, life.next_token(), batch_left=0).jobs == []  # a batch filled to its cap takes none
    assert redis.llen(keys.queue(Q)) == 40 + 1 - 11  # what was passed over is still queued, in the list KEDA reads
    more = submit(client, "a", 2)
    assert [j.id for j in life.claim(Q, 8, life.next_token()).jobs] == more  # interactive ones ride together
    redis.hset(keys.fair_state(Q), "interactive_at", 0)  # the window lapsed: whole batches again
    claim = life.claim(Q, 8, life.next_token())
    assert [j.id for j in claim.jobs] == backlog[10:18] and not claim.yielding
    redis.hset(keys.fair_state(Q), "interactive_at", "garbage")  # a hostile value reads as "long ago"
    assert len(life.claim(Q, 8, life.next_token()).jobs) == 8


def test_a_capped_tenant_is_passed_over_for_another_tenants_interactive_work(redis, client):
    life = yielding_life(redis, jobs=2)
    submit(client, "z", 1)
    assert len(life.claim(Q, 1, life.next_token()).jobs) == 1  # the queue served an interactive job: it yields
    backlog = submit(client, "a", 20, priority="batch")
    urgent = submit(client, "b", 2)
    claim = life.claim(Q, 8, life.next_token())
    assert [j.id for j in claim.jobs] == backlog[:2] + urgent and claim.capped
    # a's turn ended at the cap with its deficit kept: the next claim starts with a again
    assert [j.id for j in life.claim(Q, 8, life.next_token()).jobs] == backlog[2:4]
    urgent = submit(client, "b", 1)  # b is behind a in the ring now: a's turn (up to the cap), then b's
    assert [j.id for j in life.claim(Q, 8, life.next_token()).jobs] == backlog[4:6] + urgent


def test_the_yield_cap_holds_past_the_scripts_pass_bound(redis, redis_url):
    """Over a thousand tenants, each with a batch job: the claim's passes run out while it passes them
    over, and it stops as capped instead of taking the queue's head past the cap."""
    client = ChatClient(redis_url, load_settings(max_queued=0))  # past the admission floor: no worker here
    life = yielding_life(redis, jobs=2)
    submit(client, "z", 1)
    assert len(life.claim(Q, 1, life.next_token()).jobs) == 1
    for i in range(1100):
        submit(client, f"t{i}", 1, priority="batch")
    claim = life.claim(Q, 32, life.next_token())
    assert len(claim.jobs) == claim.batch_taken == 2 and claim.capped
    assert redis.llen(keys.queue(Q)) == 1098


def test_the_yield_cap_keeps_batchs_starvation_bound(redis, client):
    life = yielding_life(redis, jobs=1)
    life.batch_every = 2
    batch = submit(client, "a", 10, priority="batch")
    interactive = submit(client, "a", 20)
    taken = [j.id for j in life.claim(Q, 12, life.next_token()).jobs]
    assert taken == interactive[:2]  # batch is due, but not after interactive jobs in one claim: the claim stops
    taken = [j.id for j in life.claim(Q, 12, life.next_token()).jobs]
    assert taken == batch[:1] + interactive[2:4]  # the due batch job is the next claim's first pick


def test_batch_yielding_defaults_to_the_cpus_figure_and_stays_off_on_accelerators():
    from worker.loop import CPU_YIELD_JOBS, yield_jobs_for

    assert yield_jobs_for(-1, "cpu") == CPU_YIELD_JOBS == 8
    assert yield_jobs_for(-1, "cuda:0") == yield_jobs_for(-1, "mps") == 0  # not measured there: off
    assert yield_jobs_for(4, "cuda:0") == 4 and yield_jobs_for(0, "cpu") == 0  # a setting is taken as given


def test_a_batch_filled_by_several_claims_keeps_one_cap(redis, client):
    """The worker's refills (LVM_MAX_BATCH_WAIT_MS): the cap counts over the whole batch."""
    life = yielding_life(redis, jobs=3)
    redis.hset(keys.fair_state(Q), "interactive_at", int(redis.time()[0]) * 1000)  # interactive work just served
    first = submit(client, "a", 2, priority="batch")
    claim = life.claim(Q, 8, life.next_token())
    assert [j.id for j in claim.jobs] == first and claim.yielding and claim.batch_room(3) == 1
    more = submit(client, "a", 4, priority="batch")
    claim.extend(life.claim(Q, 6, claim.token, claim.batch_room(3)))
    assert [j.id for j in claim.jobs] == first + more[:1] and claim.batch_taken == 3 and claim.capped
    assert claim.batch_room(3) == 0
    urgent = submit(client, "a", 1)
    claim = life.claim(Q, 8, life.next_token())
    assert [j.id for j in claim.jobs] == urgent and claim.batch_room(3) == 0  # none beside an interactive job


def test_yielding_off_fills_batches_as_before(redis, client):
    life = yielding_life(redis, jobs=0)
    submit(client, "a", 1)
    backlog = submit(client, "a", 20, priority="batch")
    assert len(life.claim(Q, 1, life.next_token()).jobs) == 1
    claim = life.claim(Q, 8, life.next_token())
    assert [j.id for j in claim.jobs] == backlog[:8] and not claim.yielding and not claim.capped


def test_a_tenant_over_its_cap_is_refused_and_others_are_not(redis, client):
    submit(client, "a", 3, max_queued=3)
    with pytest.raises(RateLimited, match=r"tenant a holds 3 queued jobs for model lstm, its cap is 3") as info:
        submit(client, "a", 1, max_queued=3)
    assert info.value.retry_after_s >= 1
    assert len(submit(client, "b", 2, max_queued=3)) == 2
    assert redis.llen(keys.queue(Q)) == 5


def test_recovered_and_released_jobs_go_back_to_the_front_of_their_tenants_list(redis, client):
    a = submit(client, "a", 3)
    life = lifecycle(redis)
    claim = life.claim(Q, 2, life.next_token())
    assert [j.id for j in claim.jobs] == a[:2]
    assert life.release(Q, claim.token, a[:2]) == [a[1], a[0]]
    assert redis.lrange(keys.fair_list(Q, "a", "interactive"), 0, -1) == [i.encode() for i in a]
    assert redis.lrange(keys.queue(Q), 0, -1) == [i.encode() for i in a]
    assert claimed(redis, 3) == a


def test_cancel_takes_a_queued_job_out_of_its_tenants_list(redis, client):
    a = submit(client, "a", 2)
    assert client.cancel(a[0]) == "canceled"
    assert redis.lrange(keys.fair_list(Q, "a", "interactive"), 0, -1) == [a[1].encode()]
    assert claimed(redis, 5) == [a[1]]


def test_jobs_nobody_indexed_are_served_in_order(redis, client):
    """RQ's own enqueue and a raw submit.lua put ids in the queue list alone: claim takes them when
    they reach its head, between the tenants' turns."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    a = submit(client, "a", 6)
    raw = Queue(Q, connection=redis, serializer=JSONSerializer).enqueue("lvm.jobs.chat", {"messages": ["Hi."]}).id
    taken = claimed(redis, 10)
    assert sorted(taken) == sorted(a + [raw]) and taken.index(raw) == 6


def test_a_deleted_index_strands_nothing(redis, client):
    a = submit(client, "a", 3)
    redis.delete(keys.fair_ring(Q), keys.fair_state(Q))
    assert claimed(redis, 5) == a  # no tenant has work: the queue's head, in order
    assert claimed(redis, 5) == []


def test_admit_checks_what_any_redis_client_can_send(redis, client):
    [(script_keys, args)] = protocol.Submit(
        client.settings, [protocol.call(client.settings, redis, {"messages": ["Hi."]})], client.bounds, 60
    ).script_calls()
    for i, bad in ((2, "bad tenant!"), (3, "x"), (4, "0")):
        hostile = list(args)
        hostile[i] = bad
        with pytest.raises(ResponseError, match="LVMQ_BADARG"):
            client._submit(keys=script_keys, args=hostile)
    assert redis.llen(keys.queue(Q)) == 0


def lanes(redis, light_max=2):
    """An 'all' worker and a light-lane worker's scripts on the same queue."""
    main, light = lifecycle(redis, "main"), lifecycle(redis, "light")
    main.set_lane("all", light_max)
    light.set_lane("light", light_max)
    return main, light


def test_a_light_lane_takes_only_light_tenants_interactive_jobs(redis, client):
    main, light = lanes(redis)
    flood = submit(client, "a", 20)
    few = submit(client, "b", 2)
    later = submit(client, "b", 1, priority="batch")
    claim = light.claim(Q, 8, light.next_token())
    assert [j.id for j in claim.jobs] == few and claim.interactive_taken == 2  # not a's 20, not b's batch job
    assert redis.llen(keys.queue(Q)) == 21  # taken off the list KEDA reads in the same step
    claim = light.claim(Q, 8, light.next_token())
    assert claim.jobs == [] and claim.held  # only a flooding tenant's work left: poll, do not block
    assert [j.id for j in main.claim(Q, 8, main.next_token()).jobs] == flood[:4] + later + flood[4:7]
    redis.delete(keys.queue(Q))
    assert light.claim(Q, 8, light.next_token()).held is False  # an empty queue: block as before


def test_a_tenant_past_the_light_limit_is_served_by_fair_share(redis, client):
    main, light = lanes(redis, light_max=2)
    burst = submit(client, "b", 3)
    assert light.claim(Q, 8, light.next_token()).jobs == []
    # fair share takes it down to the limit; what is left is light again, the light lane's
    assert [j.id for j in main.claim(Q, 8, main.next_token()).jobs] == burst[:1]
    assert [j.id for j in light.claim(Q, 8, light.next_token()).jobs] == burst[1:]


def test_workers_leave_light_jobs_to_a_live_light_lane_and_take_them_when_it_is_gone(redis, client):
    main, light = lanes(redis)
    assert light.claim(Q, 8, light.next_token()).jobs == []  # a light lane claims: it is live
    flood = submit(client, "a", 7)
    few = submit(client, "b", 2)
    claim = main.claim(Q, 8, main.next_token())
    # b's are the light lane's; a's turns, down to the limit, then a is light too
    assert [j.id for j in claim.jobs] == flood[:5] and not claim.held
    claim = main.claim(Q, 8, main.next_token())
    assert claim.jobs == [] and claim.held and redis.llen(keys.queue(Q)) == 4
    backlog = submit(client, "b", 2, priority="batch")
    assert [j.id for j in main.claim(Q, 8, main.next_token()).jobs] == backlog  # its batch work is not
    redis.hset(keys.fair_state(Q), "light_at", int(redis.time()[0]) * 1000 - 6000)  # no claim for 6 s: gone
    assert sorted(j.id for j in main.claim(Q, 8, main.next_token()).jobs) == sorted(flood[5:] + few)
    for hostile in ("garbage", str(10**15)):  # a value any client can write reads as "no light lane"
        redis.hset(keys.fair_state(Q), "light_at", hostile)
        more = submit(client, "b", 1)
        assert [j.id for j in main.claim(Q, 8, main.next_token()).jobs] == more


def test_without_light_lanes_nothing_is_held(redis, client):
    main, _ = lanes(redis)
    submit(client, "a", 3)
    few = submit(client, "b", 1)
    taken = [j.id for j in main.claim(Q, 8, main.next_token()).jobs]
    assert len(taken) == 4 and few[0] in taken


def test_a_light_lane_reaches_tenants_past_its_scan(redis, redis_url):
    """More tenants than one light claim looks at: the cursor moves on, so each is reached."""
    client = ChatClient(redis_url, load_settings(max_queued=0))
    _, light = lanes(redis, light_max=1)
    ids = [submit(client, f"t{i}", 1)[0] for i in range(300)]
    taken = [j.id for _ in range(3) for j in light.claim(Q, 512, light.next_token()).jobs]
    assert sorted(taken) == sorted(ids)


def test_a_light_lanes_picks_do_not_make_the_others_yield(redis, client):
    main, light = lanes(redis)
    main.set_yield(2, 30.0)
    backlog = submit(client, "a", 20, priority="batch")
    few = submit(client, "b", 1)
    assert [j.id for j in light.claim(Q, 8, light.next_token()).jobs] == few
    claim = main.claim(Q, 8, main.next_token())  # b's interactive job never waits for a's batches
    assert [j.id for j in claim.jobs] == backlog[:8] and not claim.yielding


def test_the_others_hold_only_what_the_live_lane_serves(redis, client):
    """The limit comes from the lane's stamp: a lane of 2 beside a worker set to 4 strands nothing."""
    main, light = lifecycle(redis, "main"), lifecycle(redis, "light")
    main.set_lane("all", 4)
    light.set_lane("light", 2)
    assert light.claim(Q, 8, light.next_token()).jobs == []
    three = submit(client, "b", 3)
    assert light.claim(Q, 8, light.next_token()).jobs == []  # past the lane's limit
    assert [j.id for j in main.claim(Q, 8, main.next_token()).jobs] == three[:1]  # down to the lane's 2, not 4
    assert [j.id for j in light.claim(Q, 8, light.next_token()).jobs] == three[1:]
    idle = lifecycle(redis, "idle")
    idle.set_lane("light", 0)  # a lane that serves no one stamps nothing
    redis.hdel(keys.fair_state(Q), "light_at")
    assert idle.claim(Q, 8, idle.next_token()).jobs == [] and not redis.hexists(keys.fair_state(Q), "light_at")
    one = submit(client, "b", 1)
    assert [j.id for j in main.claim(Q, 8, main.next_token()).jobs] == one


def test_light_work_wakes_a_light_lane_blocked_beside_a_flood(redis, client):
    """A light lane with nothing light to take blocks on the queue's wake list (worker/loop.py):
    admit pushes a token for a light tenant's interactive job while the lane is live, and an 'all'
    worker's claim does when it leaves light jobs to the lane; one token at most."""
    main, light = lanes(redis, light_max=2)
    wake = keys.lane_wake(Q)
    flood = submit(client, "a", 6)
    assert redis.llen(wake) == 0  # no lane has claimed yet: none is live
    assert light.claim(Q, 8, light.next_token()).held  # live now, and nothing light: it blocks on the list
    flood += submit(client, "a", 1)
    backlog = submit(client, "b", 1, priority="batch")
    assert redis.llen(wake) == 0  # a flooding tenant's job, a batch job: not the lane's
    few = submit(client, "b", 2)
    assert redis.lrange(wake, 0, -1) == [b"1"] and 0 < redis.pttl(wake) <= keys.LIGHT_LIVE_MS
    assert [j.id for j in light.claim(Q, 8, light.next_token()).jobs] == few
    redis.delete(wake)
    assert [j.id for j in main.claim(Q, 4, main.next_token()).jobs] == flood[:4]  # a's turn; 3 left: not light
    assert redis.llen(wake) == 0
    claim = main.claim(Q, 8, main.next_token())
    assert [j.id for j in claim.jobs] == backlog + flood[4:5] and claim.held is False
    assert redis.llen(wake) == 1  # fair share took a down to the limit and left the rest: wake the lane
    assert [j.id for j in light.claim(Q, 8, light.next_token()).jobs] == flood[5:]


def test_a_wake_list_of_another_type_wakes_no_one_and_fails_nothing(redis, client):
    main, light = lanes(redis, light_max=2)
    redis.hset(keys.lane_wake(Q), "x", "1")  # any program can write Redis
    assert light.claim(Q, 8, light.next_token()).jobs == []
    few = submit(client, "b", 1)
    assert redis.type(keys.lane_wake(Q)) == b"hash"
    assert [j.id for j in light.claim(Q, 8, light.next_token()).jobs] == few
