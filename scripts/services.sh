#!/usr/bin/env bash
# Local services for StreamFlow without Docker: PostgreSQL (Debian's package) and a one-node
# Apache Kafka broker in KRaft mode (official jars from Maven Central, run on Java 17).
#
#   scripts/services.sh up       start both (idempotent: running services are left alone)
#   scripts/services.sh down     stop both
#   scripts/services.sh status   say what runs where
#   scripts/services.sh restart-postgres|stop-postgres|start-postgres|stop-kafka|start-kafka
#
# Everything lives under $STREAMFLOW_STATE_DIR (default: <repo>/.services, git-ignored).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${STREAMFLOW_STATE_DIR:-$ROOT/.services}"

PG_HOST="${POSTGRES_HOST:-127.0.0.1}"
PG_PORT="${POSTGRES_PORT:-5432}"
PG_DB="${POSTGRES_DB:-streamflow}"
PG_USER="${POSTGRES_USER:-streamflow}"
PG_PASSWORD="${POSTGRES_PASSWORD:-streamflow}"
PG_DATA="$STATE/postgres"
PG_SOCK="$STATE/pg-socket"

KAFKA_HOST="${KAFKA_HOST:-127.0.0.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_VERSION_POM="$ROOT/scripts/kafka/pom.xml"
KAFKA_LIB="$STATE/kafka/lib"
KAFKA_DATA="$STATE/kafka/data"
KAFKA_LOGS="$STATE/kafka/logs"
KAFKA_CONF="$STATE/kafka/server.properties"
KAFKA_PID="$STATE/kafka/kafka.pid"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

as_pg() {
  # initdb and postgres refuse to run as root: run them as the postgres user then.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$d" ] || [ ! -x "$d/initdb" ]; then
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed; run: sudo apt-get install -y postgresql"
    log "installing PostgreSQL with apt-get"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
    d=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  echo "$d"
}

