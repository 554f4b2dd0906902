# hinan — the README's two commands are `make demo` and `make test`.
# Each target installs the Debian packages it needs first (.ci/deps.sh: quiet,
# idempotent, seconds when nothing is missing). Lab targets need root.

CARGO ?= cargo
LAB := ./target/debug/hinan-lab

.PHONY: test demo bench build lab-down fmt lint fuzz

test:
	bash .ci/deps.sh test
	$(CARGO) build --workspace --all-targets
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --config-file .ci/nextest.toml; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

demo:
	bash .ci/deps.sh demo
	$(CARGO) build -p hinan-tests --bin hinan-lab
	$(LAB) demo

# Benchmarks: hinan beside its peers, in one run on this machine (about 20 min).
bench:
	bash .ci/deps.sh bench
	$(CARGO) build --release -p hinan-tests -p hinan-orchestrator --bins
	mkdir -p target/bench
	./target/release/hinan-lab bench-migration --runs 5
	./target/release/hinan-bench cluster --json target/bench/cluster.json
	./target/release/hinan-bench keepalived --trials 20 --json target/bench/keepalived.json
	./target/release/hinan-bench compare target/bench/cluster.json target/bench/keepalived.json

build:
	$(CARGO) build --workspace

# Removes every lab on this machine, including ones left by crashed runs.
lab-down:
	$(CARGO) build -p hinan-tests --bin hinan-lab
	$(LAB) down

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Builds the fuzz targets on stable (libFuzzer without coverage guidance) and
# runs each for FUZZ_SECONDS; `cargo +nightly fuzz run TARGET` for real coverage.
FUZZ_SECONDS ?= 30
fuzz:
	cd fuzz && CARGO_TARGET_DIR=../target/fuzz $(CARGO) build
	for t in heartbeat monitor_replies raft_message control_request bridge_input etherip dns_query; do \
		./target/fuzz/debug/$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 2>&1 | grep -E 'executed_units|ERROR' || exit 1; \
	done
