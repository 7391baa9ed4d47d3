"""How every Kafka client of the project authenticates: one place, from the environment.

- ENSEMBLE_KAFKA_SECURITY_PROTOCOL: PLAINTEXT (default; no authentication, quick start
  only), SASL_SSL (SCRAM over TLS, how it runs for real) or SSL.
- ENSEMBLE_KAFKA_SASL_MECHANISM: SCRAM-SHA-512 (default) or SCRAM-SHA-256.
- ENSEMBLE_KAFKA_SASL_USERNAME: this component's principal (flow, ingestor, alerts,
  copilot, operator, admin).
- ENSEMBLE_KAFKA_SASL_PASSWORD: its password (a secret: never logged, kept out of repr),
  or ENSEMBLE_KAFKA_SASL_PASSWORD_FILE: a file holding it (a Kubernetes Secret volume).
- ENSEMBLE_KAFKA_SSL_CA: PEM file of the CA that signed the broker's certificate.

`KafkaSecurity.from_env()` validates them (a bad value raises ValueError naming it);
`.confluent()` and `.kafka_python()` map them to the two client libraries' settings.
The market-data ingestor and every consumer call the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataflows.environment import environ

PROTOCOLS = ("PLAINTEXT", "SASL_SSL", "SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # a secret: kept out of repr
    ca_path: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        env = environ(env)  # the ENSEMBLE_CONFIG file under the environment
        protocol = env.get("ENSEMBLE_KAFKA_SECURITY_PROTOCOL", "").strip().upper() or "PLAINTEXT"
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"ENSEMBLE_KAFKA_SECURITY_PROTOCOL={protocol!r} must be one of {PROTOCOLS}"
            )
        mechanism = env.get("ENSEMBLE_KAFKA_SASL_MECHANISM", "").strip() or "SCRAM-SHA-512"
        if mechanism not in MECHANISMS:
            raise ValueError(
                f"ENSEMBLE_KAFKA_SASL_MECHANISM={mechanism!r} must be one of {MECHANISMS}"
            )
        username = env.get("ENSEMBLE_KAFKA_SASL_USERNAME", "").strip() or None
        password = env.get("ENSEMBLE_KAFKA_SASL_PASSWORD") or None
        password_file = env.get("ENSEMBLE_KAFKA_SASL_PASSWORD_FILE", "").strip()
        if password is None and password_file:
            try:
                password = Path(password_file).read_text().strip() or None
            except OSError as e:
                raise ValueError(
                    f"ENSEMBLE_KAFKA_SASL_PASSWORD_FILE={password_file!r} cannot be read: "
                    f"{e.strerror}"
                ) from None
        ca_path = env.get("ENSEMBLE_KAFKA_SSL_CA", "").strip() or None
        if protocol == "SASL_SSL" and (username is None or password is None):
            raise ValueError(
                "ENSEMBLE_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs ENSEMBLE_KAFKA_SASL_USERNAME and "
                "ENSEMBLE_KAFKA_SASL_PASSWORD (or ENSEMBLE_KAFKA_SASL_PASSWORD_FILE)"
            )
        if protocol == "PLAINTEXT" and (username or password):
            raise ValueError(
                "ENSEMBLE_KAFKA_SASL_USERNAME/PASSWORD are set but "
                "ENSEMBLE_KAFKA_SECURITY_PROTOCOL is PLAINTEXT: the password would be unused; "
                "set ENSEMBLE_KAFKA_SECURITY_PROTOCOL=SASL_SSL"
            )
        if ca_path is not None and not Path(ca_path).is_file():
            raise ValueError(f"ENSEMBLE_KAFKA_SSL_CA={ca_path!r} is not a file")
        return cls(protocol, mechanism, username, password, ca_path)

    @property
    def authenticated(self) -> bool:
        return self.protocol == "SASL_SSL"

    def describe(self) -> str:
        """For logs: the protocol and principal, never the password."""
        if self.protocol == "PLAINTEXT":
            return "PLAINTEXT (unauthenticated, quick start only)"
        who = f" as {self.username}" if self.username else ""
        return f"{self.protocol}{who}"

    def confluent(self) -> dict[str, str]:
        """confluent-kafka (librdkafka) settings; add bootstrap.servers and the rest."""
        cfg: dict[str, str] = {"security.protocol": self.protocol.lower()}
        if self.protocol == "SASL_SSL":
            cfg |= {
                "sasl.mechanism": self.mechanism,
                "sasl.username": self.username or "",
                "sasl.password": self.password or "",
            }
        if self.protocol != "PLAINTEXT":
            cfg["ssl.endpoint.identification.algorithm"] = "https"
            if self.ca_path:
                cfg["ssl.ca.location"] = self.ca_path
        return cfg

    def kafka_python(self) -> dict[str, Any]:
        """kafka-python keyword arguments (KafkaProducer, KafkaConsumer, KafkaAdminClient)."""
        cfg: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol == "SASL_SSL":
            cfg |= {
                "sasl_mechanism": self.mechanism,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password,
            }
        if self.protocol != "PLAINTEXT":
            cfg["ssl_check_hostname"] = True
            if self.ca_path:
                cfg["ssl_cafile"] = self.ca_path
        return cfg


def confluent_config(
    bootstrap: str, env: Mapping[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    """A confluent-kafka client config: brokers, the environment's security, then `extra`."""
    return {"bootstrap.servers": bootstrap, **KafkaSecurity.from_env(env).confluent(), **extra}


def kafka_python_config(
    bootstrap: str | list[str], env: Mapping[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    """kafka-python keyword arguments: brokers, the environment's security, then `extra`."""
    servers = bootstrap.split(",") if isinstance(bootstrap, str) else bootstrap
    return {"bootstrap_servers": servers, **KafkaSecurity.from_env(env).kafka_python(), **extra}
