"""Every Kafka client of StreamFlow is built here, from one set of settings.

Producer, consumer-group member, dead-letter producer, admin client, group-less readers (dead
letters, tests, benchmarks) and the lag monitor's bare network client all come from the functions
below, so bootstrap servers, client ids, timeouts, reconnect backoff and sizes are chosen once and
hold together:

* ``max_request_size`` of every producer equals ``KAFKA_MESSAGE_MAX_BYTES``, the limit that
  ``scripts/services.sh`` and docker-compose give the broker (``message.max.bytes``). A client
  limit above the broker's makes kafka-python 3.0 fail every later send of that producer after the
  broker refuses one record; at or below it, an oversized record is refused by the client alone.
* reconnect backoff tops out at 2 s (kafka-python's default, 30 s, kept processes away for half a
  minute after a broker restart).
* security (``KAFKA_SECURITY_PROTOCOL``, SASL mechanism and credentials, TLS files) is in
  :func:`common`, so every client authenticates the same way. A broker that refuses
  the credentials is :class:`~streamflow.errors.AuthenticationFailed`, one line naming the user
  and mechanism (kafka-python 3.0.12 itself retries the login until its bootstrap timeout and then
  raises only ``KafkaTimeoutError("Unable to bootstrap ...")``: see :func:`_watching_login`).

No other module calls ``KafkaProducer(``, ``KafkaConsumer(``, ``KafkaAdminClient(`` or
``KafkaNetClient(`` (kafka-python's bare network client, for the one request no client API sends:
the lag monitor's Fetch of one record per partition).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    RequestTimedOutError,
    SaslAuthenticationFailedError,
    UnsupportedSaslMechanismError,
)
from kafka.net import KafkaNetClient

from streamflow import config
from streamflow.errors import AuthenticationFailed, ServiceUnavailable

log = logging.getLogger(__name__)

MIB = 1024 * 1024

PRODUCER_BATCH_BYTES = 64 * 1024
"""batch_size of every producer: the most bytes of records one batch of ours holds."""


KafkaSettings = config.Kafka
"""What every client shares: the ``kafka`` group of :func:`streamflow.config.settings` itself (each
variable's default and meaning: there, or ``streamflow config``)."""

RECONNECT_BACKOFF_MS = 100
RETRY_BACKOFF_MS = 200


def settings(bootstrap: str | None = None) -> KafkaSettings:
    """The settings in effect (from the environment), optionally for other bootstrap servers."""
    kafka = config.settings().kafka
    return kafka.model_copy(update={"bootstrap_servers": bootstrap}) if bootstrap else kafka


def client_id(s: KafkaSettings, role: str) -> str:
    return f"{s.client_id}-{role}"


def common(s: KafkaSettings, role: str) -> dict:
    """The options every client takes (connection, timeouts, security)."""
    return dict(
        bootstrap_servers=s.bootstrap_servers.split(","),
        client_id=client_id(s, role),
        request_timeout_ms=s.request_timeout_ms,
        reconnect_backoff_ms=RECONNECT_BACKOFF_MS,
        reconnect_backoff_max_ms=s.reconnect_backoff_max_ms,
        retry_backoff_ms=RETRY_BACKOFF_MS,
        bootstrap_timeout_ms=s.bootstrap_timeout_ms,
        **security(s),
    )


def security(s: KafkaSettings) -> dict:
    """kafka-python's security options: the protocol, and the SASL or TLS options it uses."""
    options: dict = {"security_protocol": s.security_protocol}
    if s.uses_sasl:
        # kafka-python names the user and password of every mechanism sasl_plain_* (SCRAM too)
        options.update(
            sasl_mechanism=s.sasl_mechanism,
            sasl_plain_username=s.sasl_username,
            sasl_plain_password=s.sasl_password.get_secret_value() if s.sasl_password else None,
        )
    if s.uses_tls:
        options.update(
            ssl_cafile=str(s.ssl_cafile) if s.ssl_cafile else None,
            ssl_certfile=str(s.ssl_certfile) if s.ssl_certfile else None,
            ssl_keyfile=str(s.ssl_keyfile) if s.ssl_keyfile else None,
            ssl_check_hostname=s.ssl_check_hostname,
        )
    return options


def describe_login(s: KafkaSettings) -> str:
    """Who the clients log in as, without the password (for errors)."""
    if s.uses_sasl:
        return f"user {s.sasl_username} ({s.sasl_mechanism})"
    return s.security_protocol


def unreachable(servers: str, exc: BaseException, what: str = "") -> ServiceUnavailable:
    doing = f": {what}" if what else ""
    return ServiceUnavailable(f"Kafka at {servers} is not reachable{doing} ({type(exc).__name__}: {exc})")


class Producer(KafkaProducer):
    """kafka-python's producer with a finalizer that does not raise.

    When events are still unacknowledged while the broker is away, ``close(timeout)`` raises (they
    are reported and the exit code is 1) and leaves the producer open; kafka-python's finalizer then
    closes it again when the object is collected and, failing again, prints the timeout as a
    traceback at exit."""

    def __del__(self):
        with contextlib.suppress(Exception):
            super().__del__()


AUTH_ERRORS = (SaslAuthenticationFailedError, UnsupportedSaslMechanismError, IllegalSaslStateError)
"""What kafka-python reports when a broker refuses a SASL login."""


def refused(s: KafkaSettings, exc: BaseException | None) -> AuthenticationFailed:
    """The one line of a refused login: which broker, who, how (never the password). ``exc``: what
    kafka-python saw, None when the broker only closed every connection during the login."""
    where = f"Kafka at {s.bootstrap_servers}"
    if isinstance(exc, UnsupportedSaslMechanismError):
        return AuthenticationFailed(
            f"{where} does not accept SASL mechanism {s.sasl_mechanism} (KAFKA_SASL_MECHANISM)"
        )
    if isinstance(exc, IllegalSaslStateError):
        return AuthenticationFailed(
            f"{where} takes no SASL login on that listener: check KAFKA_SECURITY_PROTOCOL "
            f"({s.security_protocol}) and KAFKA_BOOTSTRAP_SERVERS"
        )
    refusal = f"{where} refused the credentials of {describe_login(s)}"
    if exc is None:
        return AuthenticationFailed(
            f"{refusal}, or takes no {s.security_protocol} there: it closed every connection during "
            "the login; check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SECURITY_PROTOCOL"
        )
    return AuthenticationFailed(f"{refusal}: check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")


_LOGIN_LOGGERS = ("kafka.net.manager", "kafka.net.connection", "kafka.net.transport")
_BOOTSTRAP_FAILED = "Bootstrap connection to %s failed"
"""How kafka.net.manager logs one failed bootstrap connection (its second argument: the error)."""
_login_lock = threading.Lock()


class _LoginWatch(logging.Filter):
    """Notes what kafka-python logs about the connections of a client being built, and holds the
    lines back."""

    def __init__(self) -> None:
        super().__init__()
        self.refusal: BaseException | None = None
        """The first login error seen (SaslAuthenticationFailedError, ...)."""
        self.closed = 0
        """Bootstrap connections the broker closed ("socket disconnected")."""
        self.other = 0
        """Bootstrap connections that failed otherwise (not reachable, ...)."""
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, AUTH_ERRORS) and self.refusal is None:
                self.refusal = arg
        if str(record.msg).startswith(_BOOTSTRAP_FAILED) and len(args) > 1:
            if isinstance(args[1], KafkaConnectionError) and str(args[1]).endswith("socket disconnected"):
                self.closed += 1
            elif not isinstance(args[1], (*AUTH_ERRORS, KafkaTimeoutError, RequestTimedOutError)):
                self.other += 1  # a timeout says nothing either way (a slow login)
        self.held.append(record)
        return False

    def verdict(self, s: KafkaSettings) -> AuthenticationFailed | None:
        """The login refused: for sure (a login error seen), or as good as sure (the broker closed
        every connection during it: kafka-python 3.0.12 drops a response that comes in the same
        read as the close, so a refusal often shows only as "socket disconnected"); else None."""
        if self.refusal is not None:
            return refused(s, self.refusal)
        if self.closed >= 2 and not self.other:  # twice at least: not one broker restarting
            return refused(s, None)
        return None


