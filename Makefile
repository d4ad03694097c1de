# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned: an unpinned torch (or a package that pulls it in)
# would fetch a multi-GB CUDA build where only the CPU wheel is wanted.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output

.PHONY: install test test-fast demo demo-quick bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[test,fast-cpu]"
	touch $(STAMP)

# pytest's exit 5 (no tests collected) fails the target like any other failure.
test: $(STAMP)
	@$(PY) -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests; failing." >&2; fi; \
	exit $$status

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/labelsharing demo --out $(DEMO_OUT)

demo-quick: $(STAMP)
	$(VENV)/bin/labelsharing demo --quick --out $(DEMO_OUT)

# Every benchmark script, one after the other (not tests: nothing is asserted). Figures go to
# stdout; paper_comparison (10-15 min on 2 cores) writes its tables into $(BENCH_OUT).
BENCH_OUT ?= bench_output
bench: $(STAMP)
	$(PY) benchmarks/backends.py
	$(PY) benchmarks/inference_speed.py
	$(PY) benchmarks/training_throughput.py
	$(PY) benchmarks/paper_comparison.py --out $(BENCH_OUT)/paper_comparison

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(BENCH_OUT) .pytest_cache
