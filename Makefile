# sandbox-host — `make run` (demo on the local provider) and `make test` (the whole suite) set
# up everything they need on a fresh machine: the wasm32-wasip2 Rust target, bubblewrap, and
# (for the SDK tests) a Python venv with pinned SDKs.

CARGO ?= cargo
WASM_TARGET := wasm32-wasip2
# Provider plugins shipped in target/plugins/, and test fixtures in target/test-plugins/.
PROVIDER_PLUGINS := local example daytona runloop modal e2b
FIXTURE_PLUGINS := hostile hostile_load
GUEST_OUT := plugins/target/$(WASM_TARGET)/release

VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test build plugins bench wasm-target bwrap venv sdk-test lint clean help

help:
	@echo "make run      build, then demo a sandbox on the local provider"
	@echo "make test     the whole test suite"
	@echo "make build    release CLI at target/release/sandbox-host, plugins at target/plugins/"
	@echo "make plugins  build the wasm plugins"
	@echo "make bench    benchmarks (ratios measured side by side)"

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || { \
	  echo "installing the Rust target $(WASM_TARGET)"; \
	  rustup target add $(WASM_TARGET) || { echo "error: could not add the Rust target $(WASM_TARGET) (rustup target add $(WASM_TARGET) failed); plugins cannot be built" >&2; exit 1; }; }

bwrap:
	@command -v bwrap >/dev/null 2>&1 || { \
	  echo "installing bubblewrap (sandbox isolation)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq bubblewrap >/dev/null; } || { echo "error: bubblewrap is missing and could not be installed; install the 'bubblewrap' package" >&2; exit 1; }; }

plugins: wasm-target
	cd plugins && $(CARGO) build --release --target $(WASM_TARGET)
	@mkdir -p target/plugins target/test-plugins
	@for p in $(PROVIDER_PLUGINS); do cp $(GUEST_OUT)/$$p.wasm target/plugins/$$p.wasm || exit 1; done
	@for p in $(FIXTURE_PLUGINS); do cp $(GUEST_OUT)/$$p.wasm target/test-plugins/$$p.wasm || exit 1; done
	@ls -l target/plugins target/test-plugins | grep wasm

build: plugins
	$(CARGO) build --release -p sandbox-host

run: build bwrap
	./scripts/demo.sh ./target/release/sandbox-host

# The Python venv with the providers' official SDKs (pinned in tests/sdk/requirements.txt).
venv: $(VENV)/.installed
$(VENV)/.installed: tests/sdk/requirements.txt
	@python3 -m venv --help >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq python3-venv >/dev/null; }
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r tests/sdk/requirements.txt
	@touch $@

# The SDK tests: official SDKs against the emulators. pytest's exit code 5 (no tests ran) is a failure.
sdk-test: venv
	$(CARGO) build -p sandbox-emulator
	$(PY) -m pytest -q tests/sdk; rc=$$?; if [ $$rc = 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test: plugins bwrap
	cd plugins && $(CARGO) test -p kit -p e2b -p daytona -p runloop -p modal
	$(CARGO) build -p sandbox-host -p sandbox-emulator
	$(CARGO) test --workspace
	$(MAKE) sdk-test

bench: plugins bwrap
	$(CARGO) run --release -p sandbox-bench -- $(ARGS)

lint:
	$(CARGO) clippy --workspace --all-targets
	cd plugins && $(CARGO) clippy --target $(WASM_TARGET)

clean:
	$(CARGO) clean
	cd plugins && $(CARGO) clean
