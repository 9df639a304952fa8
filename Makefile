# Every target installs first when needed, so each is one command on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint format clean docs docs-serve

install: $(STAMP)

# torch/torchvision versions come from constraints.txt; pyproject.toml keeps ranges.
$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# Train, score best.pt on the held-out people's pairs with the full protocol, export it (with a
# parity check) and verify two held-out images with the exported model.
demo: install
	$(BIN)/facetrain train --config configs/demo.yaml --overwrite
	$(BIN)/facetrain eval --checkpoint runs/demo/best.pt --json runs/demo/eval.json --plot runs/demo/eval.png
	$(BIN)/facetrain export --checkpoint runs/demo/best.pt --out runs/demo/model.pt \
		--threshold-from runs/demo/eval.json --parity-images facetrain/assets/orl
	$(BIN)/facetrain verify runs/demo/model.pt facetrain/assets/orl/s11/1.pgm facetrain/assets/orl/s11/2.pgm

# Two passes: the tests spread over both cores (pytest-xdist), then the tests marked `alone` (several
# processes or real signals) one at a time. Every process gets one intra-op thread: two test workers,
# or two ranks, with two threads each would put four busy threads on the two cores.
# pytest exits 5 when it collects no tests; that is not a failure of the code.
PYTEST_JOBS ?= 2
test: install
	@export OMP_NUM_THREADS=1; rc=0; \
	$(BIN)/python -m pytest -q -n $(PYTEST_JOBS) --dist worksteal -m "not alone" || rc=$$?; \
	if [ $$rc -eq 5 ]; then rc=0; fi; \
	$(BIN)/python -m pytest -q -m alone || rc2=$$?; \
	if [ "$${rc2:-0}" -ne 0 ] && [ "$${rc2:-0}" -ne 5 ]; then rc=$$rc2; fi; \
	exit $$rc

# The documentation site (MkDocs, Material theme) from README.md and docs/, into site/. --strict: a
# broken link or anchor, or a page left out of the navigation, fails the build (CI runs it).
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

lint: install
	$(BIN)/ruff check facetrain tests scripts
	$(BIN)/ruff format --check facetrain tests scripts
	$(BIN)/python scripts/config_reference.py --check

format: install
	$(BIN)/ruff format facetrain tests scripts
	$(BIN)/ruff check --fix facetrain tests scripts

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache *.egg-info
