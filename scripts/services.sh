#!/usr/bin/env bash
# Local services for StreamFlow without Docker: PostgreSQL (Debian's package) and Apache Kafka in
# KRaft mode (official jars from Maven Central, run on Java 17): one node, or a cluster of
# KAFKA_BROKERS nodes (each broker and controller) from the same jars.
#
#   scripts/services.sh up       start both (idempotent: running services are left alone)
#   scripts/services.sh down     stop both
#   scripts/services.sh status   say what runs where (and the bootstrap servers to use)
#   scripts/services.sh restart-postgres|stop-postgres|start-postgres|stop-kafka|start-kafka
#   scripts/services.sh stop-kafka-node N|kill-kafka-node N|start-kafka-node N   (fault tests)
#   scripts/services.sh status-kafka|reset-kafka
#
# Everything lives under $STREAMFLOW_STATE_DIR (default: <repo>/.services, git-ignored).
# KAFKA_BROKERS=3: node n (1-based) listens on KAFKA_PORT+2(n-1) (clients) and one port above
# (controller), with its data, logs, config and pid under $KAFKA_STATE_DIR/node-n (default
# $STREAMFLOW_STATE_DIR/kafka-cluster); the jars stay in $STREAMFLOW_STATE_DIR/kafka/lib.
# KAFKA_SASL=1: the client (and inter-broker) listener is SASL_PLAINTEXT with SCRAM-SHA-512, one user
# KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD (local-dev defaults below) created when the storage is
# formatted; the controller listener stays PLAINTEXT on $KAFKA_HOST. `status` says what clients set.
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
KAFKA_BROKERS="${KAFKA_BROKERS:-1}"
KAFKA_STATE_DIR="${KAFKA_STATE_DIR:-$STATE/kafka-cluster}"
KAFKA_MESSAGE_MAX_BYTES="${KAFKA_MESSAGE_MAX_BYTES:-2097152}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
KAFKA_SASL="${KAFKA_SASL:-0}"
KAFKA_SASL_DEFAULT_USERNAME=streamflow
KAFKA_SASL_DEFAULT_PASSWORD=streamflow-dev-secret
KAFKA_SASL_USERNAME="${KAFKA_SASL_USERNAME:-$KAFKA_SASL_DEFAULT_USERNAME}"
KAFKA_SASL_PASSWORD="${KAFKA_SASL_PASSWORD:-$KAFKA_SASL_DEFAULT_PASSWORD}"
SASL_MECHANISM=SCRAM-SHA-512

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

for _v in KAFKA_BROKERS KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_MESSAGE_MAX_BYTES KAFKA_START_TIMEOUT; do
  case "${!_v}" in ''|*[!0-9]*) die "$_v=${!_v}: a positive integer expected" ;; esac
done
[ "$KAFKA_BROKERS" -ge 1 ] || die "KAFKA_BROKERS=$KAFKA_BROKERS: one node at least"
case "$KAFKA_SASL" in
  1|true|yes) KAFKA_SASL=1 ;;
  0|false|no) KAFKA_SASL=0 ;;
  *) die "KAFKA_SASL=$KAFKA_SASL: 1 (SASL_PLAINTEXT with SCRAM-SHA-512) or 0 expected" ;;
esac
if [ "$KAFKA_SASL" = 1 ]; then
  # the JAAS line of server.properties and StorageTool's --add-scram take them as they are
  for _v in KAFKA_SASL_USERNAME KAFKA_SASL_PASSWORD; do
    case "${!_v}" in *[!A-Za-z0-9._@:+/-]*)
      die "$_v: only letters, digits and . _ @ : + / - are accepted by this script" ;;
    esac
  done
