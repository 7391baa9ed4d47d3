# The two commands a newcomer needs:
#   make run    set everything up, then run the main job on its embedded default
#   make test   set everything up, then run the whole test suite
# Everything else is a building block of those two.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: run test lint bench bench-throughput bench-scale bench-nautilus bench-latency profile bench-kafka bench-live bench-year bench-cohorts train evaluate backtest setup clean kafka-up kafka-down live

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; Ensemble needs Python 3.11 (Bytewax 0.21.1 has no wheels past 3.12)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

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

# Issue 16 (README "Benchmarks"): ticks/s from a 2M-tick parquet file; 1 worker vs -w 2 vs
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
	$(BIN)/python -m dataflows.topics --bootstrap $$bootstrap && \
	$(BIN)/python -m dataflows.recovery $(LIVE_DIR)/state && \
	{ $(BIN)/python -m marketdata.live --venue $(LIVE_VENUE) --symbols $(LIVE_SYMBOLS) \
	    --candle-symbols "$(LIVE_CANDLE_SYMBOLS)" --bootstrap $$bootstrap --metrics-port 9108 \
	    --record $(LIVE_DIR)/$(LIVE_VENUE)-$$(date -u +%Y%m%dT%H%M%SZ).jsonl.gz $(LIVE_ARGS) & \
	  ingest=$$!; trap 'kill -TERM '$$ingest' 2>/dev/null; wait '$$ingest'' EXIT INT TERM; \
	  ENSEMBLE_KAFKA_BOOTSTRAP=$$bootstrap ENSEMBLE_KAFKA_TAIL=1 ENSEMBLE_CLOCK=wall \
	  ENSEMBLE_SYMBOLS=$(LIVE_SYMBOLS) ENSEMBLE_CANDLE_SYMBOLS="$(LIVE_CANDLE_SYMBOLS)" \
	  BYTEWAX_DATAFLOW_API_ENABLED=true \
	  $(BIN)/python -m bytewax.run dataflows.ensemble -r $(LIVE_DIR)/state -s 30 -b 0; }

train: setup
	$(BIN)/python -m models.train

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
