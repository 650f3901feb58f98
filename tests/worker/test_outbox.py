"""The outbox: token deltas merged per request, journals re-sent after a reconnect, pruned after a
lease."""

from __future__ import annotations

from lamps.v1 import scheduler_pb2 as pb
from lamps.worker.outbox import Outbox


def tokens(request_id: str, start: int, *ids: int) -> pb.RequestUpdate:
    update = pb.RequestUpdate(request_id=request_id)
    update.tokens.token_ids.extend(ids)
    update.tokens.text = "".join(f" t{i}" for i in ids)
    update.tokens.start_index = start
    return update


def completed(request_id: str) -> pb.RequestUpdate:
    update = pb.RequestUpdate(request_id=request_id)
    update.completed.completion_tokens = 3
    return update


def test_contiguous_deltas_of_a_request_merge_and_others_keep_their_place() -> None:
    outbox = Outbox()
    outbox.open("a")
    outbox.open("b")
    assert not outbox.record(tokens("a", 0, 1, 2), now=0.0)
    assert not outbox.record(tokens("b", 0, 7), now=0.0)
    outbox.record(tokens("a", 2, 3), now=0.0)
    outbox.record(tokens("a", 9, 4), now=0.0)  # not contiguous: kept apart
    sent = outbox.take()
    assert [(u.request_id, list(u.tokens.token_ids)) for u in sent] == [
        ("a", [1, 2, 3]),
        ("b", [7]),
        ("a", [4]),
    ]
    assert sent[0].tokens.text == " t1 t2 t3"
    assert len(outbox) == 0


def test_ends_are_urgent_and_a_refusal_is_not_journaled() -> None:
    outbox = Outbox()
    outbox.open("a")
    assert outbox.record(completed("a"), now=0.0)
    refusal = pb.RequestUpdate(request_id="ghost")
    refusal.refused.instruction = "resume"
    assert outbox.queue(refusal)
    outbox.take()
    outbox.resend(now=1.0)
    assert [u.request_id for u in outbox.take()] == ["a"]


def test_a_reconnect_resends_every_journal_instead_of_the_pending_updates() -> None:
    outbox = Outbox()
    outbox.open("a")
    outbox.record(tokens("a", 0, 1, 2), now=0.0)
    outbox.take()  # written to a stream that then broke
    outbox.record(tokens("a", 2, 3), now=0.0)
    outbox.resend(now=1.0)
    (update,) = outbox.take()
    assert (update.tokens.start_index, list(update.tokens.token_ids)) == (0, [1, 2, 3])


def test_a_failed_write_puts_its_updates_back_first() -> None:
    outbox = Outbox()
    outbox.open("a")
    outbox.record(tokens("a", 0, 1), now=0.0)
    lost = outbox.take()
    outbox.record(completed("a"), now=0.0)
    outbox.put_back(lost)
    assert [u.WhichOneof("update") for u in outbox.take()] == ["tokens", "completed"]


def test_journals_of_ended_requests_go_after_a_lease_and_forget_drops_one() -> None:
    outbox = Outbox()
    for request_id in ("old", "held", "dropped"):
        outbox.open(request_id)
    outbox.record(completed("old"), now=0.0)
    outbox.record(tokens("held", 0, 1), now=0.0)
    outbox.record(tokens("dropped", 0, 1), now=0.0)
    outbox.forget("dropped")
    # What the engine had queued before it let go of a forgotten request brings nothing back.
    assert not outbox.record(tokens("dropped", 1, 2), now=0.0)
    outbox.prune(now=31.0, lease_s=30.0)
    assert outbox.retained == 1
    outbox.resend(now=31.0)
    assert [u.request_id for u in outbox.take()] == ["held"]


def test_an_end_older_than_a_lease_is_still_resent_after_a_reconnect() -> None:
    # The scheduler died as the request ended here; its successor took over more than a lease
    # later. The worker's Register claimed the request, so the end must follow, or the new
    # leader keeps it RUNNING on this worker forever.
    outbox = Outbox()
    outbox.open("a")
    outbox.record(completed("a"), now=0.0)
    outbox.take()  # written to the stream that broke with the scheduler
    outbox.resend(now=45.0)
    assert [u.WhichOneof("update") for u in outbox.take()] == ["completed"]
    outbox.prune(now=70.0, lease_s=30.0)  # a lease from the resend, not from the end
    assert outbox.retained == 1
    outbox.prune(now=76.0, lease_s=30.0)
    assert outbox.retained == 0


def test_settled_once_every_request_let_go_has_its_end() -> None:
    outbox = Outbox()
    outbox.open("a")
    outbox.record(tokens("a", 0, 1), now=0.0)
    assert outbox.settled(held=["a"])
    assert not outbox.settled(held=[])  # let go, its end not seen yet
    outbox.record(completed("a"), now=0.0)
    assert outbox.settled(held=[])
