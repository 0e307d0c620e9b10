#!/usr/bin/env bash
# As pytorch/torchserve-kfs's entrypoint: the container's args (torchserve --start ...), then
# KServe's wrapper on 8080 (REST) and 8081 (gRPC), in its own environment. If the wrapper
# exits, so does the container, and Kubernetes restarts it.
set -e
eval "$@"
cd /opt/kserve-wrapper/kserve_wrapper
exec /opt/kserve-wrapper/venv/bin/python __main__.py
