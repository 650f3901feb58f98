"""`lamps worker serve`: an engine, the agent that connects it to the scheduler, and the usual
server for probes (health, reflection) and metrics.

A worker serves no lamps API of its own; it is a client of the scheduler's WorkerGateway. Health
says NOT_SERVING until the first registration, then SERVING for the life of the process (across
reconnects: a liveness probe must not restart a worker holding KV caches while the scheduler
restarts). On SIGTERM health goes NOT_SERVING and the agent drains (DESIGN.md section 11).
"""

from __future__ import annotations

import logging

from lamps.common.logs import configure_logging
from lamps.common.server import serve
from lamps.worker.agent import Agent
from lamps.worker.config import WorkerConfig
from lamps.worker.engines import EngineUnavailableError, create_engine

log = logging.getLogger(__name__)


def main(config: WorkerConfig) -> int:
    try:
        engine = create_engine(config)
    except EngineUnavailableError as exc:
        configure_logging("worker", config.log_level, config.log_format)
        log.error("cannot start: %s", exc)
        return 1
    agent = Agent(engine, config)
    return serve("worker", config, [], lifespan=agent.running, readiness=agent.wait_registered)
