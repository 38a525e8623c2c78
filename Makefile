# gemmaserve: `make serve` and `make test` are the whole quickstart.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is installed first and pinned: an unpinned requirement can pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
MODEL  ?=
PORT   ?= 8000
HOST   ?= 127.0.0.1
DEMO   := .demo-model

.PHONY: install dev serve test demo-model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

$(DEMO)/config.json: $(VENV)/.installed
	$(BIN)/gemmaserve make-demo-model $(DEMO) --size small

demo-model: $(DEMO)/config.json

# With no MODEL the embedded demo model (random weights, real layout) is written and served.
serve: $(VENV)/.installed $(if $(MODEL),,$(DEMO)/config.json)
	$(BIN)/gemmaserve serve --model $(or $(MODEL),$(DEMO)) --host $(HOST) --port $(PORT)

# One torch thread per test process unless the caller says otherwise: the tests use tiny models,
# where two OpenMP threads spinning on a shared 2-core machine made steps ~50x slower.
# The real-Ray tests run each in a fresh process: ray.init forks Ray's daemons with a Python
# preexec_fn, and in a process that earlier tests left threads in, a lock held at fork time can
# deadlock the child before exec (seen once: the whole suite hung in start_gcs_server).
RAY_TESTS := tests/cluster/test_ray_cluster.py tests/cluster/test_ray_join.py
PYTEST := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q
test: $(VENV)/.dev-installed
	$(PYTEST) $(foreach t,$(RAY_TESTS),--ignore=$(t))
	$(foreach t,$(RAY_TESTS),$(PYTEST) $(t) &&) true

clean:
	rm -rf $(VENV) $(DEMO)
