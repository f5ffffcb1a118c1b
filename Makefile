# Switchboard: the two commands a fresh Debian machine needs are `make run` and `make test`.
CARGO ?= cargo
CONFIG ?=

.PHONY: run demo test test-deps lint fmt bench build release clean fuzz fuzz-smoke fuzz-smoke-build \
	fuzz-smoke-run fuzz-deps

## The virtualenv the Django package's tests run in on Django 4.2 LTS (5.2 runs on the machine's
## Python).
DJANGO_42 = integrations/django/.venv-django4.2
# What the channels_redis bridge is tested against (both layers, encryption).
CHANNELS_PACKAGES = "channels[daphne]>=4.3,<4.4" "channels_redis>=4.3,<4.4" cryptography

## The fuzz targets (fuzz/fuzz_targets/), one per decoder of outside bytes.
FUZZ_TARGETS = client_websocket_frames client_frame_json client_frame_msgpack broker_envelope \
	control_op jwt gateway_userinfo backend_answers config channels_redis_message
## How long `make fuzz` runs each target.
FUZZ_SECONDS ?= 60

## Build and start one node with the embedded memory broker on 127.0.0.1:8080.
run:
	$(CARGO) run --release --bin switchboard -- serve $(if $(CONFIG),--config $(CONFIG),)

## The chat demo (examples/chat/): a node with the embedded broker on 127.0.0.1:8080 and the page
## on http://127.0.0.1:8000/examples/chat/; Ctrl-C stops both.
demo:
	@test -d clients/js/node_modules || { cd clients/js && npm ci --no-audit --no-fund --loglevel=error; }
	cd clients/js && npm run build
	$(CARGO) build --release --bin switchboard
	@echo "open http://127.0.0.1:8000/examples/chat/?name=alice and, in another window, ?name=bob"
	@python3 -m http.server 8000 --bind 127.0.0.1 --directory . >/dev/null 2>&1 & server=$$!; \
	trap 'kill $$server 2>/dev/null' EXIT INT TERM; \
	target/release/switchboard serve --config examples/chat/switchboard.toml

## Install what the tests need (redis-server, openssl, nginx, prometheus, chromium; python
## websockets, redis, kubernetes-validate; cargo-fuzz; the JS client's npm packages) if missing,
## then run every test (Rust, the JS client in Node and in Chromium, the Django package on Django
## 5.2 and 4.2), and each fuzz target briefly. The fuzz targets build (another toolchain, another
## target directory) beside the tests at the lowest CPU priority, on what the tests leave idle;
## they run last.
test: test-deps
	@mkdir -p fuzz/target; \
	setsid nice -n 19 $(MAKE) --no-print-directory fuzz-smoke-build >fuzz/target/smoke-build.log 2>&1 & \
	fuzz_build=$$!; status=0; \
	{ $(CARGO) test --all-targets && \
	  (cd clients/js && npm test) && \
	  (cd integrations/django && python3 -m pytest -q) && \
	  (cd integrations/django && $(abspath $(DJANGO_42))/bin/python -m pytest -q); } || status=$$?; \
	if [ $$status != 0 ]; then kill -TERM -- -$$fuzz_build 2>/dev/null; exit $$status; fi; \
	echo "== waiting for the fuzz targets' build"; \
	wait $$fuzz_build || { tail -n 60 fuzz/target/smoke-build.log; exit 1; }; \
	$(MAKE) --no-print-directory fuzz-smoke-run

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
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium (the browser tests drive the chat demo with puppeteer-core)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@$(MAKE) --no-print-directory fuzz-deps
	@python3 -c "import websockets, redis, kubernetes_validate" 2>/dev/null || { \
		echo "installing the python websockets, redis (README examples) and kubernetes-validate (deploy/k8s) packages"; \
		python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore websockets redis kubernetes-validate==1.37.0; }
	@test -d clients/js/node_modules || { \
		echo "installing the JavaScript client's build and test tools (npm ci)"; \
		cd clients/js && npm ci --no-audit --no-fund --loglevel=error; }
	@python3 -c "import django, pytest_django, jwt, cryptography, websockets, redis, channels_redis, daphne; assert django.VERSION[:2] == (5, 2)" 2>/dev/null || { \
		echo "installing Django 5.2, pytest-django, PyJWT, channels and channels_redis (the Django package's tests)"; \
		python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
			"Django>=5.2,<5.3" pytest pytest-django "PyJWT[crypto]>=2.8" websockets redis $(CHANNELS_PACKAGES); }
	@$(DJANGO_42)/bin/python -c "import django, channels_redis, daphne" 2>/dev/null || { \
		echo "creating $(DJANGO_42) (the Django package's tests on Django 4.2 LTS)"; \
		{ test -x $(DJANGO_42)/bin/python || python3 -m venv $(DJANGO_42); } && $(DJANGO_42)/bin/pip install --quiet --disable-pip-version-check \
			"Django>=4.2,<4.3" pytest pytest-django "PyJWT[crypto]>=2.8" websockets redis $(CHANNELS_PACKAGES); }

