# Image-classifier serving with TorchServe. `make serve` and `make test` do all set-up.
SHELL := /bin/bash
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL_NAME ?= efficientnet_lite0
VERSION ?= 1.0
CHECKPOINT ?= build/efficientnet_lite0.pt
DEFAULT_CKPT := build/efficientnet_lite0.pt
DEFAULT_MAR := model_store/efficientnet_lite0.mar
SAMPLE ?= samples/kitten.jpg
TSCTL := $(PY) -m tsctl.cli --key-file key_file.json
PYTEST_ARGS ?=
# CPU-only hosts: workers per model; each gets cores/CPU_WORKERS torch threads, or CPU_THREADS
# when set (README "Workers and threads").
CPU_WORKERS ?= 1
CPU_THREADS ?=
# A worker's OpenMP threads spin this long (libgomp busy-wait iterations: a fraction of a
# millisecond) between the forward pass's operators before they sleep: sleeping after every
# operator (OMP_WAIT_POLICY=PASSIVE) slows single requests, and libgomp's default (300000) spins
# 30 times longer, on cores that other workers may need. Compare on your host with
# make bench BENCH_ARGS="--handlers ours --sizes 500x375" SERVE_OMP_ENV=OMP_WAIT_POLICY=PASSIVE.
SERVE_OMP_ENV ?= GOMP_SPINCOUNT=10000

.PHONY: serve stop mar test test-slow bench bench-servers install container-engine java wrk prometheus clean kserve-bundle kserve-wrapper image soak

install: $(VENV)/.installed

# pip takes torch/torchvision from this machine's wheel cache where one is configured.
$(VENV)/.installed: setup.cfg pyproject.toml
	@echo "Setting up $(VENV) (torch, TorchServe, ONNX Runtime, OpenVINO and the test tools): a few minutes the first time."
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	@$(PY) -m pip install --upgrade --quiet pip
	@echo "  pip install -e '.[dev]' ..."
	@$(PY) -m pip install --quiet -e '.[dev]'
	@$(PY) -c "from tsctl.grpc_client import generate_stubs; print('  gRPC stubs in', generate_stubs())"
	@touch $@
	@echo "  $(VENV) is ready."

java:
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	if [ -z "$$v" ] || [ "$$v" -lt 17 ]; then \
	  echo "TorchServe needs Java 17 or newer (found: $${v:-none})."; \
	  echo "Install it, e.g. on Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless"; \
	  exit 1; fi

