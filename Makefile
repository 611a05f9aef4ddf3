# Two commands do everything on a fresh machine: `make bench-memory` and `make test`.
# The venv sees system site-packages so a machine's own torch (GPU images ship one) is used as is.
PY      := .venv/bin/python
PIP     := $(PY) -m pip
CORE    := .venv/.installed-core
TESTENV := .venv/.installed-test
# What the tests exercise beyond the core: pytest, W&B (offline), Ray and submitit executors.
TEST_EXTRAS ?= dev,wandb,cluster,slurm
PROFILE ?= auto
RUN      = $(PY) -m bench run

.PHONY: install test bench-memory bench-speed bench-lsh-vs-full bench-peers bench-duplication bench-quality \
        bench-capacity bench-gpu bench-micro bench-all report publish clean-venv

install: $(CORE)

$(CORE): pyproject.toml
	@test -x $(PY) || python3 -m venv --system-site-packages .venv
	@# torch first, pinned to the local CPU build only when none is importable (a looser spec pulls CUDA).
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	@# Offline machines (GPU images) bring most dependencies: fall back to the project alone.
	$(PIP) install -q -e . || { echo "dependencies could not be installed (offline?): installing the project alone"; \
	    $(PIP) install -q --no-deps --no-build-isolation -e .; }
	@touch $(CORE)

$(TESTENV): $(CORE)
	$(PIP) install -q -e ".[$(TEST_EXTRAS)]"
	@touch $(TESTENV)

# One pytest worker per core, a test file to a worker (its module fixtures built once): on CI's 2 cores
# the suite runs in about two thirds of the serial time (most tests wait on subprocesses).
test: $(TESTENV)
	$(PY) -m pytest -q -n auto --dist loadfile

bench-memory: $(CORE)
	$(RUN) memory --profile $(PROFILE)

bench-speed: $(CORE)
	$(RUN) speed --profile $(PROFILE)

bench-lsh-vs-full: $(CORE)
	$(RUN) lsh_vs_full --profile $(PROFILE)

bench-peers: $(CORE)
	$(PIP) install -q -e ".[peers]"
	$(RUN) peers --profile $(PROFILE)

bench-duplication: $(CORE)
	$(RUN) duplication --profile $(PROFILE)

# What each trick costs in quality: byte-level LMs on real text (DATA=path/to/enwik8 to use enwik8).
bench-quality: $(CORE)
	$(RUN) quality --profile $(PROFILE) $(if $(DATA),--data $(DATA))

# The longest sequence each configuration trains on under the profile's memory budget.
# PROFILE=gpu: one slice of at most 9 minutes (one device command); run it again until every search is done.
bench-capacity: $(CORE)
	$(RUN) capacity --profile $(PROFILE) $(if $(filter gpu,$(PROFILE)),--time-budget-s 540)

# Every suite's gpu profile in one slice of at most 9 minutes; run it again until it says complete.
# CAMPAIGN_ARGS=--dry-run lists the slices and points instead (works on CPU).
bench-gpu: $(CORE)
	@$(PIP) install -q -e ".[peers]" 2>/dev/null || echo "peers not installable (offline?): their points are recorded as skipped"
	$(PY) -m bench campaign --profile gpu $(CAMPAIGN_ARGS)

bench-all: bench-memory bench-speed bench-lsh-vs-full bench-duplication

# Micro-benchmark of one causal attention layer (pytest-benchmark); peers join when installed.
bench-micro: $(TESTENV)
	$(PY) -m pytest benchmarks/test_attention_layer.py benchmarks/test_hash.py benchmarks/test_profiling_overhead.py --benchmark-enable --benchmark-only \
	    --benchmark-columns=min,median,max,rounds -p no:cacheprovider $(BENCH_ARGS)

report: $(CORE)
	$(PY) -m bench report $(RUN_DIR)

publish: $(CORE)
	$(PIP) install -q -e ".[wandb]"
	$(PY) -m bench publish $(RUN_DIR)

clean-venv:
	rm -rf .venv