fi
# The client listener: its name is its security protocol (PLAINTEXT, or SASL_PLAINTEXT with KAFKA_SASL=1).
if [ "$KAFKA_SASL" = 1 ]; then LISTENER=SASL_PLAINTEXT; else LISTENER=PLAINTEXT; fi

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
  # The owner role: createdb for the tests' own databases, createrole for `streamflow apply`, which
  # creates the API's and the consumer's least-privilege roles (streamflow/db_roles.py). The names
  # and the password reach psql through its environment (\getenv), and the statements quote them
  # (format's %I and %L): any character is safe, and none shows in a process's arguments.
  SF_ROLE="$PG_USER" SF_PASSWORD="$PG_PASSWORD" SF_DB="$PG_DB" as_pg "$bin/psql" -h "$PG_SOCK" -p "$PG_PORT" \
    -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA >/dev/null <<'SQL'
\getenv role SF_ROLE
\getenv password SF_PASSWORD
\getenv db SF_DB
SELECT format(CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role')
                   THEN 'ALTER ROLE %I LOGIN CREATEDB CREATEROLE PASSWORD %L'
                   ELSE 'CREATE ROLE %I LOGIN CREATEDB CREATEROLE PASSWORD %L' END,
              :'role', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
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

# --- Kafka nodes ---------------------------------------------------------------------------------
# node_env N sets the NODE_* variables of node N (1-based): one broker alone keeps the historical
# layout ($STATE/kafka/..., KAFKA_PORT/KAFKA_CONTROLLER_PORT); a cluster puts node N under
# $KAFKA_STATE_DIR/node-N with client port KAFKA_PORT+2(N-1) and controller port one above.
node_env() {
  local n=$1
  case "$n" in ''|*[!0-9]*) die "node number expected, got '$n'" ;; esac
  if [ "$n" -lt 1 ] || [ "$n" -gt "$KAFKA_BROKERS" ]; then
    die "no Kafka node $n (KAFKA_BROKERS=$KAFKA_BROKERS)"
  fi
  NODE_ID=$n
  if [ "$KAFKA_BROKERS" = 1 ]; then
    NODE_DIR="$STATE/kafka"
    NODE_PORT=$KAFKA_PORT
    NODE_CPORT=$KAFKA_CONTROLLER_PORT
    NODE_DATA="$KAFKA_DATA"; NODE_LOGS="$KAFKA_LOGS"; NODE_CONF="$KAFKA_CONF"; NODE_PID="$KAFKA_PID"
  else
    NODE_DIR="$KAFKA_STATE_DIR/node-$n"
    NODE_PORT=$((KAFKA_PORT + 2 * (n - 1)))
    NODE_CPORT=$((NODE_PORT + 1))
    NODE_DATA="$NODE_DIR/data"; NODE_LOGS="$NODE_DIR/logs"
    NODE_CONF="$NODE_DIR/server.properties"; NODE_PID="$NODE_DIR/kafka.pid"
  fi
  NODE_LOG4J="$NODE_DIR/log4j2.properties"
}

nodes() { seq 1 "$KAFKA_BROKERS"; }

bootstrap_servers() {
  local n out=""
  for n in $(nodes); do node_env "$n"; out="${out:+$out,}$KAFKA_HOST:$NODE_PORT"; done
  echo "$out"
}

controller_endpoints() {  # host:port of every controller (controller.quorum.bootstrap.servers)
  local n out=""
  for n in $(nodes); do node_env "$n"; out="${out:+$out,}$KAFKA_HOST:$NODE_CPORT"; done
  echo "$out"
}