# The bench's load generator (https://github.com/wg/wrk): installed with apt-get when this is
# root on Debian/Ubuntu (as on a fresh CI-like machine), otherwise named for you to install.
wrk:
	@command -v wrk >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing wrk (make bench's load generator) with apt-get."; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null; } || \
	  { echo "apt-get could not install wrk."; exit 1; }; \
	else echo "make bench needs wrk (Debian/Ubuntu: sudo apt-get install -y wrk; macOS: brew install wrk)."; exit 1; fi

$(DEFAULT_CKPT): | install
	$(PY) scripts/build_default_checkpoint.py --output $@

$(DEFAULT_MAR): $(DEFAULT_CKPT) $(shell find handlers -name "*.py") model-config.yaml | install
	$(PY) scripts/build_mar.py --checkpoint $(DEFAULT_CKPT) --model-name efficientnet_lite0 --version 1.0

# Archive any checkpoint in this project's format: make mar CHECKPOINT=x.pt MODEL_NAME=y VERSION=2.0 [MAR_DIR=dir]
# An experiment archive, a candidate beside it (docs/EXPERIMENTS.md): add CANDIDATE=z.pt or z.mar
# [CANDIDATE_VERSION=2.0] EXPERIMENT=shadow|split [EXPERIMENT_ARGS="--sample 0.2" or "--share 0.1 --key-header X-User-Id"]
MAR_DIR ?= model_store
CANDIDATE ?=
CANDIDATE_VERSION ?= 2.0
EXPERIMENT ?= shadow
EXPERIMENT_ARGS ?=
mar: install
	@test -f "$(CHECKPOINT)" || { echo "make mar: no checkpoint at $(CHECKPOINT). Name one: make mar CHECKPOINT=path/to/model.pt MODEL_NAME=... VERSION=... (the default model's: make $(DEFAULT_CKPT))"; exit 2; }
	$(PY) scripts/build_mar.py --checkpoint $(CHECKPOINT) --model-name $(MODEL_NAME) --version $(VERSION) --export-path $(MAR_DIR) \
	  $(if $(CANDIDATE),--candidate $(CANDIDATE) --candidate-version $(CANDIDATE_VERSION) --experiment $(EXPERIMENT) $(EXPERIMENT_ARGS))

# KServe: the storage bundle for KServe's TorchServe runtime (docs/KUBERNETES.md), for any
# checkpoint: make kserve-bundle CHECKPOINT=x.pt MODEL_NAME=y VERSION=2.0 -> build/kserve/y/v2.0/
kserve-bundle: install $(filter $(DEFAULT_CKPT),$(CHECKPOINT))
	$(PY) scripts/kserve_bundle.py --checkpoint $(CHECKPOINT) --model-name $(MODEL_NAME) --version $(VERSION)

# The serving image for KServe (deploy/image/Dockerfile), with docker or podman (deploy/image/build.sh):
# make image [IMAGE=registry/ts-image-classifier] [IMAGE_TAG=0.1.0] [GPU=1] [TORCHSERVE=1]
# -> IMAGE:IMAGE_TAG-cpu (or -gpu); TORCHSERVE=1 builds the TorchServe runtime's image, -torchserve-cpu
IMAGE ?= ts-image-classifier
IMAGE_TAG ?= 0.1.0
GPU ?=
TORCHSERVE ?=
image: container-engine
	bash deploy/image/build.sh $(IMAGE):$(IMAGE_TAG)$(if $(TORCHSERVE),-torchserve)$(if $(GPU),-gpu,-cpu) \
	  $(if $(TORCHSERVE),torchserve,image-classifier) $(GPU)

# What `make serve` serves: the default model; MAR=model_store/NAME.mar (any archive in the model
# store); or CHECKPOINT=x.pt MODEL_NAME=y [VERSION=z], archived first (make mar). TorchServe also
# serves again what it served when `make stop` last stopped it (tsctl serve; FRESH=1 forgets it).
# SERVER=kserve serves it with KServe's own model server instead (docs/KUBERNETES.md): REST on
# 127.0.0.1:8080 (KServe v1, Open Inference Protocol), gRPC on 8081, no token (loopback only).
SERVER ?= torchserve
SERVE_USES := CHECKPOINT MODEL_NAME VERSION MAR FRESH CPU_WORKERS CPU_THREADS SERVE_OMP_ENV SAMPLE SERVER
SERVE_REFUSES := MAR_DIR CANDIDATE CANDIDATE_VERSION EXPERIMENT EXPERIMENT_ARGS IMAGE IMAGE_TAG GPU TORCHSERVE BENCH_ARGS BENCH_SERVERS_ARGS SOAK_ARGS PYTEST_ARGS WRAPPER_SRC
MAR ?=
FRESH ?=
SERVE_MODEL = $$($(PY) -c "import sys; from tsctl.steps import mar_version; print(mar_version(sys.argv[1])[0])" $(SERVE_MAR))
SERVE_MAR = $(if $(MAR),$(MAR),$(if $(filter command line,$(origin CHECKPOINT)),model_store/$(MODEL_NAME)-v$(VERSION).mar,$(DEFAULT_MAR)))
# MAR or CHECKPOINT named: that archive's version is its model's default, beside any saved versions
SERVE_GIVEN = $(if $(or $(MAR),$(filter command line,$(origin CHECKPOINT))),--prefer-given)

serve: install $(if $(filter kserve,$(SERVER)),,java)
	@case "$(SERVER)" in torchserve|kserve) ;; *) echo "SERVER must be torchserve or kserve (got '$(SERVER)')."; exit 2;; esac
	@$(foreach v,$(SERVE_REFUSES),$(if $(filter command line,$(origin $(v))),echo "make serve does not use $(v) (it uses: $(SERVE_USES))."; exit 2;))
	@if [ -n "$(MAR)" ] && [ "$(origin CHECKPOINT)" = "command line" ]; then echo "make serve takes MAR or CHECKPOINT, not both."; exit 2; fi
	@if [ "$(origin CHECKPOINT)" = "command line" ]; then \
	  test -f "$(CHECKPOINT)" || { echo "make serve: no checkpoint at $(CHECKPOINT)"; exit 2; }; \
	  $(PY) scripts/build_mar.py --checkpoint $(CHECKPOINT) --model-name $(MODEL_NAME) --version $(VERSION) \
	    --file-name $(MODEL_NAME)-v$(VERSION).mar || exit 2; \
	elif [ -z "$(MAR)" ]; then $(MAKE) --no-print-directory $(DEFAULT_MAR) || exit 2; fi
	@if [ "$(SERVER)" = kserve ]; then \
	  $(PY) -m tsctl.kserve_local start --model_dir $(SERVE_MAR) || exit 1; \
	  echo "Prediction for $(SAMPLE) (KServe v1 :predict):"; \
	  curl -sS -X POST --data-binary @$(SAMPLE) -H "Content-Type: application/octet-stream" \
	    http://127.0.0.1:8080/v1/models/$(SERVE_MODEL):predict; echo; echo; \
	  echo "KServe's model server is running on 127.0.0.1 (REST 8080: /v1/models/$(SERVE_MODEL):predict,"; \
	  echo "/v2/models/$(SERVE_MODEL)/infer, /v2/models/$(SERVE_MODEL)/health, /metrics; gRPC 8081). Log: .tsctl/kserve/kserve.log"; \
	  echo "Stop it with: make stop"; exit 0; fi; \
	workers=1; threads=; \
	if ! nvidia-smi -L >/dev/null 2>&1; then \
	  case "$(CPU_WORKERS)" in ''|*[!0-9]*|0) echo "CPU_WORKERS must be a positive integer (got '$(CPU_WORKERS)')."; exit 2;; esac; \
	  case "$(CPU_THREADS)" in ''|[1-9]|[1-9][0-9]|[1-9][0-9][0-9]) ;; *) echo "CPU_THREADS must be a positive integer (got '$(CPU_THREADS)')."; exit 2;; esac; \
	  cores=$$(nproc); workers=$(CPU_WORKERS); threads=$(CPU_THREADS); \
	  threads=$${threads:-$$(( cores / $(CPU_WORKERS) > 0 ? cores / $(CPU_WORKERS) : 1 ))}; \
	  echo "No GPU found: $(CPU_WORKERS) worker(s), $$threads thread(s) each, on $$cores cores."; \
	else workers=$$(nvidia-smi -L | wc -l); fi; \
	echo "Starting TorchServe with $(SERVE_MAR) ..."; \
	env $(SERVE_OMP_ENV) $${threads:+OMP_NUM_THREADS=$$threads} $(TSCTL) serve $(SERVE_MAR) --workers $$workers \
	  $(if $(FRESH),--fresh) $(SERVE_GIVEN)
	@if [ "$(SERVER)" = kserve ]; then exit 0; fi; model=$(SERVE_MODEL); echo "Prediction for $(SAMPLE) (tsctl predict $$model $(SAMPLE)):"; \
	$(TSCTL) predict $$model $(SAMPLE) || exit 1; echo; \
	echo "TorchServe is running on 127.0.0.1 (inference 8080, management 8081, metrics 8082, gRPC 7070/7071)."; \
	echo "Keys are in key_file.json, logs in logs/. Try:"; \
	echo "  KEY=\$$(python3 -c \"import json; print(json.load(open('key_file.json'))['inference']['key'])\")"; \
	echo "  curl -H \"Authorization: Bearer \$$KEY\" http://127.0.0.1:8080/predictions/$(SERVE_MODEL) -T $(SAMPLE)"; \
	echo "Stop it with: make stop"

