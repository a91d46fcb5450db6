"""Kafka client settings shared by every streaming command: bootstrap servers plus SASL/TLS.

One place turns flags and ``FRAUD_KAFKA_*`` environment variables into the keyword arguments of
kafka-python's clients, so the same command runs against the embedded Tansu broker (plaintext)
and a secured Apache Kafka cluster without code changes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
ENV_PREFIX = "FRAUD_KAFKA_"


@dataclass(frozen=True)
class KafkaSecurity:
    """Client security settings; names are kafka-python's keyword arguments."""

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"kafka security_protocol {self.security_protocol!r} is not one of "
                f"{', '.join(SECURITY_PROTOCOLS)}"
            )
        uses_sasl = self.security_protocol.startswith("SASL_")
        if uses_sasl and not self.sasl_mechanism:
            raise ValueError(
                f"kafka security_protocol {self.security_protocol} needs sasl_mechanism"
            )
        if self.sasl_mechanism and self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(
                f"kafka sasl_mechanism {self.sasl_mechanism!r} is not one of "
                f"{', '.join(SASL_MECHANISMS)}"
            )
        if (
            uses_sasl
            and self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
            and not (self.sasl_plain_username and self.sasl_plain_password)
        ):
            raise ValueError(
                f"kafka sasl_mechanism {self.sasl_mechanism} needs a username and a password"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        """``FRAUD_KAFKA_SECURITY_PROTOCOL``, ``FRAUD_KAFKA_SASL_PLAIN_PASSWORD``, ... ."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"{ENV_PREFIX}{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _parse_bool(raw, f.name) if f.type in ("bool", bool) else raw
        return cls(**values)

    def client_kwargs(self) -> dict[str, Any]:
        """Only the settings that differ from a plaintext client, ready for ``**`` expansion."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "security_protocol" or value is None:
                continue
            if f.name == "ssl_check_hostname" and not self.security_protocol.endswith("SSL"):
                continue
            out[f.name] = value
        return out


def _parse_bool(text: str, name: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{ENV_PREFIX}{name.upper()}={text!r}: expected true or false")


def add_kafka_arguments(
    parser: argparse.ArgumentParser, default_bootstrap: str | None = None
) -> None:
    """--bootstrap-servers and the security flags; unset flags fall back to FRAUD_KAFKA_* env."""
    group = parser.add_argument_group("kafka connection")
    group.add_argument(
        "--bootstrap-servers",
        default=default_bootstrap,
        help="comma-separated host:port list (default: FRAUD_BOOTSTRAP_SERVERS or "
        + (default_bootstrap or "the settings' bootstrap_servers")
        + ")",
    )
    group.add_argument("--security-protocol", choices=SECURITY_PROTOCOLS)
    group.add_argument("--sasl-mechanism", choices=SASL_MECHANISMS)
    group.add_argument("--sasl-username", dest="sasl_plain_username")
    group.add_argument(
        "--sasl-password-env",
        metavar="VAR",
        help="name of the environment variable holding the SASL password (never a flag value)",
    )
    group.add_argument("--ssl-cafile")
    group.add_argument("--ssl-certfile")
    group.add_argument("--ssl-keyfile")


def security_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> KafkaSecurity:
    """Environment first, flags override; a password is only ever read from the environment."""
    env = os.environ if env is None else env
    base = KafkaSecurity.from_env(env)
    overrides: dict[str, Any] = {}
    for name in (
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
    ):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    password_var = getattr(args, "sasl_password_env", None)
    if password_var:
        if password_var not in env:
            raise ValueError(f"--sasl-password-env {password_var}: variable is not set")
        overrides["sasl_plain_password"] = env[password_var]
    values = {f.name: getattr(base, f.name) for f in fields(base)}
    values.update(overrides)
    return KafkaSecurity(**values)


def client_config(bootstrap_servers: str, security: KafkaSecurity | None = None) -> dict[str, Any]:
    """kafka-python keyword arguments common to producers, consumers and the admin client."""
    servers = [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
    if not servers:
        raise ValueError(f"bootstrap servers {bootstrap_servers!r}: no host:port given")
    return {"bootstrap_servers": servers, **(security or KafkaSecurity()).client_kwargs()}


def has_c_crc32c() -> bool:
    """Whether kafka-python checksums record batches in C: it uses the ``crc32c`` package when
    that is installed (the lock installs it), and pure Python otherwise, which costs ~80 ms per
    250 KB batch produced or fetched."""
    return importlib.util.find_spec("crc32c") is not None