alive() {  # a process that runs (a zombie, killed but not yet reaped, does not)
  kill -0 "$1" 2>/dev/null || return 1
  [ "$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]
}

# The pid of node N when it runs (the pid file's process, checked to be this node's JVM).
node_pid() {
  node_env "$1"
  [ -f "$NODE_PID" ] || return 1
  local pid; pid=$(cat "$NODE_PID")
  alive "$pid" || return 1
  if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$NODE_CONF"; then
    return 1  # a stale pid file: the number now belongs to another process
  fi
  echo "$pid"
}

kafka_pid() { node_pid 1; }

node_answers() {
  # Up when the client port accepts connections and the server logged its start (a KRaft broker
  # logs it once the controller has registered and unfenced it).
  node_env "$1"
  (exec 3<>"/dev/tcp/$KAFKA_HOST/$NODE_PORT") 2>/dev/null || return 1
  grep -q "Kafka Server started" "$NODE_LOGS/server.log" 2>/dev/null
}

kafka_answers() { node_answers 1; }

port_taken() { (exec 3<>"/dev/tcp/$KAFKA_HOST/$1") 2>/dev/null; }

node_ports_free() {  # before starting node N: nothing else listens on its ports
  node_env "$1"
  local port
  for port in "$NODE_PORT" "$NODE_CPORT"; do
    if port_taken "$port"; then
      die "port $KAFKA_HOST:$port of Kafka node $NODE_ID is taken by another process (the single broker?" \
          "it runs on 9092/9093 by default): stop it, or give the cluster other ports (KAFKA_PORT=19092)"
    fi
  done
}

random_uuid() {  # a Kafka Uuid: 16 random bytes, URL-safe base64 without padding, not led by '-'
  local u
  while :; do
    u=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    case "$u" in -*|AAAAAAAAAAAAAAAAAAAAA*) ;; *) echo "$u"; return ;; esac
  done
}

node_write_conf() {
  node_env "$1"
  mkdir -p "$NODE_DATA" "$NODE_LOGS"
  if [ "$KAFKA_BROKERS" = 1 ]; then
    cat >"$NODE_CONF" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$NODE_CPORT
listeners=$LISTENER://$KAFKA_HOST:$NODE_PORT,CONTROLLER://$KAFKA_HOST:$NODE_CPORT
advertised.listeners=$LISTENER://$KAFKA_HOST:$NODE_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=$LISTENER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,$LISTENER:$LISTENER
log.dirs=$NODE_DATA
num.partitions=${KAFKA_DEFAULT_PARTITIONS:-4}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=$KAFKA_MESSAGE_MAX_BYTES
log.retention.hours=-1
CONF
  else
    local rf=$((KAFKA_BROKERS < 3 ? KAFKA_BROKERS : 3)) isr=1
    [ "$rf" -ge 3 ] && isr=2
    local fetch=$((KAFKA_MESSAGE_MAX_BYTES > 1048576 ? KAFKA_MESSAGE_MAX_BYTES : 1048576))
    cat >"$NODE_CONF" <<CONF
# node $NODE_ID of a $KAFKA_BROKERS-node KRaft cluster (broker and controller), written by scripts/services.sh
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.bootstrap.servers=$(controller_endpoints)
listeners=$LISTENER://$KAFKA_HOST:$NODE_PORT,CONTROLLER://$KAFKA_HOST:$NODE_CPORT
advertised.listeners=$LISTENER://$KAFKA_HOST:$NODE_PORT,CONTROLLER://$KAFKA_HOST:$NODE_CPORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=$LISTENER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,$LISTENER:$LISTENER
log.dirs=$NODE_DATA
num.partitions=${KAFKA_DEFAULT_PARTITIONS:-4}
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=$KAFKA_MESSAGE_MAX_BYTES
replica.fetch.max.bytes=$fetch
log.retention.hours=-1
# a small machine (2 cores) runs all nodes: few threads each, a small log-cleaner buffer
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
num.recovery.threads.per.data.dir=1
background.threads=2
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
CONF
  fi
  if [ "$KAFKA_SASL" = 1 ]; then
    # SCRAM on the client and inter-broker listener; the broker logs in with the user's own
    # credentials (stored in the metadata log by `format --add-scram`, see node_format)
    chmod 600 "$NODE_CONF"
    cat >>"$NODE_CONF" <<CONF
# KAFKA_SASL=1: SASL_PLAINTEXT with $SASL_MECHANISM for clients and between brokers
sasl.enabled.mechanisms=$SASL_MECHANISM
sasl.mechanism.inter.broker.protocol=$SASL_MECHANISM
listener.name.sasl_plaintext.$(echo "$SASL_MECHANISM" | tr 'A-Z' 'a-z').sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$KAFKA_SASL_USERNAME" password="$KAFKA_SASL_PASSWORD";
CONF
  fi
  cat >"$NODE_LOG4J" <<CONF
status = error
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $NODE_LOGS/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.groups.name = org.apache.kafka.coordinator.group
logger.groups.level = INFO
CONF
}

