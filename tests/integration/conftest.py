"""Integration tests run against a real Apache Kafka broker that `make test` starts
(deploy/kafka/broker.sh) and names in ENSEMBLE_TEST_KAFKA. Without it they skip locally
and fail in CI, so a broker that did not start can never pass for a green run."""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = os.environ.get("ENSEMBLE_TEST_KAFKA")
    if not bootstrap:
        msg = (
            "no Kafka broker: run `make test`, or `deploy/kafka/broker.sh start` and set "
            "ENSEMBLE_TEST_KAFKA=127.0.0.1:19092"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return bootstrap


@pytest.fixture
def prefix() -> str:
    """Topics of their own for each test, so tests never see each other's messages."""
    return f"it-{uuid.uuid4().hex[:10]}"
