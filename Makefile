# Two entry points (see README): `make demo` and `make test`. Both install
# what they need on a fresh Debian/Ubuntu machine with Python >= 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Without an NVIDIA GPU, torch comes from PyTorch's CPU wheel index (~200 MB instead of
# several GB of CUDA libraries from PyPI) when that index answers; machines that reach only a
# package mirror use their default index. Override: make TORCH_INDEX=https://download.pytorch.org/whl/cu126
CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
	|| { $(PYTHON) -c "import urllib.request; urllib.request.urlopen('$(CPU_INDEX)/', timeout=5)" \
	     >/dev/null 2>&1 && echo $(CPU_INDEX); })

.PHONY: demo test system-deps bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned, from the CPU index when there is no GPU (TORCH_INDEX above)
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Speech synthesis for the corpus builder and its tests.
system-deps:
	@command -v espeak-ng >/dev/null && command -v flite >/dev/null && \
	  test -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts && test -d /usr/share/festival/voices/english/ked_diphone || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends espeak-ng flite \
	      festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts >/dev/null; }

demo: $(STAMP) system-deps
	$(BIN)/ota demo

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/runtime.py
