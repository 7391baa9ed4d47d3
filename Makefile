# The two commands a newcomer needs:
#   make run    set everything up, then run the main job on its embedded default
#   make test   set everything up, then run the whole test suite
# Everything else is a building block of those two.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# Every dependency is installed at the version and hash in the lock files (pip-tools):
# requirements-dev.lock here, requirements.lock (no dev tools) in deploy/Dockerfile.
LOCK   := requirements-dev.lock
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | sha256sum | cut -c1-12)

.PHONY: show-config run test lint bench bench-throughput bench-scale bench-nautilus bench-latency profile bench-kafka bench-kafka-scale bench-live bench-year bench-cohorts train evaluate backtest setup lock clean kafka-up kafka-down live

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; Ensemble needs Python 3.11 (Bytewax 0.21.1 has no wheels past 3.12)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

# After changing a dependency in pyproject.toml: re-resolve both lock files (with every
# file's hash). Versions already locked stay unless pyproject rules them out; the runtime
# lock starts from the dev lock's pins, so the two agree (tests/test_lock.py checks).
# `make lock LOCK_ARGS=--upgrade` moves everything to the newest allowed versions.
LOCK_ARGS ?=
COMPILE   := $(BIN)/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS)
lock: setup
	$(COMPILE) --extra dev -o requirements-dev.lock pyproject.toml
	cp requirements-dev.lock requirements.lock
	$(COMPILE) -o requirements.lock pyproject.toml

# The configuration in force and where each value came from (file, environment, default).
show-config: setup
	$(BIN)/python -m dataflows.show_config

run: setup
	$(BIN)/python -m bytewax.run dataflows.ensemble

# The integration tests need a real Kafka broker: start one (or reuse a running one on
# purpose, e.g. from `make kafka-up`), run everything, and stop the broker only if this
# command started it.
test: setup
	ENSEMBLE_KAFKA_PYTHON=$(BIN)/python deploy/kafka/with-broker.sh $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/bench_flow.py

bench-year: setup
	$(BIN)/python bench/bench_year.py

# Issue 16 (README "Benchmarks", docs/benchmarks.md): ticks/s from a 2M-tick parquet file; 1 worker vs -w 2 vs
# two processes on two symbols; beside NautilusTrader (from its own venv, not a project
# dependency: NAUTILUS_PYTHON=/tmp/nautilus/bin/python); bar end → intent on a paced
# clock; where the time goes.
NAUTILUS_PYTHON ?= $(BIN)/python
bench-throughput: setup
	$(BIN)/python bench/bench_throughput.py

bench-scale: setup
	$(BIN)/python bench/bench_throughput.py --compare-workers --ticks 1000000

bench-nautilus: setup
	$(BIN)/python bench/bench_nautilus.py --nautilus-python $(NAUTILUS_PYTHON)

bench-latency: setup
	$(BIN)/python bench/bench_latency.py

profile: setup
	$(BIN)/python bench/profile_flow.py

bench-cohorts: setup
	$(BIN)/python bench/bench_cohorts.py --reference 4

backtest: setup
	$(BIN)/python -m backtest --out out/backtest

bench-kafka: setup
	ENSEMBLE_KAFKA_PYTHON=$(BIN)/python deploy/kafka/with-broker.sh $(BIN)/python bench/bench_kafka.py

# Issue 16: 2 symbols' trades from Kafka, 1 worker vs -w 2 vs two processes, outputs compared.
bench-kafka-scale: setup
	ENSEMBLE_KAFKA_PYTHON=$(BIN)/python deploy/kafka/with-broker.sh $(BIN)/python bench/bench_kafka_scale.py $(KAFKA_SCALE_ARGS)

bench-live: setup
	ENSEMBLE_KAFKA_PYTHON=$(BIN)/python deploy/kafka/with-broker.sh $(BIN)/python bench/bench_live.py

# Paper trading on a live market (README "Live market data"): the local broker, the topics,
# the ingestor in the background (recording every frame), the flow in the foreground with
# recovery; Ctrl-C stops the flow, then the ingestor flushes and exits.
LIVE_VENUE          ?= hyperliquid
LIVE_SYMBOLS        ?= BTC-PERP,ETH-PERP
LIVE_CANDLE_SYMBOLS ?= ETH-PERP
LIVE_DIR            ?= out/live
LIVE_ARGS           ?=
live: setup
	@mkdir -p $(LIVE_DIR)
	bootstrap=$$(ENSEMBLE_KAFKA_PYTHON=$(BIN)/python deploy/kafka/broker.sh start) && \
	( eval "$$(deploy/kafka/broker.sh env admin)" && \
	  $(BIN)/python -m dataflows.topics --bootstrap $$bootstrap ) && \
	$(BIN)/python -m dataflows.recovery $(LIVE_DIR)/state && \
	{ ( eval "$$(deploy/kafka/broker.sh env ingestor)" && \
	    exec $(BIN)/python -m marketdata.live --venue $(LIVE_VENUE) --symbols $(LIVE_SYMBOLS) \
	    --candle-symbols "$(LIVE_CANDLE_SYMBOLS)" --bootstrap $$bootstrap --metrics-port 9108 \
	    --record $(LIVE_DIR)/$(LIVE_VENUE)-$$(date -u +%Y%m%dT%H%M%SZ).jsonl.gz $(LIVE_ARGS) ) & \
	  ingest=$$!; trap 'kill -TERM '$$ingest' 2>/dev/null; wait '$$ingest'' EXIT INT TERM; \
	  eval "$$(deploy/kafka/broker.sh env flow)" && \
	  ENSEMBLE_KAFKA_BOOTSTRAP=$$bootstrap ENSEMBLE_KAFKA_TAIL=1 ENSEMBLE_CLOCK=wall \
	  ENSEMBLE_SYMBOLS=$(LIVE_SYMBOLS) ENSEMBLE_CANDLE_SYMBOLS="$(LIVE_CANDLE_SYMBOLS)" \
	  BYTEWAX_DATAFLOW_API_ENABLED=true \
	  $(BIN)/python -m bytewax.run dataflows.ensemble -r $(LIVE_DIR)/state -s 30 -b 0; }

# A new artifact in out/models/<model_id>; the shipped one is replaced only when asked:
#   make train TRAIN_ARGS="--out models/artifacts/default --overwrite"
TRAIN_ARGS ?=
train: setup
	$(BIN)/python -m models.train $(TRAIN_ARGS)

# Signal research (issue 13): candidates and baselines on purged walk-forward folds and
# the untouched test block; rewrites models/research/card.md and results.json.
evaluate: setup
	$(BIN)/python -m models.evaluate

clean:
	rm -rf $(VENV) out .pytest_cache

kafka-up: setup
	ENSEMBLE_KAFKA_PYTHON=$(BIN)/python deploy/kafka/broker.sh start

kafka-down:
	deploy/kafka/broker.sh stop
