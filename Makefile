# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create/reuse .venv and install torch==2.13.0 (CPU) before everything else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR := build/demo
EVAL_DIR := build/eval

.PHONY: demo test lint venv clean gallery evaluate evaluate-sets evaluate-sets-large evaluate-sets-confirm evaluate-sets-fresh compare wheel-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q torch==2.13.0 -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m backmice_vision demo --out $(DEMO_DIR)

lint: $(STAMP)
	$(PY) -m ruff check backmice_vision tests scripts benchmarks
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

# The wheel as a user installs it: a fresh venv outside the repository, a US phantom, backmice detect.
wheel-check:
	PYTHON=$(PYTHON) bash scripts/check_wheel.sh

gallery: $(STAMP)
	$(PY) scripts/gallery.py --out docs/gallery

# Held-out, shifted phantom sets (other seeds and settings) -> docs/evaluation (JSON + PNG plots).
$(EVAL_DIR)/%_shifted/.done: configs/phantom_%_shifted.yaml | $(STAMP)
	rm -rf $(@D)
	$(PY) -m backmice_vision phantom --modality $* --cases 30 --seed $(if $(filter us,$*),9101,9202) \
		--config $< --out $(@D) --quiet
	touch $@

evaluate: $(EVAL_DIR)/us_shifted/.done $(EVAL_DIR)/mr_shifted/.done
	$(PY) -m backmice_vision evaluate --data $(EVAL_DIR)/us_shifted $(EVAL_DIR)/mr_shifted --out docs/evaluation

# Shifted and stress sets for comparing candidates (issue 17), then shipped vs candidates, with and
# without the anatomical plausibility test -> build/evalres/summary.md.
EVAL2 := build/eval2
EVAL2_CASES ?= 20
$(EVAL2)/%/.done: | $(STAMP)
	rm -rf $(@D)
	$(PY) -m backmice_vision phantom --modality $(word 1,$(subst _, ,$*)) --cases $(EVAL2_CASES) \
		--seed $(if $(filter us_shifted,$*),9101,$(if $(filter mr_shifted,$*),9202,$(if $(filter us_stress,$*),9303,9404))) \
		--config configs/phantom_$*.yaml --out $(@D) --quiet
	touch $@

evaluate-sets: $(EVAL2)/us_shifted/.done $(EVAL2)/mr_shifted/.done $(EVAL2)/us_stress/.done $(EVAL2)/mr_stress/.done

# A second, larger block of sets (40 cases each, other seeds): on the 20-case sets alone the 95 %
# case-bootstrap interval of the sensitivity spans 0.6-1.0, wider than any difference between candidates.
# Compare on both blocks together (scripts/compare_evaluations.py takes several folders per model).
EVAL3 := build/eval3
$(EVAL3)/%/.done: | $(STAMP)
	rm -rf $(@D)
	$(PY) -m backmice_vision phantom --modality $(word 1,$(subst _, ,$*)) --cases 40 \
		--seed $(if $(filter us_shifted,$*),9111,$(if $(filter mr_shifted,$*),9212,$(if $(filter us_stress,$*),9313,9414))) \
		--config configs/phantom_$*.yaml --out $(@D) --quiet
	touch $@

evaluate-sets-large: $(EVAL3)/us_shifted/.done $(EVAL3)/us_stress/.done $(EVAL3)/mr_shifted/.done $(EVAL3)/mr_stress/.done

# A third US block (40 cases per set, seeds never used before), generated after US 0.4.0's two inference
# zooms were chosen from misses of the first two blocks: the confirmation of that choice.
EVAL4 := build/eval4
$(EVAL4)/%/.done: | $(STAMP)
	rm -rf $(@D)
	$(PY) -m backmice_vision phantom --modality us --cases 40 --seed $(if $(filter us_shifted,$*),9131,9333) \
		--config configs/phantom_$*.yaml --out $(@D) --quiet
	touch $@

evaluate-sets-confirm: $(EVAL4)/us_shifted/.done $(EVAL4)/us_stress/.done

# A fourth block of every set (40 cases each, seeds never used before), generated after the scratch US
# line's stages had been designed from the misses of blocks 1-3: the unbiased read of those candidates
# and of MR 0.4.0's instance norm against 0.3.0.
EVAL5 := build/eval5
$(EVAL5)/%/.done: | $(STAMP)
	rm -rf $(@D)
	$(PY) -m backmice_vision phantom --modality $(word 1,$(subst _, ,$*)) --cases 40 \
		--seed $(if $(filter us_shifted,$*),9151,$(if $(filter mr_shifted,$*),9252,$(if $(filter us_stress,$*),9353,9454))) \
		--config configs/phantom_$*.yaml --out $(@D) --quiet
	touch $@

evaluate-sets-fresh: $(EVAL5)/us_shifted/.done $(EVAL5)/us_stress/.done $(EVAL5)/mr_shifted/.done $(EVAL5)/mr_stress/.done

compare: evaluate-sets
	bash scripts/evaluate_candidates.sh

clean:
	rm -rf build $(VENV)
