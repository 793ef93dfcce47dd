# oci-sandbox: demo, tests, lint and benches. Runs as root on Debian (bookworm); the runtimes
# come from Debian's packages and are installed when missing.

SHELL := /bin/bash
CARGO ?= cargo
# python3: the examples and tests run it inside the sandboxes (from the host's /usr).
# gcc, libc6-dev: build.rs compiles the sandboxes' in-container launcher (static).
# skopeo, umoci, docker-registry: the image tests build real images and serve them.
# chromium, chromium-driver, npm: the web console's tests drive a real browser; npm fetches
# its terminal widget (and brings node, which the code interpreter's JavaScript tests run).
# python3-matplotlib, -pandas, -numpy: the code interpreter's tests plot and show tables.
# python3-venv: the MCP tests install PyPI's `mcp` client into a virtualenv (make mcp-venv).
# prometheus: tests/metrics/prometheus.rs starts a real Prometheus that scrapes the metrics example.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps demo demo-web web-assets mcp-venv test lint doc bench bench-fast bench-check

## Installs what is missing, tool by tool: each command the library or its tests run, with
## the Debian package that brings it. A tool already on PATH is never reinstalled, whatever
## installed it (a nodesource nodejs brings its own npm, which Debian's npm conflicts with).
DEPS := runc:runc crun:crun runsc:runsc busybox:busybox-static newuidmap:uidmap \
	python3:python3 cc:gcc skopeo:skopeo umoci:umoci docker-registry:docker-registry \
	curl:curl wget:wget chromium:chromium chromedriver:chromium-driver npm:npm \
	prometheus:prometheus
deps:
	@missing=""; for d in $(DEPS); do command -v $${d%%:*} >/dev/null || missing="$$missing $${d#*:}"; done; \
	[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/aarch64-linux-gnu/libc.a ] || missing="$$missing libc6-dev"; \
	[ -x /usr/bin/python3 ] || missing="$$missing python3"; \
	for m in matplotlib pandas numpy; do /usr/bin/python3 -c "import $$m" 2>/dev/null || missing="$$missing python3-$$m"; done; \
	/usr/bin/python3 -c "import venv, ensurepip" 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing with apt-get"; \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo is required (rustup: https://rustup.rs)"; exit 1; }

## The official Python MCP SDK (PyPI's `mcp`, pinned) in a virtualenv under target/, for
## tests/mcp.rs to drive `oci-sandbox mcp` with a client no one here wrote.
MCP_VERSION := 2.3.0
MCP_VENV := target/mcp-venv
mcp-venv: $(MCP_VENV)/.mcp-$(MCP_VERSION)
$(MCP_VENV)/.mcp-$(MCP_VERSION):
	rm -rf $(MCP_VENV)
	/usr/bin/python3 -m venv $(MCP_VENV)
	$(MCP_VENV)/bin/pip install -q --disable-pip-version-check mcp==$(MCP_VERSION)
	touch $@

## Runs the quick start example: a few commands in a runc sandbox.
demo: deps
	$(CARGO) run --example quickstart

## The web console's terminal widget: xterm.js and its fit addon, fetched from the npm registry
## (pinned versions) into target/web-assets, never copied into the repository.
XTERM_VERSION := 5.5.0
XTERM_FIT_VERSION := 0.10.0
WEB_ASSETS := target/web-assets
web-assets: $(WEB_ASSETS)/xterm.js
$(WEB_ASSETS)/xterm.js:
	rm -rf $(WEB_ASSETS).tmp && mkdir -p $(WEB_ASSETS).tmp
	cd $(WEB_ASSETS).tmp && npm pack --silent @xterm/xterm@$(XTERM_VERSION) @xterm/addon-fit@$(XTERM_FIT_VERSION) >/dev/null
	tar -xzf $(WEB_ASSETS).tmp/xterm-xterm-$(XTERM_VERSION).tgz -C $(WEB_ASSETS).tmp package/lib/xterm.js package/css/xterm.css
	tar -xzf $(WEB_ASSETS).tmp/xterm-addon-fit-$(XTERM_FIT_VERSION).tgz -C $(WEB_ASSETS).tmp --transform 's,^package,fit,' package/lib/addon-fit.js
	mkdir -p $(WEB_ASSETS)
	cp $(WEB_ASSETS).tmp/package/css/xterm.css $(WEB_ASSETS).tmp/fit/lib/addon-fit.js $(WEB_ASSETS)/
	cp $(WEB_ASSETS).tmp/package/lib/xterm.js $(WEB_ASSETS)/xterm.js
	rm -rf $(WEB_ASSETS).tmp

## The web console (examples/web_console): a terminal, live logs and limits of one sandbox, on
## 127.0.0.1 (PORT=8080 by default); prints its URL.
demo-web: deps web-assets
	$(CARGO) run --example web_console

## The whole test suite, against the real runtimes; it fails too if the suite left temp dirs
## or mounts of ours in /tmp. Everything is built with the same features (the tests' helpers
## use them too: tests/common/mod.rs BUILD_FEATURES), so the library is compiled once.
TEST_FEATURES := cli,prometheus
test: deps web-assets mcp-venv
	mkdir -p target
	scripts/leftovers.sh snapshot target/leftovers-before.txt
	$(CARGO) build --features $(TEST_FEATURES) --examples --bins
	$(CARGO) test --features $(TEST_FEATURES) --no-fail-fast --tests
	$(CARGO) test --features $(TEST_FEATURES) --doc
	scripts/leftovers.sh check target/leftovers-before.txt

## Formatting, lints and docs must be clean.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features cli,prometheus -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --features prometheus

doc:
	$(CARGO) doc --no-deps --open

BENCH_RUNTIMES ?= runc,crun,runsc

## Criterion benches on every runtime (about 15 minutes), their summary in target/bench.txt and
## the plot in docs/benchmarks.svg. OSB_BENCH_RUNTIMES / BENCH_RUNTIMES picks runtimes.
bench: deps
	mkdir -p target
	OSB_BENCH_RUNTIMES=$(BENCH_RUNTIMES) $(CARGO) bench --features cli,prometheus 2>&1 | tee target/bench.txt
	python3 scripts/bench_plot.py target/bench.txt docs/benchmarks.svg

## The same in a few minutes (criterion's --quick, fewer paired rounds).
bench-fast: deps
	mkdir -p target
	OSB_BENCH_RUNTIMES=$(BENCH_RUNTIMES) $(CARGO) bench --features cli,prometheus -- --quick 2>&1 | tee target/bench.txt
	python3 scripts/bench_plot.py target/bench.txt target/benchmarks-fast.svg

## Runs each bench once, to keep them compiling and working (what CI does); like the tests,
## it fails if the benches left temp dirs or mounts of ours in /tmp.
bench-check: deps
	mkdir -p target
	scripts/leftovers.sh snapshot target/leftovers-before-bench.txt
	OSB_BENCH_RUNTIMES=$(BENCH_RUNTIMES) $(CARGO) bench --features cli,prometheus -- --test
	scripts/leftovers.sh check target/leftovers-before-bench.txt
