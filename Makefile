# hinan — the README's two commands are `make demo` and `make test`.
# Each target installs the Debian packages it needs first (.ci/deps.sh: quiet,
# idempotent, seconds when nothing is missing). Lab targets need root.

CARGO ?= cargo
LAB := ./target/debug/hinan-lab

.PHONY: test demo bench bench-build bench-migration bench-cluster bench-vpn bench-dns build lab-down fmt lint fuzz

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
	$(CARGO) build -p hinan-tests --bin hinan-lab -p hinan-orchestrator --bin hinan
	$(LAB) demo

# Benchmarks: hinan beside its peers, in one run on this machine (about 31 min
# for `make bench`). Each area has its own target:
#   bench-migration  live migrations under the client probe, then with the
#                    cluster: how fast its location and DNS answers follow,
#                    then moves driven by hinan beside virsh on a WAN
#                    limited to 100 Mbit/s (about 5 min)
#   bench-cluster    hinan's cluster (its soak alone is 10 min), keepalived's
#                    VRRP takeover (about 3 min), and the two compared
#   bench-vpn        hinan's L2 VPN beside wireguard-go and tinc  } about 6 min
#   bench-dns        hinan's DNS server beside Knot and NSD       } together
# Each installs its Debian packages and builds the release binaries once
# (bench-build), then writes its JSON into target/bench/. With BENCH_SAVE=1
# the JSON of a run that succeeded is also copied to tests/bench-results/
# (migration.json, location.json and moves.json, cluster.json and keepalived.json,
# vpn.json, dns.json), the files the README's numbers are quoted from.
# Without it nothing in the tree changes, so quoting a run is always an
# explicit `make bench-X BENCH_SAVE=1`.
# In `make bench`, vpn and dns both run even if one fails; then make fails.
BENCH_SAVE ?=
REL := ./target/release
OUT := target/bench
# $(call bench_save,NAME): with BENCH_SAVE=1, keeps $(OUT)/NAME.json as tests/bench-results/NAME.json.
bench_save = if [ "$(BENCH_SAVE)" = 1 ]; then mkdir -p tests/bench-results && cp $(OUT)/$(1).json tests/bench-results/$(1).json && echo "saved tests/bench-results/$(1).json"; fi

RUN_MIGRATION = $(REL)/hinan-lab bench-migration --runs 5 --json $(OUT)/migration.json && \
	$(REL)/hinan-bench location --runs 5 --json $(OUT)/location.json && \
	$(REL)/hinan-bench moves --runs 3 --json $(OUT)/moves.json && \
	{ $(call bench_save,migration); } && { $(call bench_save,location); } && \
	{ $(call bench_save,moves); }
RUN_CLUSTER = $(REL)/hinan-bench cluster --json $(OUT)/cluster.json && \
	$(REL)/hinan-bench keepalived --trials 20 --json $(OUT)/keepalived.json && \
	$(REL)/hinan-bench compare $(OUT)/cluster.json $(OUT)/keepalived.json && \
	{ $(call bench_save,cluster); } && { $(call bench_save,keepalived); }
RUN_VPN = $(REL)/hinan-bench vpn --json $(OUT)/vpn.json && $(call bench_save,vpn)
RUN_DNS = $(REL)/hinan-bench dns --json $(OUT)/dns.json && $(call bench_save,dns)

bench-build:
	bash .ci/deps.sh bench
	$(CARGO) build --release -p hinan-tests -p hinan-orchestrator --bins
	mkdir -p $(OUT)

bench-migration: bench-build
	$(RUN_MIGRATION)

bench-cluster: bench-build
	$(RUN_CLUSTER)

bench-vpn: bench-build
	$(RUN_VPN)

bench-dns: bench-build
	$(RUN_DNS)

bench: bench-build
	$(RUN_MIGRATION)
	$(RUN_CLUSTER)
	($(RUN_VPN)); v=$$?; ($(RUN_DNS)); d=$$?; test $$v = 0 && test $$d = 0

build:
	$(CARGO) build --workspace

# Removes every lab on this machine, including ones left by crashed runs.
lab-down:
	$(CARGO) build -p hinan-tests --bin hinan-lab -p hinan-orchestrator --bin hinan
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
	for t in $$(sed -n 's/^name = "\(.*\)"/\1/p' fuzz/Cargo.toml | grep -v '^hinan-fuzz$$'); do \
		./target/fuzz/debug/$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 2>&1 | grep -E 'executed_units|ERROR' || exit 1; \
	done