@contextlib.contextmanager
def _watching_login():
    """While a SASL client is built: what kafka-python logs about its connections is watched for a
    refused login. kafka-python 3.0.12 retries a refused login until ``bootstrap_timeout_ms`` and
    then raises ``KafkaTimeoutError("Unable to bootstrap ...")``; the reason is only in its log
    ("Bootstrap connection to ... failed: <the error>", the error being an argument of the line).
    Those lines are held back meanwhile: after a refused login the one error line says it all;
    otherwise they are logged as they would have been. One client at a time is built so (the
    loggers' levels are lowered to WARNING meanwhile, so that the lines are made at all)."""
    with _login_lock:
        watch = _LoginWatch()
        loggers = [logging.getLogger(name) for name in _LOGIN_LOGGERS]
        saved = [(lg, lg.level, lg.getEffectiveLevel()) for lg in loggers]
        for lg, _, effective in saved:
            lg.setLevel(min(effective, logging.WARNING))
            lg.addFilter(watch)
        refused_for_sure = False
        try:
            yield watch
        except AuthenticationFailed:
            refused_for_sure = True
            raise
        finally:
            for lg, level, _ in saved:
                lg.removeFilter(watch)
                lg.setLevel(level)
            if not refused_for_sure:
                shown = {lg.name: effective for lg, _, effective in saved}
                for record in watch.held:
                    if record.levelno >= shown[record.name]:
                        logging.getLogger(record.name).handle(record)


