"""Where a study lives: an SQLite file by default, any SQLAlchemy URL, or a journal file."""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from klip.studies.choices import DEFAULT_GRACE_PERIOD, DEFAULT_HEARTBEAT_INTERVAL

DEFAULT_STORAGE_FILE = "klip-studies.db"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
# Seconds: a worker records a heartbeat every interval; a RUNNING trial whose last
# heartbeat is older than the grace period belongs to a dead worker.
# A trial is retried this many times before klip gives up on it (a trial that
# kills its worker every time would otherwise loop forever).
MAX_RETRIES = 3
CONNECT_TIMEOUT_S = 10


class StorageError(RuntimeError):
    """Unknown scheme, unreachable database: one line."""


@dataclass(frozen=True)
class StorageSpec:
    url: str
    kind: str  # "rdb" or "journal"
    heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL
    grace_period: int = DEFAULT_GRACE_PERIOD

    @property
    def has_heartbeat(self) -> bool:
        return self.kind == "rdb"

    def missing_file(self) -> Path | None:
        """The SQLite or journal file this storage names, where it does not exist (else None)."""
        if self.kind == "journal":
            path = Path(self.url)
        elif self.url.split("://", 1)[0].split("+", 1)[0].lower() == "sqlite":
            name = self.url.split("://", 1)[1]
            if not name.startswith("/") or name in ("/", "/:memory:"):
                return None  # an in-memory database
            path = Path(name[1:])
        else:
            return None
        return None if path.is_file() else path

    def describe(self) -> str:
        return redact(self.url) if self.kind == "rdb" else f"journal file {self.url}"


def redact(url: str) -> str:
    """The URL without its password, for messages and recorded attributes."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, has_password, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{host}"


def hide_passwords(text: str) -> str:
    """`text` (a URL, or a command or entry holding one) with every URL's password as `***`."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", text)


def parse_storage(
    storage: str | None,
    heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL,
    grace_period: int = DEFAULT_GRACE_PERIOD,
) -> StorageSpec:
    """`None` -> SQLite file in the working directory; `scheme://...` -> RDB; a path -> journal."""
    if heartbeat_interval <= 0 or grace_period <= heartbeat_interval:
        raise StorageError("heartbeat interval must be > 0 and the grace period longer than it")
    if storage is None:
        storage = f"sqlite:///{DEFAULT_STORAGE_FILE}"
    if "://" in storage:
        scheme = storage.split("://", 1)[0].split("+", 1)[0].lower()
        if scheme not in RDB_SCHEMES:
            raise StorageError(
                f"unknown storage scheme {scheme!r} in --storage; use sqlite:///FILE, "
                "postgresql://USER@HOST/DB, mysql://..., or a journal file path"
            )
        return StorageSpec(storage, "rdb", heartbeat_interval, grace_period)
    if storage.endswith((".db", ".sqlite", ".sqlite3")):
        return StorageSpec(f"sqlite:///{storage}", "rdb", heartbeat_interval, grace_period)
    return StorageSpec(storage, "journal", heartbeat_interval, grace_period)


def _engine_kwargs(url: str) -> dict[str, Any]:
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if scheme in ("postgresql", "mysql"):
        # Without a timeout, a firewalled host makes the first query hang for minutes.
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    if scheme == "sqlite":
        # Several local workers share the file; wait for the lock instead of failing.
        kwargs["connect_args"] = {"timeout": 60}
    return kwargs


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:  # a malformed URL is RDBStorage's to report
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def open_storage(spec: StorageSpec, *, retry_stale: bool = True,
                 heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """Connect (creating tables if needed); raise StorageError with one line if that fails.

    The one opener of studies and comparisons: one heartbeat policy (`spec`'s interval and grace
    period; a stale trial is retried up to MAX_RETRIES times) and, on SQLite, transactions that
    take the write lock when they begin, so that two local workers never pop the same trial.
    `heartbeat=False`: a reader (reports, progress) that runs no trial.
    """
    import sqlalchemy.exc

    # Heartbeats are "experimental" in Optuna's words; klip relies on them on purpose.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if spec.kind == "journal":
        path = Path(spec.url)
        if path.parent and not path.parent.exists():
            raise StorageError(f"journal file directory {path.parent} does not exist")
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    callback = (optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
                if retry_stale else None)
    beats: dict[str, Any] = {"heartbeat_interval": spec.heartbeat_interval,
                             "grace_period": spec.grace_period,
                             "heartbeat_stale_trial_callback": callback} if heartbeat else {}
    sqlite_file = _sqlite_file(spec.url)
    if sqlite_file is not None and not sqlite_file.parent.is_dir():
        raise StorageError(f"cannot open storage {redact(spec.url)}: directory {sqlite_file.parent} "
                           "does not exist")
    try:
        storage = optuna.storages.RDBStorage(spec.url, engine_kwargs=_engine_kwargs(spec.url), **beats)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StorageError(f"cannot open storage {redact(spec.url)}: {first}") from None
    if spec.url.split("://", 1)[0].split("+", 1)[0].lower() == "sqlite":
        _serialise_sqlite(storage.engine)
    return storage


def _serialise_sqlite(engine: Any) -> None:
    """Make every SQLite transaction take the write lock when it begins (BEGIN IMMEDIATE).

    Optuna pops a WAITING trial by reading its state and then writing RUNNING; PostgreSQL and
    MySQL lock the row (SELECT ... FOR UPDATE), but SQLite ignores that and Python's sqlite3
    starts the transaction only at the write, so two local workers can pop the same trial.
    This is SQLAlchemy's documented pysqlite recipe for real transactions.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(connection: Any, record: Any) -> None:
        connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed


def storage_write_error(error: BaseException, described: str) -> StorageError:
    """A storage that cannot be written (a full disk under SQLite, a lost server), in one line:
    `cannot write to storage URL: the database's own first line`."""
    cause = error.__cause__ or error
    text = str(getattr(cause, "orig", None) or cause).strip()
    first = text.splitlines()[0] if text else type(cause).__name__
    return StorageError(f"cannot write to storage {described}: {first}")


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO; klip shows its own progress bar instead."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


__all__ = [
    "DEFAULT_GRACE_PERIOD",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_STORAGE_FILE",
    "StorageError",
    "StorageSpec",
    "hide_passwords",
    "open_storage",
    "parse_storage",
    "quiet_optuna",
    "redact",
    "storage_write_error",
]
