"""Configuration from environment variables, with local defaults that docker-compose also uses.

Every process (loader, producer, consumer, API, Feast) reads its settings from here, so one
set of variables configures the whole stack. Importing this module also fills in the defaults
in ``os.environ`` for the variables that ``feature_repo/feature_store.yaml`` expands, so Feast
sees the same values as our own code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

_DEFAULTS = {
    "POSTGRES_HOST": "127.0.0.1",
    "POSTGRES_PORT": "5432",
    "POSTGRES_DB": "streamflow",
    "POSTGRES_USER": "streamflow",
    "POSTGRES_PASSWORD": "streamflow",
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "FEAST_PROJECT": "streamflow",
    "STREAMFLOW_DATA_DIR": str(REPO_ROOT / "data"),
    "STREAMFLOW_FEATURE_REPO": str(REPO_ROOT / "feature_repo"),
    "STREAMFLOW_TOPIC_PREFIX": "streamflow",
}

for _key, _value in _DEFAULTS.items():
    os.environ.setdefault(_key, _value)


def env(name: str) -> str:
    return os.environ.get(name, _DEFAULTS.get(name, ""))


@dataclass(frozen=True)
class PostgresSettings:
    host: str
    port: int
    database: str
    user: str
    password: str

    @property
    def conninfo(self) -> str:
        return (
            f"host={self.host} port={self.port} dbname={self.database} "
            f"user={self.user} password={self.password} sslmode=disable"
        )

    @property
    def sqlalchemy_url(self) -> str:
        return (
            f"postgresql+psycopg://{self.user}:{self.password}@{self.host}:{self.port}/"
            f"{self.database}?sslmode=disable"
        )

    def describe(self) -> str:
        """Where the database is, without the password (for logs and errors)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"


def postgres() -> PostgresSettings:
    return PostgresSettings(
        host=env("POSTGRES_HOST"),
        port=int(env("POSTGRES_PORT")),
        database=env("POSTGRES_DB"),
        user=env("POSTGRES_USER"),
        password=env("POSTGRES_PASSWORD"),
    )


def kafka_bootstrap() -> str:
    return env("KAFKA_BOOTSTRAP_SERVERS")


def topic_prefix() -> str:
    return env("STREAMFLOW_TOPIC_PREFIX")


def data_dir() -> Path:
    return Path(env("STREAMFLOW_DATA_DIR"))


def feature_repo_dir() -> Path:
    return Path(env("STREAMFLOW_FEATURE_REPO"))