# Side-by-side load test: this handler vs TorchServe's stock image_classifier vs the model alone.
# Writes bench_results/results.md, results.json and latency_throughput.png. BENCH_ARGS=--help lists options.
BENCH_ARGS ?=
bench: install java wrk $(DEFAULT_CKPT) kserve-wrapper
	$(PY) scripts/bench.py $(addprefix --server-env ,$(SERVE_OMP_ENV)) $(BENCH_ARGS)
	$(PY) scripts/bench_servers.py $(BENCH_SERVERS_ARGS)

# The servers alone, side by side on one archive: TorchServe, KServe's TorchServe wrapper in front
# of it, KServe's own model server on the request core (bench_results/servers.md).
# BENCH_SERVERS_ARGS="--duration 10 --rounds 2 --concurrency 1,8,16"
BENCH_SERVERS_ARGS ?=
bench-servers: install java wrk $(DEFAULT_CKPT) kserve-wrapper
	$(PY) scripts/bench_servers.py $(BENCH_SERVERS_ARGS)

# Minutes of mixed good and hostile traffic against a real TorchServe (not part of make test):
# answers by status and type, worker restarts, peak RSS. SOAK_ARGS="--minutes 10 --clients 16".
SOAK_ARGS ?=
soak: install java $(DEFAULT_MAR)
	$(PY) -m tests.soak $(SOAK_ARGS)

