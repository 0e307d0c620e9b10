#!/usr/bin/env bash
# The container's args decide what runs:
# - the image-classifier runtime (deploy/kserve/base): `python -m handlers.kserve ...`, KServe's
#   own model server on the request core, exec'd as the container's process;
# - the TorchServe runtime (deploy/kserve/overlays/torchserve), as pytorch/torchserve-kfs's
#   entrypoint: `torchserve --start ...`, then KServe's wrapper on 8080 (REST) and 8081 (gRPC),
#   in its own environment. If the wrapper exits, so does the container.
set -e
if [ "${1:-}" != "torchserve" ]; then
  exec "$@"
fi
eval "$@"
cd /opt/kserve-wrapper/kserve_wrapper
exec /opt/kserve-wrapper/venv/bin/python __main__.py