pg_running() {
  local bin; bin=$(pg_bin)
  [ -f "$PG_DATA/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

# As root, the postgres user must be able to reach the state directory: a checkout under a
# private directory (mktemp -d makes them 0700) gets search permission (o+x, not read) on the
# directories on the way that lack it.
pg_reachable() {
  [ "$(id -u)" = 0 ] || return 0
  runuser -u postgres -- test -x "$STATE" && return 0
  local dir="$STATE"
  while [ "$dir" != / ]; do
    if ! runuser -u postgres -- test -x "$dir"; then
      log "letting the postgres user through $dir (chmod o+x)"
      chmod o+x "$dir"
    fi
    dir=$(dirname "$dir")
  done
}

pg_up() {
  local bin; bin=$(pg_bin)
  mkdir -p "$STATE" "$PG_SOCK"
  pg_reachable
  if [ "$(id -u)" = 0 ]; then chown postgres "$PG_SOCK"; fi
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    log "initialising PostgreSQL data directory $PG_DATA"
    mkdir -p "$PG_DATA"
    if [ "$(id -u)" = 0 ]; then chown postgres "$PG_DATA"; fi
    as_pg "$bin/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$PG_DATA/postgresql.conf" <<EOF
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
max_connections = 200
shared_buffers = 512MB
work_mem = 32MB
maintenance_work_mem = 256MB
max_wal_size = 4GB
EOF
    # password auth over TCP, trust on the project's own socket (used by this script only)
    cat >"$PG_DATA/pg_hba.conf" <<EOF
local all all trust
host  all all 127.0.0.1/32 scram-sha-256
host  all all ::1/128      scram-sha-256
EOF
  fi
  if pg_running; then
    log "PostgreSQL already running on $PG_HOST:$PG_PORT"
  else
    log "starting PostgreSQL on $PG_HOST:$PG_PORT"
    as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_SOCK/postgres.log" -w -t 60 start >/dev/null \
      || die "PostgreSQL did not start; see $PG_SOCK/postgres.log"
  fi
  local psql=("$bin/psql" -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
  if [ "$(as_pg "${psql[@]}" -c "select 1 from pg_roles where rolname='$PG_USER'")" != 1 ]; then
    as_pg "${psql[@]}" -c "create role \"$PG_USER\" login createdb password '$PG_PASSWORD'"
  else
    as_pg "${psql[@]}" -c "alter role \"$PG_USER\" login createdb password '$PG_PASSWORD'"
  fi
  if [ "$(as_pg "${psql[@]}" -c "select 1 from pg_database where datname='$PG_DB'")" != 1 ]; then
    as_pg "${psql[@]}" -c "create database \"$PG_DB\" owner \"$PG_USER\""
  fi
}

pg_down() {
  local bin; bin=$(pg_bin)
  if pg_running; then
    log "stopping PostgreSQL"
    as_pg "$bin/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
  else
    log "PostgreSQL is not running"
  fi
}

kafka_fetch() {
  if [ -f "$KAFKA_LIB/.complete" ] && [ "$KAFKA_LIB/.complete" -nt "$KAFKA_VERSION_POM" ]; then return; fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch the Kafka broker jars"
  command -v java >/dev/null || die "Java 17 is needed to run the Kafka broker"
  log "fetching the Kafka broker jars with Maven (first run only)"
  rm -rf "$KAFKA_LIB"; mkdir -p "$KAFKA_LIB"
  mvn -q -B -f "$KAFKA_VERSION_POM" dependency:copy-dependencies \
    -DoutputDirectory="$KAFKA_LIB" -DincludeScope=runtime >"$STATE/maven.log" 2>&1 \
    || die "Maven could not fetch the Kafka jars; see $STATE/maven.log"
  touch "$KAFKA_LIB/.complete"
}

kafka_pid() {
  [ -f "$KAFKA_PID" ] && kill -0 "$(cat "$KAFKA_PID")" 2>/dev/null && cat "$KAFKA_PID"
}

kafka_answers() {
  # Up when the client port accepts connections and the server logged its start.
  (exec 3<>"/dev/tcp/$KAFKA_HOST/$KAFKA_PORT") 2>/dev/null || return 1
  grep -q "Kafka Server started" "$KAFKA_LOGS/server.log" 2>/dev/null
}

kafka_up() {
  mkdir -p "$STATE/kafka" "$KAFKA_DATA" "$KAFKA_LOGS"
  kafka_fetch
  if kafka_pid >/dev/null; then log "Kafka already running on $KAFKA_HOST:$KAFKA_PORT"; return; fi
  cat >"$KAFKA_CONF" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=${KAFKA_DEFAULT_PARTITIONS:-4}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=2097152
log.retention.hours=-1
EOF
  cat >"$STATE/kafka/log4j2.properties" <<EOF
status = error
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $KAFKA_LOGS/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
EOF
  if [ ! -f "$KAFKA_DATA/meta.properties" ]; then
    log "formatting Kafka KRaft storage in $KAFKA_DATA"
    local cid
    cid=$(java -cp "$KAFKA_LIB/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    java -cp "$KAFKA_LIB/*" -Dlog4j2.configurationFile="$STATE/kafka/log4j2.properties" \
      kafka.tools.StorageTool format --standalone -t "$cid" -c "$KAFKA_CONF" >"$KAFKA_LOGS/format.log" 2>&1 \
      || die "formatting Kafka storage failed; see $KAFKA_LOGS/format.log"
  fi
  log "starting Kafka (KRaft) on $KAFKA_HOST:$KAFKA_PORT"
  : >"$KAFKA_LOGS/server.log"
  nohup java -Xms256m -Xmx${KAFKA_HEAP:-1g} -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$STATE/kafka/log4j2.properties" \
    -cp "$KAFKA_LIB/*" kafka.Kafka "$KAFKA_CONF" >"$KAFKA_LOGS/stdout.log" 2>&1 &
  echo $! >"$KAFKA_PID"
  local i
  for i in $(seq 1 120); do
    if ! kafka_pid >/dev/null; then
      die "Kafka exited during start-up; see $KAFKA_LOGS/stdout.log and $KAFKA_LOGS/server.log"
    fi
    if kafka_answers; then log "Kafka is up"; return; fi
    sleep 0.5
  done
  kafka_down
  die "Kafka did not answer within 60 s; see $KAFKA_LOGS/server.log"
}

kafka_down() {
  local pid
  if pid=$(kafka_pid); then
    log "stopping Kafka (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$KAFKA_PID"
  else
    log "Kafka is not running"
  fi
}

status() {
  local rc=0
  if pg_running; then
    echo "postgres: running  postgresql://$PG_USER@$PG_HOST:$PG_PORT/$PG_DB  data=$PG_DATA"
  else
    echo "postgres: stopped"; rc=1
  fi
  local pid
  if pid=$(kafka_pid); then
    echo "kafka:    running  $KAFKA_HOST:$KAFKA_PORT (KRaft, pid $pid)  data=$KAFKA_DATA"
  else
    echo "kafka:    stopped"; rc=1
  fi
  return $rc
}

case "${1:-}" in
  up) pg_up; kafka_up; status ;;
  down) kafka_down; pg_down ;;
  status) status ;;
  start-postgres) pg_up ;;
  stop-postgres) pg_down ;;
  restart-postgres) pg_down; pg_up ;;
  start-kafka) kafka_up ;;
  stop-kafka) kafka_down ;;
  reset) kafka_down; pg_down; rm -rf "$PG_DATA" "$KAFKA_DATA" "$PG_SOCK" ;;
  *) echo "usage: $0 {up|down|status|reset|start-postgres|stop-postgres|restart-postgres|start-kafka|stop-kafka}" >&2; exit 2 ;;
esac
