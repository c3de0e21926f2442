# Clipper: everything a new machine needs is installed from here (Python 3.11, a C compiler
# and the package registries are all that is assumed).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=

.PHONY: run test test-compiled test-pure test-swarm build venv bench bench-deps bench-overload clean system-deps

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=68" wheel "Cython>=3.0"
	$(PY) -m pip install -q -e .
	touch $(STAMP)

# what the tests need on top: the test extra (it pulls every framework runtime's extra,
# PyTorch's CUDA wheels included: several GB) and the original Clipper's client
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test]'
	# the original Clipper's client, unchanged, for the compatibility tests: without its pins
	$(PY) -m pip install -q --no-deps clipper_admin==0.4.1
	touch $(TEST_STAMP)

venv: $(STAMP)

# rebuild the Cython extensions in place (an editable install does not notice .pxd changes)
build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

run: build
	$(VENV)/bin/clipper start --demo

# Debian packages some tests need (Chromium, Redis, ...): see .ci/system-packages.txt
system-deps:
	bash .ci/system-deps

# The suite against the compiled Cython modules, then again against their pure-Python twins
# (as msgpack runs its suite again with MSGPACK_PUREPYTHON=1).  The second run takes the tests
# that drive the scheduler and the cache: unit (which also compare the twins directly), faults,
# fuzz, and the integration tests of queries, batching, the cache, the edge, OIP and model
# selection.  It leaves out the tests whose subject is not the twins (replica backends and
# lifecycle on Docker and Swarm, the browser, framework training, the original Clipper's and
# Triton's clients, Redis, the CLI), to keep CI well under 15 minutes.
PURE_TESTS := tests/unit tests/faults tests/fuzz \
	tests/integration/test_batching.py tests/integration/test_cache_e2e.py \
	tests/integration/test_edge.py tests/integration/test_model_selection.py \
	tests/integration/test_oip.py tests/integration/test_predict.py

test: build $(TEST_STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)
	CLIPPER_PUREPYTHON=1 $(PY) -m pytest $(PURE_TESTS) $(PYTEST_ARGS)

# one of the two runs
test-compiled: build $(TEST_STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# only the tests on a single-node Docker Swarm (the swarm backend's own and the lifecycle
# suite's swarm pass; both are part of `make test` too)
test-swarm: build $(TEST_STAMP) system-deps
	$(PY) -m pytest tests/integration/test_swarm_backend.py tests/integration/test_lifecycle.py -k 'swarm' $(PYTEST_ARGS)

test-pure: build $(TEST_STAMP) system-deps
	CLIPPER_PUREPYTHON=1 $(PY) -m pytest $(PURE_TESTS) $(PYTEST_ARGS)

bench: build
	$(PY) benchmarks/demo_throughput.py

# scikit-learn for the benchmark scenarios' sklearn model (not a dependency of Clipper), and
# the open-loop generator oha for benchmarks/overload.py (Rust; compiles for a few minutes)
bench-deps: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	bash .ci/system-deps .ci/bench-packages.txt
	command -v oha >/dev/null || test -x $(HOME)/.cargo/bin/oha || cargo install oha --locked

# issue 14's overload table (model-bound 1x/2x, frontend-bound 2x, 2x beside a CPU hog)
bench-overload: build bench-deps
	$(PY) benchmarks/overload.py

clean:
	rm -rf build $(VENV) src/*.egg-info src/clipper_core/*.so src/clipper_core/*.c \
	       src/clipper_core/_sched_c.py src/clipper_core/_cache_c.py
