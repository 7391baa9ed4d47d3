#!/usr/bin/env bash
# Run a command with a real Kafka broker: start one (or reuse a running one on purpose),
# export its bootstrap address as ENSEMBLE_TEST_KAFKA and the admin principal's client
# settings (ENSEMBLE_KAFKA_SECURITY_PROTOCOL, ...), run the command, and stop the
# broker afterwards only if this script started it.
#   deploy/kafka/with-broker.sh .venv/bin/python -m pytest -q
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if "$here/broker.sh" status >/dev/null 2>&1; then started=0; else started=1; fi
bootstrap="$("$here/broker.sh" start)"
trap 'if [[ $started == 1 ]]; then "$here/broker.sh" stop >/dev/null; fi' EXIT
# The command runs as the admin principal; ENSEMBLE_TEST_KAFKA_STATE lets tests act as
# another component (`broker.sh env USER`).
eval "$("$here/broker.sh" env admin)"
ENSEMBLE_TEST_KAFKA="$bootstrap" ENSEMBLE_TEST_KAFKA_SECURITY="${ENSEMBLE_KAFKA_SECURITY:-sasl_ssl}" "$@"