## Formatting and clippy, as CI runs them (the fuzz crate is formatted too).
lint:
	$(CARGO) fmt --check
	$(CARGO) fmt --check --manifest-path fuzz/Cargo.toml
	$(CARGO) clippy --all-targets -- -D warnings
	@test -d clients/js/node_modules || { cd clients/js && npm ci --no-audit --no-fund --loglevel=error; }
	cd clients/js && npm run lint && npm run size
	@command -v ruff >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore ruff
	ruff check integrations/django
	ruff format --check integrations/django

## Every fuzz target for FUZZ_SECONDS, optimized and with AddressSanitizer (nightly). New inputs
## go to fuzz/corpus/, crashes to fuzz/artifacts/ (both ignored by git); fuzz/seeds/ is the
## committed seed corpus.
fuzz: fuzz-deps
	cd fuzz && cargo +nightly fuzz build
	@for target in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$target; \
		echo "== fuzz $$target ($(FUZZ_SECONDS) s)"; \
		(cd fuzz && cargo +nightly fuzz run $$target corpus/$$target seeds/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=0) || exit 1; \
	done

## A short, bounded run of every fuzz target (what make test and CI do): an unoptimized build
## with debug assertions (so arithmetic overflow is a crash too), no sanitizer, 5 s each.
fuzz-smoke: fuzz-smoke-build
	@$(MAKE) --no-print-directory fuzz-smoke-run

fuzz-smoke-build: fuzz-deps
	cd fuzz && cargo +nightly fuzz build --dev --sanitizer none

fuzz-smoke-run:
	@for target in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$target; \
		echo "== fuzz smoke $$target (5 s)"; \
		output=$$(cd fuzz && cargo +nightly fuzz run --dev --sanitizer none $$target corpus/$$target \
			seeds/$$target -- -max_total_time=5 -rss_limit_mb=2048 2>&1) \
			|| { echo "$$output" | tail -n 60; exit 1; }; \
		echo "$$output" | grep -aE '^#[0-9]+.*DONE' | tail -n 1; \
	done

fuzz-deps:
	@command -v cargo-fuzz >/dev/null 2>&1 || { \
		echo "installing cargo-fuzz (the fuzz targets run with the nightly toolchain)"; \
		$(CARGO) install cargo-fuzz --locked --quiet; }

fmt:
	$(CARGO) fmt

## Criterion micro-benchmarks (codec, fan-out without sockets), then a short load-tool run
## against a release node (benches/load.sh; docs/performance.md has the full-size runs).
bench:
	$(CARGO) bench --bench codec --bench fanout
	$(CARGO) build --release --bin switchboard --bin switchboard-load --example fanout-floor
	benches/load.sh
	benches/cluster.sh

build:
	$(CARGO) build --release

clean:
	$(CARGO) clean