# Run java with the main class and its arguments in an argument file (mode 600, removed after):
# a password among them never shows in the process's arguments (ps, /proc/PID/cmdline).
# $1: the file; then the JVM options, `--`, the main class and its arguments.
java_with_argfile() {
  local file=$1 a opts=(); shift
  while [ "$1" != -- ]; do opts+=("$1"); shift; done; shift
  (
    umask 077
    for a in "$@"; do a=${a//\\/\\\\}; a=${a//\"/\\\"}; printf '"%s"\n' "$a"; done >"$file"
  )
  local rc=0
  java "${opts[@]}" "@$file" || rc=$?
  rm -f "$file"
  return "$rc"
}

# Format node N's storage (once). $2: the extra StorageTool arguments (quorum bootstrap).
# KAFKA_SASL=1 adds the SCRAM user to the metadata log (--add-scram) and notes it in
# $NODE_DIR/sasl.user, checked at every later start (node_check_sasl).
node_format() {
  local n=$1 cid=$2; shift 2
  node_env "$n"
  local scram=()
  [ "$KAFKA_SASL" = 1 ] && scram=(--add-scram "$SASL_MECHANISM=[name=$KAFKA_SASL_USERNAME,password=$KAFKA_SASL_PASSWORD]")
  java_with_argfile "$NODE_DIR/format.args" -cp "$KAFKA_LIB/*" -Dlog4j2.configurationFile="$NODE_LOG4J" -- \
    kafka.tools.StorageTool format -t "$cid" -c "$NODE_CONF" "$@" "${scram[@]}" >"$NODE_LOGS/format.log" 2>&1 \
    || die "formatting Kafka storage of node $NODE_ID failed; see $NODE_LOGS/format.log"
  if [ "$KAFKA_SASL" = 1 ]; then sasl_mark >"$NODE_DIR/sasl.user"; else rm -f "$NODE_DIR/sasl.user"; fi
}

node_formatted() { node_env "$1"; [ -f "$NODE_DATA/meta.properties" ]; }

# What a SASL storage was formatted with: the user and a digest of its password (not the password).
sasl_mark() {
  printf '%s %s\n' "$KAFKA_SASL_USERNAME" \
    "$(printf '%s:%s' "$KAFKA_SASL_USERNAME" "$KAFKA_SASL_PASSWORD" | sha256sum | cut -c1-16)"
}

# A formatted node starts only with the SASL settings it was formatted with: the SCRAM user lives
# in its metadata log, and the broker logs in to itself with it.
node_check_sasl() {
  node_formatted "$1" || return 0
  node_env "$1"
  local had="" reset="KAFKA_STATE_DIR=$KAFKA_STATE_DIR STREAMFLOW_STATE_DIR=$STATE KAFKA_BROKERS=$KAFKA_BROKERS $0 reset-kafka"
  [ -f "$NODE_DIR/sasl.user" ] && had=$(cat "$NODE_DIR/sasl.user")
  if [ "$KAFKA_SASL" = 1 ] && [ -z "$had" ]; then
    die "Kafka node $NODE_ID was formatted without SASL (KAFKA_SASL unset): start it so, or remove its data first: $reset"
  elif [ "$KAFKA_SASL" = 1 ] && [ "$had" != "$(sasl_mark)" ]; then
    die "Kafka node $NODE_ID was formatted with SASL user '${had%% *}' and another password or user than" \
        "KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD give: start it with those, or remove its data first: $reset"
  elif [ "$KAFKA_SASL" = 0 ] && [ -n "$had" ]; then
    die "Kafka node $NODE_ID was formatted with SASL (user '${had%% *}'): start it with KAFKA_SASL=1 and" \
        "its credentials, or remove its data first: $reset"
  fi
}

node_jvm_opts() {
  if [ "$KAFKA_BROKERS" = 1 ]; then
    echo "-Xms256m -Xmx${KAFKA_HEAP:-1g} -XX:+UseG1GC"
  else
    # several JVMs share 2 cores / 24 GiB: a small heap, G1 with few GC and JIT threads
    echo "-Xms256m -Xmx${KAFKA_HEAP:-512m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20" \
         "-XX:InitiatingHeapOccupancyPercent=35 -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1" \
         "-XX:CICompilerCount=2 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true"
  fi
}

node_launch() {
  node_env "$1"
  if [ "$KAFKA_BROKERS" = 1 ]; then
    log "starting Kafka (KRaft) on $KAFKA_HOST:$NODE_PORT"
  else
    log "starting Kafka node $NODE_ID (KRaft) on $KAFKA_HOST:$NODE_PORT, controller $KAFKA_HOST:$NODE_CPORT"
  fi
  # this start's log begins empty (start-up is read from it); the last 5 starts' logs are kept
  for i in 4 3 2 1; do
    [ -f "$NODE_LOGS/server.log.$i" ] && mv -f "$NODE_LOGS/server.log.$i" "$NODE_LOGS/server.log.$((i + 1))"
  done
  [ -s "$NODE_LOGS/server.log" ] && mv -f "$NODE_LOGS/server.log" "$NODE_LOGS/server.log.1"
  : >"$NODE_LOGS/server.log"
  # shellcheck disable=SC2046 # the JVM options are words
  nohup java $(node_jvm_opts) -Dlog4j2.configurationFile="$NODE_LOG4J" \
    -cp "$KAFKA_LIB/*" kafka.Kafka "$NODE_CONF" >"$NODE_LOGS/stdout.log" 2>&1 &
  echo $! >"$NODE_PID"
}

# Wait until node N answers; $2: deadline (epoch seconds). Returns 1 when the node exited.
node_wait() {
  local n=$1 deadline=$2
  node_env "$n"
  local pid; pid=$(cat "$NODE_PID")
  while :; do
    # the pid just launched (not node_pid: until nohup has exec'd java, its command line is the shell's)
    alive "$pid" || return 1
    node_answers "$n" && return 0
    [ "$(date +%s)" -lt "$deadline" ] || return 2
    sleep 0.5
  done
}

# All brokers registered: a KRaft broker logs "The broker has been unfenced" once the active
# controller committed its registration to the metadata log and let it serve; count the nodes that
# say so since their last start.
kafka_cluster_registered() {
  local n count=0
  for n in $(nodes); do
    node_env "$n"
    grep -q "The broker has been unfenced" "$NODE_LOGS/server.log" 2>/dev/null && count=$((count + 1))
  done
  [ "$count" = "$KAFKA_BROKERS" ]
}

kafka_cluster_check_layout() {
  # The voters' endpoints are written into the metadata log when it is formatted: a cluster
  # formatted with other ports or another size cannot start with these.
  local f="$KAFKA_STATE_DIR/cluster.env" want
  want="KAFKA_BROKERS=$KAFKA_BROKERS KAFKA_HOST=$KAFKA_HOST KAFKA_PORT=$KAFKA_PORT"
  if [ -f "$f" ] && [ "$(grep -v '^CLUSTER_ID=' "$f" | tr '\n' ' ' | sed 's/ $//')" != "$want" ]; then
    die "$KAFKA_STATE_DIR holds a cluster formatted as: $(grep -v '^CLUSTER_ID=' "$f" | tr '\n' ' ');" \
        "start it with those settings, or remove it first: KAFKA_STATE_DIR=$KAFKA_STATE_DIR $want $0 reset-kafka"
  fi
}

kafka_cluster_format() {
  local n formatted=0
  for n in $(nodes); do node_formatted "$n" && formatted=$((formatted + 1)); done
  [ "$formatted" = "$KAFKA_BROKERS" ] && return 0
  if [ "$formatted" != 0 ]; then
    die "some nodes of the cluster in $KAFKA_STATE_DIR have no data (a lost disk): remove the cluster" \
        "(KAFKA_BROKERS=$KAFKA_BROKERS KAFKA_STATE_DIR=$KAFKA_STATE_DIR $0 reset-kafka) and start again"
  fi
  # a new cluster: every node is formatted with the same id and the same initial voter set
  # (node-id@host:controller-port:directory-id), so the controllers elect a leader among themselves
  local cid voters="" dir
  cid=$(random_uuid)
  for n in $(nodes); do
    node_env "$n"; dir=$(random_uuid)
    voters="${voters:+$voters,}$NODE_ID@$KAFKA_HOST:$NODE_CPORT:$dir"
  done
  log "formatting a $KAFKA_BROKERS-node KRaft cluster in $KAFKA_STATE_DIR (voters $voters)"
  local pids=()
  for n in $(nodes); do
    node_format "$n" "$cid" --initial-controllers "$voters" &
    pids+=($!)
  done
  for n in "${pids[@]}"; do wait "$n" || die "formatting the Kafka cluster failed"; done
  printf 'CLUSTER_ID=%s\nKAFKA_BROKERS=%s\nKAFKA_HOST=%s\nKAFKA_PORT=%s\n' \
    "$cid" "$KAFKA_BROKERS" "$KAFKA_HOST" "$KAFKA_PORT" >"$KAFKA_STATE_DIR/cluster.env"
}

# Kafka's own tools (ConsumerGroupCommand), in a folder of their own: the tests compare our lag with them.
kafka_tools_fetch() {
  local lib="$STATE/kafka/tools" pom="$ROOT/scripts/kafka/tools-pom.xml"
  if [ -f "$lib/.complete" ] && [ "$lib/.complete" -nt "$pom" ]; then return; fi
  log "fetching Kafka's command-line tools with Maven (first run only)"
  rm -rf "$lib"; mkdir -p "$lib"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$lib" -DincludeScope=runtime \
    >"$STATE/maven-tools.log" 2>&1 || die "Maven could not fetch kafka-tools; see $STATE/maven-tools.log"
  touch "$lib/.complete"
}

kafka_up() {
  mkdir -p "$STATE/kafka"
  kafka_fetch
  kafka_tools_fetch
  if [ "$KAFKA_BROKERS" = 1 ]; then kafka_single_up; else kafka_cluster_up; fi
}

kafka_single_up() {
  if kafka_pid >/dev/null; then log "Kafka already running on $KAFKA_HOST:$KAFKA_PORT"; return; fi
  node_check_sasl 1
  node_write_conf 1
  if ! node_formatted 1; then
    log "formatting Kafka KRaft storage in $KAFKA_DATA"
    node_format 1 "$(random_uuid)" --standalone
  fi
  node_launch 1
  local rc=0
  node_wait 1 $(( $(date +%s) + 60 )) || rc=$?
  case $rc in
    0) log "Kafka is up" ;;
    1) die "Kafka exited during start-up; see $KAFKA_LOGS/stdout.log and $KAFKA_LOGS/server.log" ;;
    *) kafka_down; die "Kafka did not answer within 60 s; see $KAFKA_LOGS/server.log" ;;
  esac
}

