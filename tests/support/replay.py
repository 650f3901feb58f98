"""Replay scripts for requests built from the raw protos (tests that drive the gRPC API itself)."""

from __future__ import annotations

from lamps.v1 import common_pb2 as cpb


def replay(*segments: tuple[int, str, float, int]) -> cpb.Replay:
    """A script of (output tokens, tool, seconds, tool output tokens) segments."""
    return cpb.Replay(
        segments=[
            cpb.ReplaySegment(
                output_tokens=tokens,
                tool=tool,
                tool_duration_seconds=duration,
                tool_output_tokens=returned,
            )
            for tokens, tool, duration, returned in segments
        ]
    )
