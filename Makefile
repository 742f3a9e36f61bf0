# Thinkgate: the two commands a newcomer needs are `make serve` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.thinkgate-installed

.PHONY: install serve test test-fast lint model eval bench soak clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	@bash scripts/install.sh
	@touch $@

serve: install
	$(VENV)/bin/thinkgate serve $(ARGS)

test: install
	@bash scripts/system-deps.sh
	@bash scripts/client-deps.sh
	$(VENV)/bin/pytest $(ARGS)

# The fast layer, in seconds: no slow test (gateway processes, CLI runs, training), no engine, no browser,
# no PostgreSQL (the markers: pyproject.toml).
test-fast: install
	$(VENV)/bin/pytest -m "not slow and not engine and not browser and not postgres" $(ARGS)

lint: install
	$(VENV)/bin/ruff check app tests training bench checks
	$(VENV)/bin/ruff format --check app tests training bench checks
	$(VENV)/bin/mypy
	$(PY) -m checks.layers

# Rebuild the bundled model from nothing: the recipe's stages, ~90 min on 2 idle cores (ARGS=--quick:
# every stage scaled down to 1.5 min, the pipeline check; see the model card).
model: install
	$(PY) -m training.build $(ARGS)

eval: install
	$(PY) -m training.evaluate $(ARGS)

# Gateway overhead: direct vs Thinkgate vs LiteLLM, fake and real engine (docs/performance.md).
bench: install
	$(PY) -m bench.run $(ARGS)

# 30 minutes of steady load, RSS sampled (ARGS=--minutes 3 for a short run). Not part of `make test`.
soak: install
	$(PY) -m bench.soak $(ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache
