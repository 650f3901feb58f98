"""The predictor's gRPC server."""

from __future__ import annotations

import grpc
from grpc import aio

from lamps.common.server import Service, serve
from lamps.predictor.config import PredictorConfig
from lamps.v1 import predictor_pb2 as pb
from lamps.v1 import predictor_pb2_grpc as pb_grpc

_NOT_YET = "is not available in this release: the predictor's model has not landed yet"


class PredictorServicer(pb_grpc.PredictorServiceServicer):
    """Predictions and outcomes. Answers UNIMPLEMENTED until the model lands."""

    async def Predict(
        self, request: pb.PredictRequest, context: aio.ServicerContext[object, object]
    ) -> pb.PredictResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Predict {_NOT_YET}")

    async def ReportOutcome(
        self, request: pb.ReportOutcomeRequest, context: aio.ServicerContext[object, object]
    ) -> pb.ReportOutcomeResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"ReportOutcome {_NOT_YET}")


def services(config: PredictorConfig) -> list[Service]:
    return [
        Service.of(
            pb.DESCRIPTOR.services_by_name["PredictorService"],
            pb_grpc.add_PredictorServiceServicer_to_server,
            PredictorServicer(),
            config.auth_tokens,
        )
    ]


def main(config: PredictorConfig) -> int:
    return serve("predictor", config, services(config))