def _build(cls, s: KafkaSettings, options: dict):
    return _connect(s, lambda: cls(**options))


def _connect(s: KafkaSettings, make):
    """``make()`` (which builds and bootstraps a client), with kafka-python's errors as ours: a
    refused login as AuthenticationFailed, anything else as ServiceUnavailable."""
    watching = _watching_login() if s.uses_sasl else contextlib.nullcontext(None)
    with watching as watch:
        try:
            return make()
        except AUTH_ERRORS as exc:  # should kafka-python raise it itself
            raise refused(s, exc) from None
        except KafkaError as exc:
            verdict = watch.verdict(s) if watch is not None else None
            if verdict is not None:
                raise verdict from None
            raise unreachable(s.bootstrap_servers, exc) from None


DELIVERY_TIMEOUT = 120.0
"""Seconds an event may wait for the broker's acknowledgement (retries included) before it is
reported as failed."""


def producer(
    role: str = "producer",
    *,
    delivery_timeout: float = DELIVERY_TIMEOUT,
    kafka: KafkaSettings | None = None,
    **overrides,
) -> Producer:
    """An idempotent producer with acks=all: an acknowledged event is on every in-sync replica,
    written once even when a send is retried."""
    s = kafka or settings()
    delivery_ms = max(1_000, int(delivery_timeout * 1000))
    linger_ms = overrides.get("linger_ms", 10)
    options = dict(
        common(s, role),
        acks="all",
        enable_idempotence=True,
        retries=2_147_483_647,
        delivery_timeout_ms=delivery_ms,
        # kafka-python wants delivery_timeout_ms >= linger_ms + request_timeout_ms
        request_timeout_ms=min(s.request_timeout_ms, delivery_ms - linger_ms),
        max_in_flight_requests_per_connection=5,
        linger_ms=linger_ms,
        batch_size=PRODUCER_BATCH_BYTES,
        max_request_size=s.message_max_bytes,
        max_block_ms=min(60_000, delivery_ms),
    )
    options.update(overrides)
    if options["max_request_size"] > s.message_max_bytes:
        raise ValueError(
            f"max_request_size {options['max_request_size']} is above the broker's "
            f"message.max.bytes ({s.message_max_bytes}, KAFKA_MESSAGE_MAX_BYTES)"
        )
    return _build(Producer, s, options)


def dead_letter_producer(*, kafka: KafkaSettings | None = None) -> Producer:
    """The consumer's producer of dead letters (acknowledged before the batch is committed)."""
    return producer("dead-letter", linger_ms=5, delivery_timeout=60.0, kafka=kafka)


GROUP_FETCH_BYTES = 8 * MIB
GROUP_PARTITION_FETCH_BYTES = 1 * MIB
"""Fetch bounds of a group member. With a backlog kafka-python keeps whole fetch responses
buffered, so these bounds are most of the memory that grows with the backlog (the figures behind
them: docs/explanation/performance.md). A batch larger than a bound is still fetched whole (the
broker returns at least one batch)."""