kafka_cluster_up() {
  mkdir -p "$KAFKA_STATE_DIR"
  kafka_cluster_check_layout
  local n t0; t0=$(date +%s)
  for n in $(nodes); do node_pid "$n" >/dev/null || node_ports_free "$n"; done
  for n in $(nodes); do node_pid "$n" >/dev/null || node_check_sasl "$n"; done
  for n in $(nodes); do node_pid "$n" >/dev/null || node_write_conf "$n"; done
  kafka_cluster_format
  for n in $(nodes); do
    if node_pid "$n" >/dev/null; then
      node_env "$n"; log "Kafka node $n already running on $KAFKA_HOST:$NODE_PORT"
    else
      node_launch "$n"
    fi
  done
  local deadline=$((t0 + KAFKA_START_TIMEOUT)) rc
  for n in $(nodes); do
    rc=0; node_wait "$n" "$deadline" || rc=$?
    node_env "$n"
    case $rc in
      0) ;;
      1) die "Kafka node $n exited during start-up; see $NODE_LOGS/stdout.log and $NODE_LOGS/server.log" ;;
      *) die "Kafka node $n did not answer within ${KAFKA_START_TIMEOUT} s; see $NODE_LOGS/server.log" \
             "(the nodes keep running: $0 stop-kafka stops them)" ;;
    esac
  done
  while ! kafka_cluster_registered; do
    [ "$(date +%s)" -lt "$deadline" ] || die "not all $KAFKA_BROKERS brokers registered within ${KAFKA_START_TIMEOUT} s"
    sleep 0.5
  done
  log "Kafka cluster is up: $KAFKA_BROKERS brokers registered, $(( $(date +%s) - t0 )) s" \
      "(bootstrap $(bootstrap_servers))"
}

