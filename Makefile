# One obvious command per habit.
PYTHON ?= python3
EXT_SUFFIX := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")

.PHONY: dev test test-rust lint bench tour

# Build the Rust core in release mode into python/ferroloop (use with PYTHONPATH=python).
dev:
	cargo build --release
	# Copy then rename: overwriting in place would crash processes that have it loaded.
	cp target/release/lib_core.so python/ferroloop/.core.tmp
	mv -f python/ferroloop/.core.tmp python/ferroloop/_core$(EXT_SUFFIX)

# test, bench and tour use the dev build in python/ferroloop, not an installed
# wheel that may be older (pip install . is what .ci/run and the README test).
test: dev
	PYTHONPATH=python $(PYTHON) -m pytest -q tests

test-rust:
	cargo test --release --lib

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	$(PYTHON) -m ruff check python tests benchmarks examples

bench: dev
	PYTHONPATH=python $(PYTHON) -m benchmarks

tour: dev
	PYTHONPATH=python $(PYTHON) examples/tour.py
