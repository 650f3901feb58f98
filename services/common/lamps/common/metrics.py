"""Prometheus metrics every server exports, and the HTTP endpoint that serves them.

The gRPC series follow the names of go-grpc-prometheus, which existing dashboards already know.
"""

from __future__ import annotations

from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import Counter, Histogram, Info

BUILD_INFO = Info("lamps_build", "Which lamps-serving service and version this process runs.")

GRPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its end on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        60,
    ),
)


@dataclass
class MetricsEndpoint:
    """A running /metrics HTTP server."""

    server: WSGIServer
    port: int

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_metrics_endpoint(host: str, port: int) -> MetricsEndpoint:
    """Serve the process's default registry over HTTP in a background thread."""
    server, _thread = prometheus_client.start_http_server(port, addr=host)
    return MetricsEndpoint(server=server, port=int(server.server_port))
