# Every target creates .venv and installs the project (with its dev, experiments and vision
# extras) when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch comes from the machine's local wheel cache where one exists (CPU use is enough).
TORCH_SPEC ?= torch>=2.2

.PHONY: demo test lint benchmark reproduce clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,experiments,vision]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) experiments/train.py

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The overhead benchmark also times the original Cockpit where it is installed (".[compare]").
benchmark: $(STAMP)
	if $(PY) -c "import cockpit" 2>/dev/null; then \
		$(PY) experiments/benchmark_overhead.py --compare; \
	else \
		$(PY) experiments/benchmark_overhead.py; \
	fi
	$(PY) experiments/benchmark_interval.py
	$(PY) experiments/benchmark_memory.py
	$(PY) experiments/benchmark_histogram.py

reproduce: $(STAMP)
	for script in scaled_inputs vanishing_gradients learning_rates figure1 convex_vs_deep; do \
		$(PY) experiments/reproduce/$$script.py || exit 1; \
	done

clean:
	rm -rf $(VENV) build *.egg-info
