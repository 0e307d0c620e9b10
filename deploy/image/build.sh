#!/usr/bin/env bash
# make image: build deploy/image/Dockerfile with docker where its daemon answers, else podman.
#   build.sh TAG [TARGET] [GPU]     TARGET: image-classifier (default) or torchserve
# The base image is pulled, or made with debootstrap where no registry answers (base-image.sh).
# With podman the build sees this machine's pip configuration: its index URLs, find-links and
# CA bundle, the local folders they name mounted read-only (torch may come from local files).
set -euo pipefail
tag=${1:?usage: build.sh TAG [TARGET] [GPU]}
target=${2:-image-classifier}
gpu=${3:-}
cd "$(dirname "$0")/../.."
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
elif command -v podman >/dev/null; then engine=podman
else
  echo "make image needs docker (with its daemon running) or podman (Debian: apt-get install podman runc)."
  exit 1
fi
bash deploy/image/base-image.sh "$engine"
args=(build -f deploy/image/Dockerfile --target "$target" -t "$tag")
[ -n "$gpu" ] && args+=(--build-arg TORCH_INDEX=https://pypi.org/simple --build-arg "EXTRAS=[gpu]")
if [ "$target" = torchserve ]; then
  src=${WRAPPER_SRC:-../shared/kserve/torchserve-kfs}
  rm -rf build/kserve-wrapper-src && mkdir -p build/kserve-wrapper-src
  if [ -d "$src/kserve_wrapper" ]; then
    cp -r "$src/kserve_wrapper" "$src/proto" build/kserve-wrapper-src/
  else
    git clone -q --depth 1 --branch v0.12.0 https://github.com/pytorch/serve.git build/serve-src
    cp -r build/serve-src/kubernetes/kserve/kserve_wrapper build/kserve-wrapper-src/
    mkdir -p build/kserve-wrapper-src/proto
    cp build/serve-src/frontend/server/src/main/resources/proto/*.proto build/kserve-wrapper-src/proto/
    rm -rf build/serve-src
  fi
fi
if [ "$engine" = podman ]; then
  # pip's configuration as this machine has it, for the RUN steps
  pip_config=$(python3 -m pip config list 2>/dev/null || true)
  setting() { sed -n "s/^[a-z:]*\.$1='\(.*\)'$/\1/p" <<<"$pip_config" | tail -1; }
  index=$(setting extra-index-url); links=$(setting find-links); cert=$(setting cert)
  [ -n "$index" ] && args+=(--build-arg "PIP_EXTRA_INDEX_URL=$index")
  [ -n "$links" ] && args+=(--build-arg "PIP_FIND_LINKS=$links")
  for path in $index $links; do
    path=${path#file://}; path=${path%/simple}
    [ -d "$path" ] && args+=(--volume "$path:$path:ro")
  done
  if [ -n "$cert" ] && [ -f "$cert" ]; then
    args+=(--volume "$cert:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
  fi
  # a host without a CPU wheel index reachable takes torch as pip finds it
  if ! python3 -c "import urllib.request; urllib.request.urlopen('https://download.pytorch.org/whl/cpu/', timeout=5)" 2>/dev/null; then
    [ -z "$gpu" ] && args+=(--build-arg TORCH_INDEX=)
  fi
  args+=(--format docker --runtime runc --ulimit nofile=10000:10000 --ulimit nproc=1000:1000 --layers)
fi
echo "$engine ${args[*]} ."
"$engine" "${args[@]}" .
