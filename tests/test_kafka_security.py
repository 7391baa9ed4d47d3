"""Kafka client security settings from the environment, and rate-limited client logs."""

from __future__ import annotations

import logging

import pytest

from dataflows.kafka_security import KafkaSecurity, confluent_config, kafka_python_config
from dataflows.kafka_sink import RateLimitedLog
from dataflows.settings import Settings
from operators.config import ConfigError

SASL = {
    "ENSEMBLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "ENSEMBLE_KAFKA_SASL_USERNAME": "flow",
    "ENSEMBLE_KAFKA_SASL_PASSWORD": "s3cret-value",
}


def test_default_is_plaintext_and_adds_no_credentials():
    sec = KafkaSecurity.from_env({})
    assert sec.protocol == "PLAINTEXT" and not sec.authenticated
    assert confluent_config("h:1", {}) == {
        "bootstrap.servers": "h:1",
        "security.protocol": "plaintext",
    }
    assert "unauthenticated" in sec.describe()


def test_sasl_ssl_maps_to_both_client_libraries(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {**SASL, "ENSEMBLE_KAFKA_SSL_CA": str(ca)}
    c = confluent_config("h:1", env, **{"linger.ms": 5})
    assert c["security.protocol"] == "sasl_ssl" and c["sasl.mechanism"] == "SCRAM-SHA-512"
    assert c["sasl.username"] == "flow" and c["sasl.password"] == "s3cret-value"
    assert c["ssl.ca.location"] == str(ca) and c["linger.ms"] == 5
    k = kafka_python_config("h:1,h:2", env)
    assert k["bootstrap_servers"] == ["h:1", "h:2"] and k["security_protocol"] == "SASL_SSL"
    assert k["sasl_plain_username"] == "flow" and k["sasl_plain_password"] == "s3cret-value"
    assert k["ssl_cafile"] == str(ca)


def test_the_password_is_never_in_repr_or_describe(tmp_path):
    sec = KafkaSecurity.from_env(SASL)
    assert "s3cret-value" not in repr(sec) and "s3cret-value" not in sec.describe()
    pw = tmp_path / "pw"
    pw.write_text("from-a-file\n")
    env = {**SASL, "ENSEMBLE_KAFKA_SASL_PASSWORD_FILE": str(pw)}
    del env["ENSEMBLE_KAFKA_SASL_PASSWORD"]
    assert KafkaSecurity.from_env(env).password == "from-a-file"


@pytest.mark.parametrize(
    "env, names",
    [
        ({"ENSEMBLE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "SECURITY_PROTOCOL"),
        ({"ENSEMBLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL_USERNAME"),
        ({**SASL, "ENSEMBLE_KAFKA_SASL_MECHANISM": "PLAIN"}, "SASL_MECHANISM"),
        (
            {"ENSEMBLE_KAFKA_SASL_USERNAME": "flow", "ENSEMBLE_KAFKA_SASL_PASSWORD": "p"},
            "PLAINTEXT",
        ),
        ({**SASL, "ENSEMBLE_KAFKA_SSL_CA": "/nonexistent/ca.pem"}, "SSL_CA"),
    ],
)
def test_a_bad_security_setting_stops_the_start_naming_it(env, names):
    with pytest.raises(ConfigError, match=names):
        Settings.from_env({"ENSEMBLE_KAFKA_BOOTSTRAP": "h:1", **env})


def test_rate_limited_log_lets_a_few_lines_of_a_kind_through():
    f = RateLimitedLog(per_window=3, window_s=3600)

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("rdkafka", logging.ERROR, __file__, 1, msg, None, None)

    passed = sum(f.filter(rec("FAIL connect refused")) for _ in range(300))
    assert passed == 3
    assert f.filter(rec("another kind of line"))


def test_rate_limited_log_tells_librdkafkas_lines_apart_by_facility():
    """confluent-kafka logs every librdkafka line with one format: its facility, client
    and text are the arguments. Start-up's configuration warnings must not use up the
    lines an offset reset needs."""
    from confluent_kafka import Consumer

    f = RateLimitedLog(per_window=3, window_s=3600)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    lg = logging.getLogger("test.librdkafka.lines")
    lg.addHandler(Keep())
    settings = {"bootstrap.servers": "127.0.0.1:9", "group.id": "g", "logger": lg}
    for _ in range(4):  # a producer's setting in a consumer: a CONFWARN line each
        Consumer({**settings, "acks": "1"}).close()
    assert seen and all(r.msg == seen[0].msg for r in seen)  # one format for every line
    warned = [r for r in seen if r.args[0] == "CONFWARN"]  # not a FAIL line to port 9
    assert len(warned) == 4
    assert sum(f.filter(r) for r in warned) == 3
    reset = logging.makeLogRecord(
        {"name": seen[0].name, "msg": seen[0].msg, "args": ("OFFSET", "c", "offset reset")}
    )
    assert f.filter(reset)
