"""The worker's own gRPC server: health checking (for probes) and reflection.

A worker serves no lamps API of its own; it is a client of the scheduler's WorkerGateway.
"""

from __future__ import annotations

from lamps.common.server import serve
from lamps.worker.config import WorkerConfig


def main(config: WorkerConfig) -> int:
    return serve("worker", config, [])