# Stop node N: $2 = TERM (wait for a clean shutdown, then KILL after $3 s) or KILL.
node_stop() {
  local n=$1 sig=${2:-TERM} grace=${3:-60} pid
  node_env "$n"
  if ! pid=$(node_pid "$n"); then
    node_env "$n"; log "Kafka node $n is not running"; rm -f "$NODE_PID"; return 0
  fi
  if [ "$KAFKA_BROKERS" = 1 ] && [ "$sig" = TERM ]; then
    log "stopping Kafka (pid $pid)"
  else
    log "stopping Kafka node $n (pid $pid, SIG$sig)"
  fi
  kill -s "$sig" "$pid" 2>/dev/null || true
  node_reap "$n" "$pid" "$grace"
}

node_reap() {  # wait for pid $2 of node $1 to exit ($3 s, then SIGKILL)
  local n=$1 pid=$2 grace=$3 deadline
  deadline=$(( $(date +%s) + grace ))
  while alive "$pid"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "Kafka node $n (pid $pid) still runs after ${grace} s: SIGKILL"; kill -9 "$pid" 2>/dev/null || true
      deadline=$(( $(date +%s) + 30 ))
    fi
    sleep 0.2
  done
  node_env "$n"; rm -f "$NODE_PID"
}

kafka_down() {
  if [ "$KAFKA_BROKERS" = 1 ]; then
    if kafka_pid >/dev/null; then node_stop 1 TERM 30; else log "Kafka is not running"; fi
    return
  fi
  # all nodes at once: each broker shuts down before its controller, so the quorum stays up while
  # the brokers hand their partitions over
  local n pid pids=()
  for n in $(nodes); do
    if pid=$(node_pid "$n"); then
      log "stopping Kafka node $n (pid $pid)"; kill "$pid" 2>/dev/null || true; pids+=("$n:$pid")
    fi
  done
  [ "${#pids[@]}" -gt 0 ] || { log "no Kafka node is running"; return 0; }
  for pid in "${pids[@]}"; do node_reap "${pid%%:*}" "${pid#*:}" 60; done
}