def group_consumer(
    group_id: str, *, role: str = "consumer", kafka: KafkaSettings | None = None, **overrides
) -> KafkaConsumer:
    """A member of a consumer group that commits by itself (auto-commit off)."""
    s = kafka or settings()
    options = dict(
        common(s, f"{role}-{group_id}"),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=600_000,
        session_timeout_ms=15_000,
        heartbeat_interval_ms=3_000,
        fetch_max_bytes=GROUP_FETCH_BYTES,
        max_partition_fetch_bytes=max(GROUP_PARTITION_FETCH_BYTES, s.message_max_bytes),
    )
    options.update(overrides)
    return _build(KafkaConsumer, s, options)


def reader(role: str = "reader", *, kafka: KafkaSettings | None = None, **overrides) -> KafkaConsumer:
    """A consumer outside any group (it commits nothing): reads partitions it is assigned."""
    s = kafka or settings()
    options = dict(
        common(s, role),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        allow_auto_create_topics=False,
        fetch_max_bytes=32 * MIB,
        max_partition_fetch_bytes=max(4 * MIB, s.message_max_bytes),
    )
    options.update(overrides)
    return _build(KafkaConsumer, s, options)


def fetch_client(role: str = "fetch", *, kafka: KafkaSettings | None = None, **overrides) -> KafkaNetClient:
    """kafka-python's network client on its own, bootstrapped: it knows the brokers (no topic
    metadata, so nothing is ever auto-created) and sends any request to a given broker with
    ``send(node_id, request)`` (a future), whose I/O runs in the caller's ``poll(timeout_ms,
    future)`` -- no IO thread, no consumer bookkeeping. The lag monitor's Fetch goes through it."""
    s = kafka or settings()
    options = dict(common(s, role), receive_message_max_bytes=100 * MIB)
    options.update(overrides)

    def make() -> KafkaNetClient:
        client = KafkaNetClient(**options)
        try:
            client.check_version(timeout_ms=options["bootstrap_timeout_ms"])  # bootstraps
        except BaseException:
            close_quietly(client)
            raise
        return client

    return _connect(s, make)


def admin(role: str = "admin", *, kafka: KafkaSettings | None = None, **overrides) -> KafkaAdminClient:
    s = kafka or settings()
    options = dict(common(s, role))
    options.update(overrides)
    return _build(KafkaAdminClient, s, options)


def known_position(consumer: KafkaConsumer, tp) -> int | None:
    """The next offset a consumer will fetch from ``tp``, as it knows it itself: no request (unlike
    ``KafkaConsumer.position``, which asks the coordinator for committed offsets and may block while
    the group rebalances). None while it does not know it yet."""
    try:
        position = consumer._subscription.assignment[tp].position  # noqa: SLF001 - kafka-python 3.0
    except (AttributeError, KeyError):
        return None
    if position is None:
        return None
    return getattr(position, "offset", position)


def member_state(consumer: KafkaConsumer) -> str:
    """The group membership as this member knows it, for a log line: state, generation, member id
    and the coordinator (no request)."""
    try:
        meta = consumer.group_metadata()
        state = str(meta.state).strip("<>")
        coordinator = consumer._coordinator.coordinator_id  # noqa: SLF001 - kafka-python 3.0, read only
    except Exception as exc:  # noqa: BLE001 - a diagnostic: never fails its caller
        return f"unknown ({type(exc).__name__})"
    member = meta.member_id or "-"
    return f"{state} generation {meta.generation_id} member {member[-12:]} coordinator {coordinator}"


JOIN_POLL_MS = 3_000
"""Milliseconds a poll of a group member waits while the member is not in its group (see
:func:`poll_timeout_ms`)."""


def poll_timeout_ms(consumer: KafkaConsumer, wanted_ms: int) -> int:
    """The timeout to give ``consumer.poll``: ``wanted_ms`` once the member is in its group, at least
    :data:`JOIN_POLL_MS` while it joins.

    kafka-python 3.0.12 completes a join only inside the poll that waits for it: when a join
    finishes between two polls, the member never becomes stable (no partition fetched as its own,
    every commit refused). A member whose polls are shorter than its join never joins
    (docs/explanation/kafka-client.md). Every poll of a group member takes its timeout from here.
    """
    if joined(consumer) and not _rejoin_pending(consumer):
        return wanted_ms
    _restart_lost_join(consumer)
    return max(wanted_ms, JOIN_POLL_MS)


