"""The secured broker: who may write and read what (ACLs from dataflows/topics.py)."""

from __future__ import annotations

import os

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from dataflows.kafka_security import confluent_config
from dataflows.topics import provision
from tests.integration.kafka_io import principal_env

pytestmark = pytest.mark.skipif(
    os.environ.get("ENSEMBLE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT") == "PLAINTEXT",
    reason="the plain-text quick-start broker has no authentication",
)


def _produce(bootstrap: str, user: str, topic: str) -> KafkaError | None:
    """Produce one message as `user`; the delivery error (None when acknowledged)."""
    result: list = []
    p = Producer(
        confluent_config(
            bootstrap, principal_env(user), **{"message.timeout.ms": 10_000, "log_level": 0}
        )
    )
    p.produce(topic, b"x", key=b"BTC-PERP", on_delivery=lambda err, msg: result.append(err))
    p.flush(15)
    assert result, "no delivery report"
    return result[0]


def _read_error(
    bootstrap: str, user: str, topic: str, group: str = "ensemble-flow"
) -> KafkaError | None:
    """Fetch from `topic` as `user`: the first error, or None when the read is allowed."""
    c = Consumer(
        confluent_config(
            bootstrap,
            principal_env(user),
            **{"group.id": group, "enable.partition.eof": True, "log_level": 0},
        )
    )
    c.assign([TopicPartition(topic, 0, 0)])
    try:
        for _ in range(20):
            m = c.poll(0.5)
            if m is not None and m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    return None
                return m.error()
        return None
    finally:
        c.close()


def test_a_principal_without_rights_on_a_topic_is_refused(kafka_bootstrap, prefix):
    provision(kafka_bootstrap, prefix)
    # a forged operator command from the alerts consumer's credentials
    err = _produce(kafka_bootstrap, "alerts", f"{prefix}.control")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # forged health records (what made the alerts consumer drop real ones): only the flow
    for user in ("operator", "ingestor", "copilot", "alerts"):
        err = _produce(kafka_bootstrap, user, f"{prefix}.health")
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, user
    # the operator may not read market data
    err = _read_error(kafka_bootstrap, "operator", f"{prefix}.trades")
    assert err is not None and err.code() in (
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    )


def test_each_component_may_do_its_own_job(kafka_bootstrap, prefix):
    provision(kafka_bootstrap, prefix)
    assert _produce(kafka_bootstrap, "operator", f"{prefix}.control") is None
    assert _produce(kafka_bootstrap, "ingestor", f"{prefix}.trades") is None
    assert _produce(kafka_bootstrap, "flow", f"{prefix}.health") is None
    assert _read_error(kafka_bootstrap, "flow", f"{prefix}.trades") is None
    assert _read_error(kafka_bootstrap, "alerts", f"{prefix}.health", "ensemble-alerts") is None


def test_a_wrong_password_is_refused(kafka_bootstrap, tmp_path):
    wrong = tmp_path / "pw"
    wrong.write_text("not-the-password")
    env = {**principal_env("flow"), "ENSEMBLE_KAFKA_SASL_PASSWORD_FILE": str(wrong)}
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(confluent_config(kafka_bootstrap, env, log_level=0))
    with pytest.raises(KafkaException) as e:
        admin.list_topics(timeout=5)
    assert e.value.args[0].code() in (KafkaError._AUTHENTICATION, KafkaError._TRANSPORT)


def test_a_plaintext_client_gets_nothing_from_the_tls_port(kafka_bootstrap):
    from confluent_kafka.admin import AdminClient

    plain = AdminClient({"bootstrap.servers": kafka_bootstrap, "log_level": 0})
    with pytest.raises(KafkaException):
        plain.list_topics(timeout=3)


def test_the_alerts_consumer_on_a_group_its_principal_may_not_use_says_which_it_may(
    kafka_bootstrap, prefix, monkeypatch, capsys
):
    """docs/operations.md ran the consumer as group `ops-doc`: as the alerts principal the
    broker refuses that group, and the start was a kafka-python traceback."""
    from consumers.alerts import main

    provision(kafka_bootstrap, prefix)
    for name, value in principal_env("alerts").items():
        monkeypatch.setenv(name, value)
    env = {
        "ENSEMBLE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "ENSEMBLE_TOPIC_PREFIX": prefix,
        "ENSEMBLE_ALERTS_GROUP_ID": "ops-doc",
    }
    assert main(["--until-idle", "1"], env) == 2
    err = capsys.readouterr().err
    assert "cannot start" in err and "'ops-doc'" in err, err
    assert "'ensemble-alerts'" in err and "ENSEMBLE_ALERTS_GROUP_ID" in err, err
    # a group named as the ACL allows starts and reads
    allowed = {**env, "ENSEMBLE_ALERTS_GROUP_ID": "ensemble-alerts-t"}
    assert main(["--until-idle", "1"], allowed) == 0