stop:
	-@$(PY) -m tsctl.kserve_local stop
	-$(TSCTL) stop

# KServe's TorchServe wrapper in its own environment, built as the serving image builds it
# (deploy/image/kserve-wrapper.sh), for the pod-path test (tests/integration/test_kserve_pod.py),
# from the wrapper's sources (TorchServe v0.12.0's) beside this checkout when they are there; the
# test is skipped, saying why, when they are not.
WRAPPER_SRC ?= ../shared/kserve/torchserve-kfs
kserve-wrapper:
	@if [ -f build/kserve-wrapper/.ready ]; then exit 0; fi; \
	if [ ! -d $(WRAPPER_SRC)/kserve_wrapper ]; then \
	  echo "No KServe wrapper sources at $(WRAPPER_SRC): the pod-path test will be skipped."; exit 0; fi; \
	if ! command -v protoc >/dev/null || ! command -v grpc_python_plugin >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q protobuf-compiler protobuf-compiler-grpc >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q protobuf-compiler protobuf-compiler-grpc >/dev/null; }; \
	  else echo "The pod-path test needs protoc (Debian: apt-get install protobuf-compiler protobuf-compiler-grpc)."; exit 1; fi; fi; \
	mkdir -p build; \
	bash deploy/image/kserve-wrapper.sh $(WRAPPER_SRC) build/kserve-wrapper > build/kserve-wrapper.log 2>&1 \
	  || { tail -20 build/kserve-wrapper.log; exit 1; }; \
	touch build/kserve-wrapper/.ready

# Prometheus and promtool (Debian's package), for the metrics and alert-rule tests; installed with
# apt-get when this is root on Debian/Ubuntu, otherwise named for you to install.
# make image and the pod test: docker with its daemon, else podman (with runc, and debootstrap for
# the base image where no registry answers), installed with apt-get when this is root on Debian.
container-engine:
	@if command -v docker >/dev/null && docker info >/dev/null 2>&1; then exit 0; fi; \
	if command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing podman, runc and debootstrap (make image, the pod test) with apt-get."; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap >/dev/null; } || \
	  { echo "apt-get could not install podman."; exit 1; }; \
	else echo "make image needs docker (with its daemon) or podman and runc (Debian/Ubuntu: sudo apt-get install -y podman runc debootstrap)."; exit 1; fi

prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Prometheus (the metrics tests scrape a real one) with apt-get."; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; } || \
	  { echo "apt-get could not install prometheus."; exit 1; }; \
	else echo "make test needs Prometheus and promtool (Debian/Ubuntu: sudo apt-get install -y prometheus)."; exit 1; fi

# make test: lint, the unit tests and the integration tests of every component (minutes);
# make test-slow: the ones that take minutes each (injected faults mid-rollout, a host restart,
# every checkpoint format served, the hostile corpus, the guides' examples run as written).
# .ci/run runs both.
test: install java prometheus $(DEFAULT_MAR) kserve-wrapper
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install java prometheus $(DEFAULT_MAR) kserve-wrapper container-engine
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# clean deletes every archive, so it forgets the saved state that names them (.tsctl/): the next
# make serve starts afresh.
clean:
	-@$(PY) -m tsctl.kserve_local stop 2>/dev/null
	-$(TSCTL) stop 2>/dev/null
	rm -rf build model_store/*.mar logs logs_start.txt .pytest_cache .tsctl
