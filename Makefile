# The two front-door commands (see README). Both run scripts/setup first, which installs
# the Debian tools and the virtual environment on a fresh machine and is quick when done.
CONFIG ?= config/proxy.yaml
PYTEST_ARGS ?=

.PHONY: run test bench setup
setup:
	./scripts/setup

run: setup
	.venv/bin/proxy run -c $(CONFIG)

test: setup
	.venv/bin/pytest $(PYTEST_ARGS)

bench: setup
	./scripts/bench
