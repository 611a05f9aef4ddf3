# Two commands do everything on a fresh machine: `make bench-memory` and `make test`.
# The venv sees system site-packages so a machine's own torch (GPU images ship one) is used as is.
PY      := .venv/bin/python
PIP     := $(PY) -m pip
STAMP   := .venv/.installed
EXTRAS  ?= dev,wandb,cluster,slurm
PROFILE ?= auto
RUN      = $(PY) -m bench run

.PHONY: install test bench-memory bench-speed bench-lsh-vs-full bench-peers bench-duplication \
        bench-micro bench-all report publish clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv --system-site-packages .venv
	@# torch first, pinned to the local CPU build only when none is importable (a looser spec pulls CUDA).
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

bench-memory: $(STAMP)
	$(RUN) memory --profile $(PROFILE)

bench-speed: $(STAMP)
	$(RUN) speed --profile $(PROFILE)

bench-lsh-vs-full: $(STAMP)
	$(RUN) lsh_vs_full --profile $(PROFILE)

bench-peers: $(STAMP)
	$(PIP) install -q -e ".[$(EXTRAS),peers]"
	$(RUN) peers --profile $(PROFILE)

bench-duplication: $(STAMP)
	$(RUN) duplication --profile $(PROFILE)

bench-all: bench-memory bench-speed bench-lsh-vs-full bench-duplication

# Micro-benchmark of one causal attention layer (pytest-benchmark); peers join when installed.
bench-micro: $(STAMP)
	$(PY) -m pytest benchmarks/test_attention_layer.py --benchmark-enable --benchmark-only \
	    --benchmark-columns=min,median,max,rounds -p no:cacheprovider $(BENCH_ARGS)

report: $(STAMP)
	$(PY) -m bench report $(RUN_DIR)

publish: $(STAMP)
	$(PY) -m bench publish $(RUN_DIR)

clean-venv:
	rm -rf .venv
