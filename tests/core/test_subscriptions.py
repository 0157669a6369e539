"""The subscription plan: shards, batches, pacing, replies and retries, at explicit times."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricectl.core.binance import subscribe_message
from pricectl.core.subscriptions import SEND_SLACK_S, Request, SubscriptionPlan


def names(n: int, start: int = 0) -> list[str]:
    return [f"s{i:04d}usdt@ticker" for i in range(start, start + n)]


def drain(plan: SubscriptionPlan, conn: int, now: float) -> list[Request]:
    """Every request the plan hands out for ``conn`` at ``now``, each answered at once."""
    out: list[Request] = []
    while (r := plan.next_request(conn, now)) is not None:
        out.append(r)
        plan.reply(conn, r.id, None, now)
    return out


def test_streams_fill_shards_of_at_most_streams_per_connection() -> None:
    plan = SubscriptionPlan(streams_per_connection=200)
    streams = names(1500)
    assert plan.set_streams(streams) == (streams, [])
    assert plan.shards() == tuple(range(8))
    sizes = [len(plan.shard_streams(s)) for s in plan.shards()]
    assert sizes == [200] * 7 + [100]
    assert sorted(s for sh in plan.shards() for s in plan.shard_streams(sh)) == sorted(streams)


def test_a_stream_stays_on_its_shard_and_holes_are_filled_first() -> None:
    plan = SubscriptionPlan(streams_per_connection=2)
    plan.set_streams(["a", "b", "c"])
    assert [plan.shard_of(s) for s in "abc"] == [0, 0, 1]
    assert plan.set_streams(["b", "c", "d"]) == (["d"], ["a"])
    assert [plan.shard_of(s) for s in "bcd"] == [0, 1, 0]
    # A shard emptied is dropped; shard 0 always stays.
    plan.set_streams(["b", "d"])
    assert plan.shards() == (0,)
    plan.set_streams([])
    assert plan.shards() == (0,) and plan.shard_streams(0) == ()


def test_the_url_names_only_what_fits_and_the_rest_is_subscribed_in_batches() -> None:
    plan = SubscriptionPlan(
        streams_per_connection=1024, url_chars=200, streams_per_message=100, messages_per_second=5
    )
    streams = names(1024)
    plan.set_streams(streams)
    url = plan.url_streams(0)
    assert len("/".join(url)) <= 200 and url == streams[: len(url)] and len(url) == 11
    plan.opened(7, shard=0, url_streams=url, now=0.0)
    now, sent = 0.0, []
    while not plan.ready(7):
        sent += drain(plan, 7, now)
        now += 0.05
    assert all(r.method == "SUBSCRIBE" and len(r.streams) <= 100 for r in sent)
    assert len(sent) == 11 and plan.carried(7) == frozenset(streams)


def test_a_message_stays_under_message_bytes() -> None:
    plan = SubscriptionPlan(streams_per_connection=500, message_bytes=1000)
    plan.set_streams(names(500))
    plan.opened(1, shard=0, url_streams=[], now=0.0)
    r = plan.next_request(1, 0.0)
    assert r is not None
    text = subscribe_message(r.method, r.streams, r.id)
    assert len(text) <= 1000 and len(r.streams) > 30


def test_control_messages_leave_one_slot_per_second_for_a_pong() -> None:
    """At 4 messages/s: 3 control messages per window, and a pong still fits."""
    plan = SubscriptionPlan(streams_per_connection=1000, streams_per_message=10)
    plan.set_streams(names(1000))
    plan.opened(1, shard=0, url_streams=[], now=0.0)
    assert len(drain(plan, 1, 0.0)) == 3
    assert plan.pong(1, 0.1) is True
    assert plan.next_request(1, 0.5) is None
    due = plan.next_due(1, 0.5)
    assert due == pytest.approx(1.0 + SEND_SLACK_S)
    assert plan.next_request(1, due) is not None
    assert plan.stats(1, due)["messages_last_s"] == 2  # the pong and the new one


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=0.3), min_size=5, max_size=60))
def test_no_window_ever_holds_more_than_the_limit(steps: list[float]) -> None:
    """Whatever the timing of asks, and a pong owed whenever the server pinged (at most
    once a window, as exchanges ping every few seconds at most), any 1.25 s window holds
    at most 4 sends."""
    plan = SubscriptionPlan(streams_per_connection=1000, streams_per_message=5)
    plan.set_streams(names(1000))
    plan.opened(1, shard=0, url_streams=[], now=0.0)
    now, sends, last_pong = 0.0, [], -10.0
    for i, step in enumerate(steps):
        now += step
        if i % 3 == 1 and now >= last_pong + 1.0 + SEND_SLACK_S:
            assert plan.pong(1, now)
            sends.append(now)
            last_pong = now
        while (r := plan.next_request(1, now)) is not None:
            sends.append(now)
            plan.reply(1, r.id, None, now)
    for t in sends:
        assert sum(1 for u in sends if t <= u < t + 1.0 + SEND_SLACK_S) <= 4


def test_unsubscribe_goes_first_and_only_a_reply_makes_it_so() -> None:
    plan = SubscriptionPlan(streams_per_connection=10)
    plan.set_streams(["a", "b"])
    plan.opened(1, shard=0, url_streams=["a", "b"], now=0.0)
    assert plan.ready(1) and plan.next_request(1, 0.0) is None
    plan.set_streams(["b", "c"])
    first = plan.next_request(1, 0.0)
    second = plan.next_request(1, 0.0)
    assert first is not None and (first.method, first.streams) == ("UNSUBSCRIBE", ("a",))
    assert second is not None and (second.method, second.streams) == ("SUBSCRIBE", ("c",))
    assert plan.carried(1) == {"a", "b"} and not plan.ready(1)
    plan.reply(1, second.id, None, 0.1)
    plan.reply(1, first.id, None, 0.2)
    assert plan.carried(1) == {"b", "c"} and plan.ready(1)


def test_an_error_reply_is_retried_after_a_backoff_in_smaller_messages() -> None:
    plan = SubscriptionPlan(streams_per_connection=100, streams_per_message=8, retry_initial=1.0)
    plan.set_streams(names(8))
    plan.opened(1, shard=0, url_streams=[], now=0.0)
    r = plan.next_request(1, 0.0)
    assert r is not None and len(r.streams) == 8
    out = plan.reply(1, r.id, "code 2: Invalid request", 0.1)
    assert out is not None and not out.ok and out.retry_at == pytest.approx(1.1)
    assert plan.carried(1) == frozenset() and plan.stats(1, 0.1)["errors"] == 1
    assert plan.next_request(1, 0.5) is None and plan.next_due(1, 0.5) == pytest.approx(1.1)
    half = plan.next_request(1, 1.1)
    assert half is not None and len(half.streams) == 4
    # Failing again doubles the wait and halves the message again.
    out = plan.reply(1, half.id, "code 2: Invalid request", 1.2)
    assert out is not None and out.retry_at == pytest.approx(3.2)
    # The streams that failed most go first, two per message; then the others, four.
    got = []
    now = 3.2
    while not plan.ready(1):
        req = plan.next_request(1, now)
        if req is not None:
            got.append(req.streams)
            plan.reply(1, req.id, None, now)
        now += 0.1
    assert got == [r.streams[0:2], r.streams[2:4], r.streams[4:8]]


def test_a_missing_reply_times_out_and_is_retried() -> None:
    plan = SubscriptionPlan(streams_per_connection=10, reply_timeout=2.0, retry_initial=0.5)
    plan.set_streams(["a"])
    plan.opened(1, shard=0, url_streams=[], now=0.0)
    r = plan.next_request(1, 0.0)
    assert r is not None and plan.next_due(1, 0.0) == pytest.approx(2.0)
    assert plan.expire(1.9) == []
    (out,) = plan.expire(2.0)
    assert not out.ok and out.error == "no reply within 2s" and out.request == r
    # The late reply is ignored; the retry is what counts.
    assert plan.reply(1, r.id, None, 2.1) is None and plan.carried(1) == frozenset()
    again = plan.next_request(1, 2.5)
    assert again is not None and again.streams == ("a",) and again.id != r.id
    plan.reply(1, again.id, None, 2.6)
    assert plan.ready(1)


def test_make_before_break_a_second_connection_of_the_shard_is_planned_alone() -> None:
    plan = SubscriptionPlan(streams_per_connection=10, url_chars=0)
    plan.set_streams(["a", "b"])
    plan.opened(1, shard=0, url_streams=["a", "b"], now=0.0)
    plan.opened(2, shard=0, url_streams=plan.url_streams(0), now=1.0)
    assert plan.url_streams(0) == [] and plan.missing(2) == 2
    assert [r.streams for r in drain(plan, 2, 1.0)] == [("a", "b")]
    assert plan.ready(2) and plan.ready(1)
    plan.closed(1)
    assert plan.carried(1) == frozenset() and plan.carried(2) == {"a", "b"}


def test_never_more_than_1024_streams_carried_or_asked_for() -> None:
    """Leftovers awaiting UNSUBSCRIBE count against the cap before new ones go out."""
    plan = SubscriptionPlan(
        streams_per_connection=1024, streams_per_message=1024, message_bytes=10**6
    )
    old, new = names(1024), names(10, start=5000)
    plan.set_streams(old)
    plan.opened(1, shard=0, url_streams=old, now=0.0)
    plan.set_streams(old[10:] + new)
    unsub = plan.next_request(1, 0.0)
    assert unsub is not None and unsub.method == "UNSUBSCRIBE"
    assert plan.next_request(1, 0.0) is None  # no room until the UNSUBSCRIBE is answered
    plan.reply(1, unsub.id, None, 0.1)
    sub = plan.next_request(1, 0.1)
    assert sub is not None and sub.streams == tuple(new)


def test_bad_settings_are_refused_with_the_name() -> None:
    with pytest.raises(ValueError, match="streams_per_connection must be 1 to 1024"):
        SubscriptionPlan(streams_per_connection=1025)
    with pytest.raises(ValueError, match="messages_per_second"):
        SubscriptionPlan(messages_per_second=0.0)


def test_below_one_message_per_second_one_goes_out_per_period() -> None:
    plan = SubscriptionPlan(messages_per_second=0.5, streams_per_message=1)
    plan.set_streams(names(5))
    plan.opened(1, shard=0, url_streams=[], now=0.0)
    assert len(drain(plan, 1, 0.0)) == 1
    assert plan.next_due(1, 0.0) == pytest.approx(2.0 + SEND_SLACK_S)


def test_setting_the_same_streams_again_changes_nothing_and_ids_are_not_reused() -> None:
    plan = SubscriptionPlan(streams_per_connection=1)
    plan.set_streams(["a", "b"])
    assert plan.shards() == (0, 1)
    assert plan.set_streams(["a", "b"]) == ([], [])
    plan.set_streams(["a"])
    assert plan.shards() == (0,)
    plan.set_streams(["a", "c"])
    assert plan.shards() == (0, 2) and plan.shard_of("c") == 2
