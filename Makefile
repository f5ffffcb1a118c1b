# Switchboard: the two commands a fresh Debian machine needs are `make run` and `make test`.
CARGO ?= cargo
CONFIG ?=

.PHONY: run test test-deps lint fmt bench build release clean

## Build and start one node with the embedded memory broker on 127.0.0.1:8080.
run:
	$(CARGO) run --release --bin switchboard -- serve $(if $(CONFIG),--config $(CONFIG),)

## Install what the tests need (redis-server, openssl, nginx, prometheus; python websockets, redis,
## kubernetes-validate) if missing, then run every test.
test: test-deps
	$(CARGO) test --all-targets

test-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@command -v openssl >/dev/null 2>&1 || { \
		echo "installing openssl (the tests make their own signing keys)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; }
	@{ command -v nginx >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || { \
		echo "installing nginx and prometheus (the deploy/ topology test runs them as local processes)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx prometheus >/dev/null; }
	@python3 -c "import websockets, redis, kubernetes_validate" 2>/dev/null || { \
		echo "installing the python websockets, redis (README examples) and kubernetes-validate (deploy/k8s) packages"; \
		python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore websockets redis kubernetes-validate==1.37.0; }

## Formatting and clippy, as CI runs them.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## Criterion micro-benchmarks (codec, fan-out without sockets), then a short load-tool run
## against a release node (benches/load.sh; docs/performance.md has the full-size runs).
bench:
	$(CARGO) bench --bench codec --bench fanout
	$(CARGO) build --release --bin switchboard --bin switchboard-load
	benches/load.sh

build:
	$(CARGO) build --release

clean:
	$(CARGO) clean
