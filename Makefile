# The two commands for a fresh clone (see README.md):
#   make deploy   bootstrap this machine, start the sample stack, run the gates
#   make test     bootstrap this machine, run the whole test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PROFILE ?= development

.PHONY: deploy test test-deps venv
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[bench,test]'
	touch $@

deploy: venv
	$(BIN)/invoke bootstrap --profile $(PROFILE)
	$(BIN)/invoke up --profile $(PROFILE)
	$(BIN)/pytest features/ -p no:cacheprovider --profile $(PROFILE) --junitxml=reports/gates.xml

# The ACME tests run Debian's pebble (Let's Encrypt's test CA) on loopback, the
# registry tests Debian's docker-registry, the switch benchmark Debian's wrk.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
test-deps:
	@{ command -v pebble && command -v docker-registry && command -v wrk; } >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pebble docker-registry wrk; }

# The lint and the format check first (ruff, as pyproject.toml configures it), then four test processes, one
# test module each at a time: every module brings up its own isolated stacks, so they
# share nothing but the engine. The modules mostly wait on it (two processes kept two
# cores under a third busy), so four fit two cores.
test: venv test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/invoke bootstrap
	$(BIN)/pytest -n 4 --dist loadfile --no-loadscope-reorder
