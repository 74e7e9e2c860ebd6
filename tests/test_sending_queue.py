"""SendingQueue on its own: a scripted ``send(body, timeout) -> Attempt`` stands in for the transport.

A real peer adds nothing here: what is under test is the queue's order, merging, waiting, backoff,
caps, drop handling and shutdown. The script answers each send from a list (then a default), can
hold a send until the test releases it, and records when each send started and ended and what it
carried.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import pytest

from otel_token_exporter.sending import DROPPED, KEPT, SENT, Request, SendingQueue
from otel_token_exporter.settings import QueueLimits
from otel_token_exporter.transports import Attempt

OK = Attempt("http", status=200)
UNAVAILABLE = Attempt("http", status=503)
TOO_LARGE = Attempt("http", status=413)  # DROP: the request itself is wrong


class Script:
    """A fake transport. ``answers``: what the next sends return (then ``default``); an answer may
    be a callable ``f(body) -> Attempt``. ``hold()``: the next send waits until ``release()``."""

    def __init__(self, answers=(), default=OK):
        self.answers = deque(answers)
        self.default = default
        self.sends: list[bytes] = []
        self.started: list[float] = []
        self.ended: list[float] = []
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self._gate: threading.Event | None = None
        self.in_flight = threading.Event()  # set while a send runs

    def hold(self) -> threading.Event:
        self._gate = threading.Event()
        return self._gate

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()

    def __call__(self, body: bytes, timeout: float) -> Attempt:
        with self.cond:
            self.sends.append(body)
            self.started.append(time.monotonic())
            answer = self.answers.popleft() if self.answers else self.default
            gate, self._gate = self._gate, None
            self.cond.notify_all()
        self.in_flight.set()
        try:
            if gate is not None:
                assert gate.wait(10), "the test never released a held send"
            return answer(body) if callable(answer) else answer
        finally:
            self.in_flight.clear()
            with self.cond:
                self.ended.append(time.monotonic())
                self.cond.notify_all()

    def wait_sends(self, n: int, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.sends) >= n, timeout)

    def wait_ended(self, n: int, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.ended) >= n, timeout)


@pytest.fixture
def queues():
    made = []
    yield made
    for q in made:
        q.close(1.0, drain=False)


@pytest.fixture
def make_queue(queues):
    def make(script, *, timeout=1.0, drops=None, **limits):
        q = SendingQueue(
            script,
            timeout=timeout,
            limits=QueueLimits(**limits),
            on_drop=(lambda n, why: drops.append((n, why))) if drops is not None else None,
            name="otel-token-sender[test]",
        )
        queues.append(q)
        return q

    return make


def req(tag: str, items: int = 1) -> Request:
    return Request(tag.encode(), items)


def submit_held_first(q, script, first: Request) -> threading.Event:
    """Submit ``first`` with its send held; return once that send is in flight."""
    gate = script.hold()
    q.submit(first, 0)
    assert script.wait_sends(1), "the sender never picked up the first request"
    return gate


# ------------------------------------------------------------------------------------------------


def test_requests_are_delivered_in_fifo_order_through_failures(make_queue):
    # 503 twice, then OK: what was kept is re-sent before anything queued after it
    script = Script([UNAVAILABLE, UNAVAILABLE])
    q = make_queue(script, backoff_base=0.02)
    tags = [f"<{i:03d}>" for i in range(60)]
    for i, tag in enumerate(tags):
        q.submit(req(tag), 0)
        if i % 7 == 0:
            time.sleep(0.003)  # let the sender take some alone, merge others
    assert q.flush(10)
    delivered = b"".join(script.sends[2:])  # the first two sends failed
    assert delivered == "".join(tags).encode(), "requests were reordered (or lost/duplicated)"
    # the failed sends carried the head of the queue, in order
    assert "".join(tags).encode().startswith(script.sends[0])


def test_requests_queued_while_one_is_in_flight_are_merged_into_one_send(make_queue):
    script = Script()
    q = make_queue(script)
    gate = submit_held_first(q, script, req("A"))
    behind = [req(t) for t in "BCDE"]
    for r in behind:
        assert q.submit(r, 0) == "queued"
    gate.set()
    assert q.flush(5)
    assert script.sends == [b"A", b"BCDE"], script.sends
    assert all(r.state == SENT for r in behind)


def test_probes_of_a_failing_endpoint_carry_the_head_alone_then_merging_resumes(make_queue):
    script = Script([UNAVAILABLE, UNAVAILABLE, UNAVAILABLE])
    q = make_queue(script, backoff_base=0.02)
    gate = submit_held_first(q, script, req("A"))
    for t in "BCDE":
        q.submit(req(t), 0)
    gate.set()  # A fails; so do the next two probes; the fourth takes it
    assert q.flush(5)
    assert script.sends == [b"A", b"A", b"A", b"A", b"BCDE"], script.sends


def test_submit_never_waits_while_the_endpoint_is_failing(make_queue):
    script = Script(default=UNAVAILABLE)
    q = make_queue(script, backoff_base=5.0)  # a long backoff: nothing settles a new request
    first = req("first")
    assert q.submit(first, 2.0) == KEPT  # the caller waits until its own attempt failed
    assert q.failing
    started = time.monotonic()
    state = q.submit(req("next"), 2.0)
    took = time.monotonic() - started
    assert state == "queued"
    assert took < 0.05, f"submit waited {took:.3f}s while the endpoint was failing"


def test_submit_never_waits_behind_an_overdue_request(make_queue):
    script = Script()
    q = make_queue(script)
    gate = submit_held_first(q, script, req("slow"))
    try:
        started = time.monotonic()
        assert q.submit(req("b"), 0.3) == "queued"  # waits its 0.3 s: the send is not overdue yet
        waited = time.monotonic() - started
        assert 0.25 <= waited < 1.0, waited
        started = time.monotonic()
        assert q.submit(req("c"), 0.3) == "queued"  # in flight for > 0.3 s now: overdue
        took = time.monotonic() - started
        assert took < 0.05, f"submit waited {took:.3f}s behind an overdue send"
    finally:
        gate.set()
    assert q.flush(5)


def test_the_first_probe_after_a_failure_comes_no_sooner_than_half_the_base(make_queue):
    base = 0.2
    script = Script([UNAVAILABLE] * 4)
    q = make_queue(script, backoff_base=base)
    q.submit(req("x"), 0)
    assert script.wait_sends(5, timeout=10)
    gaps = [script.started[i + 1] - script.ended[i] for i in range(4)]
    print(f"\nprobe gaps after 1..4 failures (base {base}s): " + ", ".join(f"{g:.3f}s" for g in gaps))
    # n-th failure: between half and all of base * 2**(n-1) (a little slack for the scheduler)
    for n, gap in enumerate(gaps, start=1):
        bound = base * 2 ** (n - 1)
        assert gap >= bound / 2 - 0.005, f"probe {n} came {gap:.3f}s after the failure (< {bound / 2}s)"
        assert gap <= bound + 0.3, f"probe {n} came {gap:.3f}s after the failure (> {bound}s)"


@pytest.mark.parametrize("answer", [
    Attempt("http", status=503, retry_after=3.0),
    Attempt("grpc", status="UNAVAILABLE", retry_after=3.0),
    Attempt("grpc", status="RESOURCE_EXHAUSTED", retry_after=3.0),  # KEEP only with RetryInfo
], ids=["http-503", "grpc-unavailable", "grpc-resource-exhausted"])
def test_a_retry_after_longer_than_the_timeout_is_honoured(make_queue, answer):
    script = Script([answer])
    q = make_queue(script, timeout=1.0, backoff_base=0.05)
    first = req("a")
    assert q.submit(first, 1.0) == KEPT
    q.submit(req("b"), 0)  # new data during the wait must not trigger a probe
    assert script.wait_sends(2, timeout=6)
    gap = script.started[1] - script.ended[0]
    print(f"\nnext probe {gap:.2f}s after a 3 s Retry-After (timeout 1 s)")
    assert gap >= 3.0 - 0.01, f"probed {gap:.2f}s after the endpoint asked for 3 s"
    assert gap < 3.6
    assert q.flush(5)
    assert script.sends[1:] == [b"a", b"b"]  # the probe carries the head alone


def test_past_max_records_the_oldest_not_in_flight_is_dropped_and_the_newest_stays(make_queue):
    script = Script()
    drops: list = []
    q = make_queue(script, drops=drops, max_records=10)
    inflight = req("I", 4)
    gate = submit_held_first(q, script, inflight)
    a, b = req("a", 3), req("b", 3)
    q.submit(a, 0)
    q.submit(b, 0)  # 4 + 3 + 3 = 10: at the cap, nothing dropped
    assert drops == [] and q.stats().queued_records == 10
    c = req("c", 3)
    q.submit(c, 0)  # 13 > 10: the oldest not in flight ("a") goes, never the one in flight
    assert a.state == DROPPED and drops == [(3, "buffer_full")]
    assert inflight.state != DROPPED and b.state == "queued" and c.state == "queued"
    huge = req("H", 50)  # alone over the cap: everything older not in flight goes, it stays
    q.submit(huge, 0)
    assert b.state == DROPPED and c.state == DROPPED
    assert huge.state == "queued", "the newest request was dropped"
    assert q.stats().queued_records == 54 and q.stats().dropped_records == 9
    gate.set()
    assert q.flush(5)
    assert script.sends == [b"I", b"H"]
    assert inflight.state == SENT and huge.state == SENT


def test_a_merged_request_refused_with_drop_is_retried_alone_first(make_queue):
    """What the queue does today: the head of a refused merge is sent alone, and each request is
    decided on its own merits (the bad one dropped, the good ones delivered once)."""
    bad = b"<bad>"

    def answer(body):
        return TOO_LARGE if bad in body else OK

    script = Script(default=answer)
    drops: list = []
    q = make_queue(script, drops=drops)
    gate = submit_held_first(q, script, req("<head>"))
    for tag in ("<1>", "<bad>", "<3>"):
        q.submit(req(tag), 0)
    gate.set()
    assert q.flush(5)
    assert script.sends[:3] == [b"<head>", b"<1><bad><3>", b"<1>"], script.sends
    delivered = [s for s in script.sends if bad not in s]
    assert b"".join(delivered) == b"<head><1><3>", "a good request was lost or sent twice"
    assert drops == [(1, "undeliverable")]


def test_every_request_of_a_refused_merge_is_retried_one_at_a_time(make_queue):
    """A receiver that refuses any request over one record's size (413: the merge is too large):
    after the merge is refused, each of its requests must be sent alone, not merged again."""
    def answer(body):
        return TOO_LARGE if len(body) > 3 else OK

    script = Script(default=answer)
    drops: list = []
    q = make_queue(script, drops=drops)
    gate = submit_held_first(q, script, req("<0>"))
    for tag in ("<1>", "<2>", "<3>", "<4>"):
        q.submit(req(tag), 0)
    gate.set()
    assert q.flush(5)
    assert drops == [], f"records were dropped although each request alone is fine: {drops}"
    assert script.sends == [b"<0>", b"<1><2><3><4>", b"<1>", b"<2>", b"<3>", b"<4>"], script.sends


def test_close_drains_then_stops_its_thread(make_queue):
    def slow_ok(body):
        time.sleep(0.05)
        return OK

    script = Script(default=slow_ok)
    q = make_queue(script)
    requests = [req(f"<{i}>", 2) for i in range(5)]
    for r in requests:
        q.submit(r, 0)
    thread = q._thread
    assert thread is not None and thread.is_alive()
    closed = q.close(5)
    assert (closed.lost, closed.spooled) == (0, 0), closed
    assert all(r.state == SENT for r in requests)
    assert b"".join(script.sends) == b"<0><1><2><3><4>"
    thread.join(1)
    assert not thread.is_alive(), "the sender thread outlived close()"
    assert q.submit(req("late"), 1.0) == DROPPED  # closed: refused at once


def test_close_reports_what_it_could_not_deliver(make_queue):
    script = Script(default=UNAVAILABLE)
    drops: list = []
    q = make_queue(script, drops=drops, backoff_base=0.05)
    kept = [req("a", 3), req("b", 4)]
    for r in kept:
        q.submit(r, 0)
    assert script.wait_sends(2)
    thread = q._thread
    started = time.monotonic()
    closed = q.close(0.5)
    took = time.monotonic() - started
    assert (closed.lost, closed.spooled) == (7, 0), closed  # no spool: lost, and said
    assert 0.4 <= took < 1.0, f"close(0.5) took {took:.2f}s"
    assert all(r.state == DROPPED for r in kept)
    assert (7, "shutdown") in drops
    thread.join(1)
    assert not thread.is_alive()


def test_close_does_not_wait_past_its_timeout_for_a_send_in_flight(make_queue):
    script = Script()
    q = make_queue(script)
    gate = submit_held_first(q, script, req("stuck", 5))
    try:
        started = time.monotonic()
        closed = q.close(0.5)
        took = time.monotonic() - started
        assert closed.lost == 5, closed
        assert took < 0.8, f"close(0.5) took {took:.2f}s with a send hanging"
    finally:
        gate.set()


def test_flush_returns_early_when_give_up_says_so(make_queue):
    script = Script(default=UNAVAILABLE)
    q = make_queue(script, backoff_base=0.05)
    q.submit(req("a"), 0)
    assert script.wait_ended(1)
    attempts_before = len(script.ended)
    started = time.monotonic()
    ok = q.flush(10, give_up=lambda: len(script.ended) > attempts_before)
    took = time.monotonic() - started
    assert ok is False
    assert took < 1.0, f"flush(10) with give_up took {took:.2f}s"
    assert len(script.ended) > attempts_before  # flush tried before giving up


def test_flush_tries_at_once_and_returns_true_when_delivered(make_queue):
    script = Script([UNAVAILABLE])
    q = make_queue(script, backoff_base=20.0)  # the next probe would come 10-20 s later
    assert q.submit(req("a"), 1.0) == KEPT
    started = time.monotonic()
    assert q.flush(5) is True
    assert time.monotonic() - started < 1.0, "flush waited for the backoff instead of trying now"
    assert script.sends == [b"a", b"a"]
    assert q.stats().redelivered_requests == 1