node_start() {
  local n=$1 pid
  node_env "$n"
  kafka_fetch
  if pid=$(node_pid "$n"); then node_env "$n"; log "Kafka node $n already running (pid $pid)"; return 0; fi
  if [ "$KAFKA_BROKERS" = 1 ]; then kafka_single_up; return; fi
  mkdir -p "$KAFKA_STATE_DIR"
  kafka_cluster_check_layout
  node_ports_free "$n"
  local m
  for m in $(nodes); do node_pid "$m" >/dev/null || node_check_sasl "$m"; done
  for m in $(nodes); do node_pid "$m" >/dev/null || node_write_conf "$m"; done
  kafka_cluster_format
  node_launch "$n"
  local rc=0 t0; t0=$(date +%s)
  node_wait "$n" $((t0 + KAFKA_START_TIMEOUT)) || rc=$?
  node_env "$n"
  case $rc in
    0) log "Kafka node $n is up ($(( $(date +%s) - t0 )) s)" ;;
    1) die "Kafka node $n exited during start-up; see $NODE_LOGS/server.log" ;;
    *) die "Kafka node $n did not answer within ${KAFKA_START_TIMEOUT} s (a quorum needs a majority" \
           "of the controllers running); see $NODE_LOGS/server.log" ;;
  esac
}

