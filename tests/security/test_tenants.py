"""Tenant isolation end to end: two tenants (and the shared token) on one real scheduler with a
sim worker. Each sees only its own requests; another's id is as unknown as one never issued."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import pytest

from lamps.client import Client, NotFound, ReplaySegment, RequestState, Result
from tests.security.conftest import ALICE_TOKEN, BOB_TOKEN
from tests.support.raw_client import RawClient
from tests.support.system import CLIENT_TOKEN, LocalSystem

# Long enough (at the sim worker's 20x) to still run when another tenant tries to cancel it.
SCRIPT = [
    ReplaySegment(
        output_tokens=60, tool="emulated.math", tool_duration_s=0.5, tool_output_tokens=5
    ),
    ReplaySegment(output_tokens=40),
]
UNKNOWN_ID = "0" * 32


@pytest.fixture
def tenants(system: LocalSystem) -> Iterator[tuple[Client, Client, Client]]:
    """Alice, Bob, and a client of the shared token."""
    with (
        Client(system.target, token=ALICE_TOKEN, timeout_s=30) as alice,
        Client(system.target, token=BOB_TOKEN, timeout_s=30) as bob,
        Client(system.target, token=CLIENT_TOKEN, timeout_s=30) as shared,
    ):
        yield alice, bob, shared


def refusal(call: Callable[[], object], request_id: str) -> str:
    """The NotFound message of `call` (a stream is read), with the id asked about blanked out."""
    with pytest.raises(NotFound) as caught:
        _consume(call())
    return caught.value.message.replace(request_id, "<id>")


def _consume(result: object) -> None:
    if isinstance(result, Iterator):
        list(result)


def test_a_tenant_cannot_read_watch_or_cancel_another_tenants_request(
    tenants: tuple[Client, Client, Client],
) -> None:
    alice, bob, shared = tenants
    request_id = alice.submit("alice's secret", replay=SCRIPT).request_id
    unknown = refusal(partial(bob.get_request, UNKNOWN_ID), UNKNOWN_ID)
    for other in (bob, shared):
        # Word for word what an id never issued gets: nothing says the request exists.
        assert refusal(partial(other.get_request, request_id), request_id) == unknown
        assert refusal(partial(other.watch, request_id), request_id) == unknown
        assert refusal(partial(other.cancel, request_id), request_id) == unknown
    result = Result.from_events(alice.watch(request_id))
    assert result.state is RequestState.FINISHED
    assert result.usage.completion_tokens == 100
    assert alice.get_request(request_id).state is RequestState.FINISHED


def test_idempotency_keys_are_each_tenants_own(tenants: tuple[Client, Client, Client]) -> None:
    alice, bob, _ = tenants
    first = alice.submit("same body", idempotency_key="order-1", replay=SCRIPT[1:])
    again = alice.submit("same body", idempotency_key="order-1", replay=SCRIPT[1:])
    assert (again.request_id, again.created) == (first.request_id, False)
    # Bob's "order-1" is a new request of his, not a way to Alice's id.
    theirs = bob.submit("same body", idempotency_key="order-1", replay=SCRIPT[1:])
    assert theirs.created
    assert theirs.request_id != first.request_id
    for own, request_id in ((alice, first.request_id), (bob, theirs.request_id)):
        assert Result.from_events(own.watch(request_id)).state is RequestState.FINISHED


async def test_cluster_status_shows_no_request_ids(
    system: LocalSystem, tenants: tuple[Client, Client, Client]
) -> None:
    alice, _, _ = tenants
    request_id = alice.submit("counted, not named", replay=SCRIPT).request_id
    async with RawClient(system.target, BOB_TOKEN) as bob:
        status = await bob.status()
    assert request_id.encode() not in status.SerializeToString()
    assert Result.from_events(alice.watch(request_id)).state is RequestState.FINISHED
