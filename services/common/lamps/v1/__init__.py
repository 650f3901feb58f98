"""Generated protobuf and gRPC stubs of the `lamps.v1` contract (protos/lamps/v1).

Do not edit the `*_pb2*` modules by hand: run `python scripts/generate_protos.py`.
"""
