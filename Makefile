# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv, install the CPU build of torch first (a bare `torch` pulls a multi-GB
# CUDA build), then edgezoo with its extras.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint lint-imports bench-results constraints

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[all]"
	touch $@

demo: setup
	$(BIN)/edgezoo demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory lint-imports

# import-linter reads packages from disk, and in this repository the stages are top-level
# folders that only become edgezoo.zoo, edgezoo.export, ... when installed: so the
# contracts (pyproject.toml) are checked on the wheel's own layout.
lint-imports: setup
	rm -rf build/lint build/lib  # build/lib: setuptools would package stale files left there
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir build/lint .
	$(BIN)/python -m zipfile -e build/lint/edgezoo-*.whl build/lint/site
	cd build/lint/site && $(CURDIR)/$(BIN)/lint-imports $(CURDIR)/pyproject.toml

test: lint
	$(BIN)/python -m pytest -q

# Regenerate the committed benchmark results and benchmarks/README.md (about 3 h on 2 quiet cores).
bench-results: setup
	$(BIN)/pip install --quiet -c constraints.txt -e ".[peers]"
	$(BIN)/edgezoo demo --out runs/demo
	cp runs/demo/demo.md benchmarks/results/demo.md
	$(BIN)/python -m benchmarks.bench --sizes nano,micro,mini,small,medium --batches 1,4 --prompts 32,512 \
		--peers pytorch-eager,optimum-ort,ort-genai,ort-genai:int4,ctranslate2,ctranslate2:int8,llama-cpp,llama-cpp:int4
	$(BIN)/python -m benchmarks.bench --sizes nano,micro,mini,small --precisions fp32,int8,int4 --batches 1 --prompts 32 \
		--peers ort-genai,ort-genai:int4,llama-cpp,llama-cpp:int8,llama-cpp:int4 --out benchmarks/results/bench_loop
	$(BIN)/python -m benchmarks.sweep --mode compute --flops 4e12 --bench benchmarks/results/bench.json --work runs/sweep
	$(BIN)/python -m benchmarks.sweep --mode tokens
	$(BIN)/python -m benchmarks.sweep --mode isoflop
	$(BIN)/python -m benchmarks.sweep --mode lr
	$(BIN)/python -m benchmarks.quantize_sizes --finetune-steps 60
	$(BIN)/python -m benchmarks.prune_speed --sizes mini,small,medium --rounds 5
	$(BIN)/python -m benchmarks.serve_load runs/demo --seconds 6 --rounds 5
	$(BIN)/python -m benchmarks.serve_abuse runs/demo --clients 64 --seconds 60 --rounds 2
	$(BIN)/python -m benchmarks.serve_mixed runs/demo --clients 1,4,16,64 --seconds 15 --rounds 3
	$(BIN)/edgezoo train --size pico --distill-from runs/demo --distill-weight 0 --steps 200 --context 128 --out runs/draft/pico-kl0.0 --no-progress
	$(BIN)/edgezoo train --size pico --distill-from runs/demo --distill-weight 0.7 --steps 200 --context 128 --out runs/draft/pico-kl0.7 --no-progress
	$(BIN)/edgezoo export runs/draft/pico-kl0.0 && $(BIN)/edgezoo export runs/draft/pico-kl0.7
	$(BIN)/python -m benchmarks.speculative --target runs/demo --draft runs/draft/pico-kl0.0,runs/draft/pico-kl0.7 --draft-variant gqa --rounds 3
	$(BIN)/edgezoo train --size small --tokenizer runs/demo --steps 500 --batch-size 8 --context 256 --lr 1e-3 --warmup-steps 25 --out runs/spec-small-base --no-progress
	$(BIN)/edgezoo train --size small --init-from runs/spec-small-base --precision bf16 --steps 500 --batch-size 16 --context 256 --lr 1.5e-3 --warmup-steps 20 --out runs/spec-small --no-progress
	$(BIN)/edgezoo export runs/spec-small && $(BIN)/edgezoo quantize runs/spec-small --to int8,int4 --speed-rounds 3
	$(BIN)/edgezoo train --size nano --init-from runs/demo --distill-from runs/spec-small --distill-weight 0.7 --precision bf16 --steps 300 --batch-size 16 --context 256 --lr 1e-3 --warmup-steps 10 --out runs/draft/nano-kl0.7 --no-progress
	$(BIN)/edgezoo export runs/draft/nano-kl0.7
	$(BIN)/python -m benchmarks.speculative --target runs/spec-small --draft runs/demo,runs/draft/nano-kl0.7 --draft-variant gqa --rounds 3 --corpus builtin --out benchmarks/results/speculative_small
	$(BIN)/edgezoo quantize runs/draft/nano-kl0.7 --to int4
	$(BIN)/python -m benchmarks.speculative --target runs/spec-small --draft runs/demo,runs/draft/nano-kl0.7,runs/spec-small --draft-variant gqa-int4 --variants gqa,gqa-int8,gqa-int8-dynamic,gqa-int4 --corpus builtin --rounds 5 --out benchmarks/results/speculative_small_int4draft
	$(BIN)/python -m benchmarks.bench --sizes nano,micro,mini,small,medium --precisions fp32,int8,int4 --batches 1 --prompts 32 --repeats 3 --work runs/bench \
		--peers ort-genai,ort-genai:int8,ort-genai:int4 --peer-prompts 32,512 --peer-rounds 3 --out benchmarks/results/peers_genai
	# On an AVX-512 host without AMX, the same peers_genai line with
	# --out benchmarks/results/peers_genai_avx512, and the speculative_small line (after the
	# recipe above) with --variants gqa,gqa-int8-dynamic --out benchmarks/results/speculative_small_avx512.
	# On an AVX2-only host (no AVX-512/VNNI/AMX), the same peers_genai line with
	# --out benchmarks/results/peers_genai_avx2, and, after training runs/spec-small-base as above:
	# benchmarks.speculative --target runs/spec-small-base --draft runs/demo --draft-variant gqa
	#   --variants gqa,gqa-int8-dynamic --corpus builtin --ablate --out benchmarks/results/speculative_small_avx2
	$(BIN)/python -m benchmarks.call_cost --model runs/bench/lm-small --rounds 20
	$(BIN)/python -m benchmarks.int8_forms --sizes nano,micro,mini,small,medium --rounds 3
	$(BIN)/python -m benchmarks.step_overhead --sizes nano,micro,mini,small
	$(BIN)/python -m benchmarks.steady_mask --sizes nano,micro,small --rounds 11
	$(BIN)/python -m benchmarks.ray_replicas runs/demo --seconds 8 --rounds 3
	$(BIN)/python -m benchmarks.s2s_quant --steps 1500
	$(BIN)/python -m benchmarks.s2s_bench --sizes nano,micro --precisions fp32,int8,int4 --rounds 5
	$(BIN)/python -m benchmarks.runtime_memory --sizes nano,small --rounds 3
	$(BIN)/python -m benchmarks.export_cost
	$(BIN)/python -m benchmarks.train_throughput --big ""
	$(BIN)/python -m benchmarks.ddp_scaling
	$(BIN)/python -m benchmarks.tp_memory
	$(BIN)/python -m benchmarks.tune_compare
	$(BIN)/python -m benchmarks.report

# Re-pin constraints.txt to what .venv holds now (after a deliberate upgrade and a green `make test`).
constraints: setup
	{ head -2 constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v -i "^torch==\|^py-spy==\| @ "; } > constraints.tmp
	mv constraints.tmp constraints.txt
