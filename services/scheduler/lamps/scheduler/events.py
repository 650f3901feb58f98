"""Following a request's event log: the part this process holds, and before it the part only the
store has (after a takeover, or once the request has left memory)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from lamps.scheduler.jobs import Job
from lamps.scheduler.queue import Store
from lamps.scheduler.validation import RequestError
from lamps.v1 import common_pb2 as cpb

EVENT_PAGE = 512


async def follow(job: Job, store: Store, from_offset: int) -> AsyncIterator[cpb.RequestEvent]:
    """`job`'s events from `from_offset`, as they become durable, until its Finished event."""
    if from_offset > job.next_offset:
        raise RequestError(
            grpc.StatusCode.OUT_OF_RANGE,
            f"from_offset={from_offset} is beyond the log of {job.request_id}, whose next event "
            f"has offset {job.next_offset}",
        )
    position = from_offset
    while True:
        changed = job.changed
        if position < job.events_base:
            page = await store.events(
                job.request_id, position, min(EVENT_PAGE, job.events_base - position)
            )
            if not page:
                raise RequestError(
                    grpc.StatusCode.DATA_LOSS,
                    f"events of {job.request_id} from offset {position} are no longer stored",
                )
            for raw in page:
                event = cpb.RequestEvent.FromString(raw)
                yield event
                if event.HasField("finished"):
                    return
            position += len(page)
            continue
        while position < job.published:
            event = job.events[position - job.events_base]
            yield event
            if event.HasField("finished"):
                return
            position += 1
        if job.ended and position >= job.published == job.next_offset:
            return  # watched from the end of a finished log: nothing more will come
        await changed.wait()