def _rejoin_pending(consumer: KafkaConsumer) -> bool:
    """Whether the member's next poll starts a rejoin (kafka-python has no public call for it)."""
    coordinator = getattr(consumer, "_coordinator", None)
    try:
        return bool(coordinator is not None and coordinator.need_rejoin())
    except Exception:  # noqa: BLE001 - a client without it: the plain timeout
        return False


def _restart_lost_join(consumer: KafkaConsumer) -> bool:
    """Ask for a new join when the member's last one finished outside a poll and nothing would
    start another; whether it did.

    kafka-python 3.0.12: a rejoin started because the subscribed topics' metadata changed (not by
    a request) is finished by a leader whose assignment already records the new metadata, so once
    its JoinGroup/SyncGroup task ends after the poll that started it, the member no longer "needs"
    a rejoin, no poll takes the task's result up, and the member stays "rebalancing" for good
    (docs/explanation/kafka-client.md). A requested rejoin sends one more JoinGroup with the same
    member id, which the next (long) poll waits for."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None:
        return False
    try:
        from kafka.structs import MemberState

        task = getattr(coordinator, "_join_task", None)
        lost = (
            coordinator.state == MemberState.REBALANCING
            and (task is None or task.is_done)
            and not coordinator.need_rejoin()
        )
        if lost:
            log.info("the member's last join ended between two polls: joining again")
            coordinator.request_rejoin()
        return lost
    except Exception:  # noqa: BLE001 - a client without these internals: nothing to restart
        return False


def await_assignment(consumer: KafkaConsumer, timeout: float) -> set:
    """Poll a subscribed member until it has joined its group with at least one partition, for at
    most ``timeout`` seconds; its assignment (empty on timeout). Records polled meanwhile are
    dropped: for callers that do not read them (tools, tests), not for a consumer loop."""
    deadline = time.monotonic() + timeout
    while not (joined(consumer) and consumer.assignment()):
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            break
        consumer.poll(timeout_ms=min(left_ms, poll_timeout_ms(consumer, 100)))
    return set(consumer.assignment()) if joined(consumer) else set()


def joined(consumer: KafkaConsumer) -> bool:
    """Whether this member has joined its group (stable, with a generation); no request."""
    from kafka.structs import MemberState

    try:
        return consumer.group_metadata().state == MemberState.STABLE
    except Exception:  # noqa: BLE001 - a broken client has not joined
        return False


def broker_config(client: KafkaAdminClient, broker_id: int | str, name: str) -> str | None:
    """One configuration value of a broker, as the broker reports it (None: not reported)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    resource = ConfigResource(ConfigResourceType.BROKER, str(broker_id), configs={name: None})
    try:
        result = client.describe_configs([resource], config_filter="all")
    except TypeError:  # kafka-python 2.x: no config_filter, a list of responses
        result = client.describe_configs([resource])
    if isinstance(result, dict):
        entry = result.get("broker", {}).get(str(broker_id), {}).get(name)
        return None if entry is None else entry.get("value")
    for response in result:
        for resource_row in response.resources:
            for row in resource_row[4]:
                if row[0] == name:
                    return row[1]
    return None


@contextlib.contextmanager
def admin_session(role: str = "admin", **overrides):
    """An admin client that is closed afterwards."""
    client = admin(role, **overrides)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()


def close_quietly(client, timeout: float | None = 0) -> None:
    """Close a client that may be broken, within ``timeout`` seconds where the client takes one
    (None: the client's own default); never raises. A consumer commits nothing on the way out."""
    if client is None:
        return
    try:
        if isinstance(client, KafkaProducer):
            client.close(timeout=timeout)
        elif isinstance(client, KafkaConsumer):
            client.close(autocommit=False, timeout_ms=None if timeout is None else int(timeout * 1000))
        else:  # the admin client takes no timeout
            client.close()
    except Exception:  # noqa: BLE001 - a broken client may fail to close: it is dropped anyway
        log.debug("closing %r failed", client, exc_info=True)
