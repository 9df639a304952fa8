# Every target installs first when needed, so each is one command on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint format clean

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

# pytest exits 5 when it collects no tests; that is not a failure of the code.
test: install
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

lint: install
	$(BIN)/ruff check facetrain tests scripts
	$(BIN)/ruff format --check facetrain tests scripts
	$(BIN)/python scripts/config_reference.py --check

format: install
	$(BIN)/ruff format facetrain tests scripts
	$(BIN)/ruff check --fix facetrain tests scripts

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
