"""Leader election on a Redis lease: one replica schedules, standbys wait and take over when the
lease expires (DESIGN.md section 5)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from lamps.scheduler.lifecycle import Scheduler
from lamps.scheduler.queue import Store, StoreError

log = logging.getLogger(__name__)


class LeaderElection:
    """Renews the lease while leading; polls for it while standing by."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        replica_id: str,
        lease_s: float,
        on_role: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self._on_role = on_role
        self._store = store
        self._scheduler = scheduler
        self._replica_id = replica_id
        self._lease_s = lease_s

    async def attempt(self) -> bool:
        """One election step: take or renew the lease, lead or stand by accordingly."""
        leading = await self._elect()
        if self._on_role is not None:
            await self._on_role(leading)
        return leading

    async def _elect(self) -> bool:
        try:
            held = await self._store.acquire_leader(self._replica_id, self._lease_s)
        except StoreError as exc:
            # Without the store nothing can be written anyway; the fenced commit notices a lease
            # lost meanwhile, so keep the current role until the store answers.
            log.error("leader election cannot reach the store", extra={"error": str(exc)})
            return self._scheduler.leader
        if held and not self._scheduler.leader:
            await self._scheduler.lead()
        elif not held:
            if self._scheduler.leader:
                self._scheduler.step_down()
            try:
                self._scheduler.leader_id = await self._store.leader() or ""
            except StoreError:
                self._scheduler.leader_id = ""
        return held

    async def run(self) -> None:
        """Keep electing until cancelled."""
        while True:
            held = await self.attempt()
            await asyncio.sleep(self._lease_s / 3 if held else min(self._lease_s / 3, 1.0))

    async def resign(self) -> None:
        """Give the lease up so a standby takes over without waiting for it to expire."""
        try:
            await self._store.release_leader(self._replica_id)
        except StoreError as exc:
            log.warning("could not release the leader lease", extra={"error": str(exc)})
