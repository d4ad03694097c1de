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
	$(PY) -m pip install --quiet -e ".[test,fast-cpu,onnx,dicom,federated,serve]"
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
# stdout (benchmarks/README.md records them); the demo model (for the backends' Dice), the predict
# benchmark's phantom and fitted model, and paper_comparison's tables (10-15 min on 2 cores) go
# into $(BENCH_OUT). The demo model is trained once (a few minutes), then reused.
BENCH_OUT ?= bench_output
BENCH_DEMO := $(BENCH_OUT)/demo
bench: $(STAMP) $(BENCH_DEMO)/model_4tasks/model.json
	$(PY) benchmarks/backends.py --model $(BENCH_DEMO)/model_4tasks --datasets $(BENCH_DEMO)/data/*
	$(PY) benchmarks/inference_speed.py --work $(BENCH_OUT)/predict
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/slicer_round_trip.py
	$(PY) benchmarks/server_load.py
	$(PY) benchmarks/training_throughput.py
	$(PY) benchmarks/federated_vs_pooled.py --work $(BENCH_OUT)/federated
	$(PY) benchmarks/federated_joining.py --work $(BENCH_OUT)/federated_joining
	$(PY) benchmarks/paper_comparison.py --out $(BENCH_OUT)/paper_comparison

$(BENCH_DEMO)/model_4tasks/model.json: | $(STAMP)
	$(VENV)/bin/labelsharing --progress none demo --out $(BENCH_DEMO)

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(BENCH_OUT) .pytest_cache