kafka_status() {
  local rc=0 pid n
  if [ "$KAFKA_BROKERS" = 1 ]; then
    if pid=$(kafka_pid); then
      echo "kafka:    running  $KAFKA_HOST:$KAFKA_PORT (KRaft, pid $pid)  data=$KAFKA_DATA"
    else
      echo "kafka:    stopped"; rc=1
    fi
  else
    for n in $(nodes); do
      node_env "$n"
      if pid=$(node_pid "$n"); then
        echo "kafka node $n: running  id=$n $KAFKA_HOST:$NODE_PORT controller=$KAFKA_HOST:$NODE_CPORT pid=$pid  data=$NODE_DATA"
      else
        echo "kafka node $n: stopped  id=$n $KAFKA_HOST:$NODE_PORT controller=$KAFKA_HOST:$NODE_CPORT  data=$NODE_DATA"; rc=1
      fi
    done
  fi
  echo "kafka bootstrap: KAFKA_BOOTSTRAP_SERVERS=$(bootstrap_servers)"
  kafka_client_settings
  return $rc
}

# With a SASL broker (as node 1's config says, whatever this shell's KAFKA_SASL): what clients set.
kafka_client_settings() {
  node_env 1
  local jaas user password
  jaas=$(grep -s '^listener\.name\.sasl_plaintext\..*\.sasl\.jaas\.config=' "$NODE_CONF" || true)
  [ -n "$jaas" ] || return 0
  user=$(printf '%s' "$jaas" | sed -n 's/.* username="\([^"]*\)".*/\1/p')
  password=$(printf '%s' "$jaas" | sed -n 's/.* password="\([^"]*\)".*/\1/p')
  # the local-dev default is shown; a password of one's own is not printed
  [ "$password" = "$KAFKA_SASL_DEFAULT_PASSWORD" ] || password="<the KAFKA_SASL_PASSWORD the broker was started with>"
  echo "kafka clients:   KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT KAFKA_SASL_MECHANISM=$SASL_MECHANISM" \
       "KAFKA_SASL_USERNAME=$user KAFKA_SASL_PASSWORD=$password"
}

kafka_reset() {
  kafka_down
  if [ "$KAFKA_BROKERS" = 1 ]; then
    rm -rf "$KAFKA_DATA"
    rm -f "$STATE/kafka/sasl.user"
  else
    local n
    for n in $(nodes); do node_env "$n"; rm -rf "$NODE_DIR"; done
    rm -f "$KAFKA_STATE_DIR/cluster.env"
    rmdir "$KAFKA_STATE_DIR" 2>/dev/null || true
  fi
}

status() {
  local rc=0
  if pg_running; then
    echo "postgres: running  postgresql://$PG_USER@$PG_HOST:$PG_PORT/$PG_DB  data=$PG_DATA"
  else
    echo "postgres: stopped"; rc=1
  fi
  kafka_status || rc=1
  return $rc
}

case "${1:-}" in
  up) pg_up; kafka_up; status ;;
  down) kafka_down; pg_down ;;
  status) status ;;
  status-kafka) kafka_status ;;
  start-postgres) pg_up ;;
  stop-postgres) pg_down ;;
  restart-postgres) pg_down; pg_up ;;
  start-kafka) kafka_up ;;
  stop-kafka) kafka_down ;;
  start-kafka-node) node_start "${2:?usage: $0 start-kafka-node N}" ;;
  stop-kafka-node) node_stop "${2:?usage: $0 stop-kafka-node N}" TERM 60 ;;
  kill-kafka-node) node_stop "${2:?usage: $0 kill-kafka-node N}" KILL 30 ;;
  reset-kafka) kafka_reset ;;
  reset) kafka_reset; pg_down; rm -rf "$PG_DATA" "$PG_SOCK" ;;
  *) echo "usage: $0 {up|down|status|status-kafka|reset|reset-kafka|start-postgres|stop-postgres|restart-postgres|start-kafka|stop-kafka|start-kafka-node N|stop-kafka-node N|kill-kafka-node N}" >&2; exit 2 ;;
esac
