# Two commands a new user needs: `make run` and `make test`. Each sets up what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# One stamp per extra: `make run` installs the runtime only, `make test` adds the test tools.
RUNTIME := $(VENV)/.installed-runtime
TESTING := $(VENV)/.installed-test

.PHONY: run test lint typecheck format bench bench-dashboard soak system-deps clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

$(TESTING): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(RUNTIME)

## run: set up, then start Redis (if none answers at REDIS_URL), a worker and the web on $PORT
run: $(RUNTIME)
	$(PY) -m taskstream.web.launch

SUDO := $(if $(filter root,$(shell whoami)),,sudo)

## system-deps: Debian packages the tests use: chromium (browser tests, no browser download),
## redis-server (the TLS and Sentinel tests; `redis-server --sentinel` is the sentinel), openssl
## (the TLS test's certificates) and rabbitmq-server (the RabbitMQ-broker tests start one when
## none answers on 127.0.0.1:5672)
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	test -x /usr/lib/rabbitmq/bin/rabbitmq-server || missing="$$missing rabbitmq-server"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

## test: set up, lint, then run every test against real Redis, Celery, Hypercorn and Chromium
# Four pytest processes (pytest-xdist), each test file kept in one (its module fixtures start
# once); every deployment has a key prefix of its own. Four on two cores: the tests mostly wait
# on the real processes they drive. PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 4
test: lint system-deps
	$(PY) -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

## lint: ruff (style and mistakes) and mypy (types), both clean
lint: $(TESTING) typecheck
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The folders install under other names (tasks/ as taskstream, service/ as taskstream.web,
# taskctl/ as taskstream.client), which mypy cannot follow: it reads a tree of links named as
# installed.
TYPES := $(VENV)/typecheck
typecheck: $(TESTING)
	rm -rf $(TYPES) && mkdir -p $(TYPES)/taskstream
	ln -s $(CURDIR)/tasks/*.py $(CURDIR)/tasks/py.typed $(TYPES)/taskstream/
	ln -s $(CURDIR)/service $(TYPES)/taskstream/web
	ln -s $(CURDIR)/taskctl $(TYPES)/taskstream/client
	MYPYPATH=$(TYPES) $(PY) -m mypy -p taskstream

format: $(TESTING)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

## bench: the performance figures quoted in the README
bench: $(TESTING)
	$(PY) -m bench

## bench-dashboard: the dashboard in Chromium with 1,000 tasks and 50 changes a second
bench-dashboard: $(TESTING) system-deps
	$(PY) -m bench.dashboard

## soak: many tasks with faults injected at random (not part of `make test`)
soak: $(TESTING)
	$(PY) -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
