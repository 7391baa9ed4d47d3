#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, loopback only) for Ensemble's
# development and integration tests, assembled from Maven Central. See README.md here.
#
#   broker.sh start    assemble the classpath (once), format storage, start, wait until ready;
#                      prints the bootstrap address (127.0.0.1:PORT) on stdout when ready
#   broker.sh stop     stop the broker this script started (only that PID)
#   broker.sh status   running or not, and on which port
#   broker.sh env USER print `export ENSEMBLE_KAFKA_...` lines that make a client USER
#                      (admin, flow, ingestor, alerts, copilot, operator)
#
# Secured by default (ENSEMBLE_KAFKA_SECURITY=sasl_ssl): SASL/SCRAM-SHA-512 over TLS on the
# client port, mutual TLS on the controller port, KRaft's StandardAuthorizer with no access
# unless an ACL grants it. A CA, the broker's certificate and one SCRAM user per component
# are made at the first start (kept in <state>/secrets, mode 700). ACLs per topic prefix are
# granted by `python -m dataflows.topics` (run as admin). ENSEMBLE_KAFKA_SECURITY=plaintext
# gives the unauthenticated broker: for the quick start on a laptop only.
#
# Messages go to stderr; stdout carries only the bootstrap address, so
#   BOOTSTRAP=$(deploy/kafka/broker.sh start)
# works.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/../.." && pwd)"
POM="$SCRIPT_DIR/pom.xml"
LOG4J_CONF="$SCRIPT_DIR/log4j2.xml"

PORT="${ENSEMBLE_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${ENSEMBLE_KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HOME_DIR="${ENSEMBLE_KAFKA_HOME:-$HOME/.cache/ensemble-kafka}"
STATE_DIR="${ENSEMBLE_KAFKA_STATE:-$REPO_ROOT/.kafka}"
KEEP_DATA="${ENSEMBLE_KAFKA_KEEP_DATA:-0}"
START_TIMEOUT="${ENSEMBLE_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${ENSEMBLE_KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${ENSEMBLE_KAFKA_HEAP_OPTS:--Xms512m -Xmx512m}"
EXTRA_JAVA_OPTS="${ENSEMBLE_KAFKA_JAVA_OPTS:-}"
MVN="${ENSEMBLE_KAFKA_MVN:-mvn}"
SECURITY="${ENSEMBLE_KAFKA_SECURITY:-sasl_ssl}"
# One SCRAM principal per component; admin is the broker's own and the only super user.
USERS="admin flow ingestor alerts copilot operator"
if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
  JAVA="${ENSEMBLE_KAFKA_JAVA:-$JAVA_HOME/bin/java}"
else
  JAVA="${ENSEMBLE_KAFKA_JAVA:-java}"
fi

HOST=127.0.0.1
BOOTSTRAP="$HOST:$PORT"
DATA_DIR="$STATE_DIR/data"
LOG_DIR="$STATE_DIR/logs"
PID_FILE="$STATE_DIR/broker.pid"
PORT_FILE="$STATE_DIR/broker.port"
CONFIG_FILE="$STATE_DIR/server.properties"
SECRETS_DIR="$STATE_DIR/secrets"
TLS_DIR="$SECRETS_DIR/tls"
SERVER_LOG="$LOG_DIR/server.log"
JVM_OUT="$LOG_DIR/broker.out"

die() { echo "broker.sh: error: $*" >&2; exit 1; }
say() { echo "broker.sh: $*" >&2; }

for v in PORT CONTROLLER_PORT START_TIMEOUT STOP_TIMEOUT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a number, got '${!v}'"
done
[[ "$SECURITY" == sasl_ssl || "$SECURITY" == plaintext ]] || die "ENSEMBLE_KAFKA_SECURITY must be sasl_ssl or plaintext, got '$SECURITY'"
[[ "$PORT" != "$CONTROLLER_PORT" ]] || die "ENSEMBLE_KAFKA_PORT and ENSEMBLE_KAFKA_CONTROLLER_PORT must differ"

KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\([^<]*\)</kafka.version>.*:\1:p' "$POM" | head -n1)"
[[ -n "$KAFKA_VERSION" ]] || die "cannot read <kafka.version> from $POM"
LIB_DIR="$KAFKA_HOME_DIR/kafka-$KAFKA_VERSION/lib"
STAMP_FILE="$KAFKA_HOME_DIR/kafka-$KAFKA_VERSION/classpath.stamp"

# --- helpers -----------------------------------------------------------------------

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# True if a Kafka broker answers on 127.0.0.1:$1: send a raw ApiVersions v0 request
# (api_key 18, correlation id 1, null client id) and expect correlation id 1 with
# error_code 0 back. Every Kafka since 0.10 answers it, 4.x included; needs only bash.
kafka_ping() {
  local hex
  hex="$(timeout 3 bash -c '
      exec 3<>"/dev/tcp/$0/$1" || exit 1
      printf "\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x01\xff\xff" >&3
      head -c 10 <&3 | od -An -tx1' "$HOST" "$1" 2>/dev/null | tr -d ' \n')" || return 1
  [[ "$hex" =~ ^[0-9a-f]{8}000000010000$ ]]
}

# The PID recorded by a previous start, if that process is still our broker.
recorded_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(tr -dc '0-9' <"$PID_FILE")"
  [[ -n "$pid" ]] || return 1
  alive "$pid" || return 1
  # Guard against PID reuse: it must be a kafka.Kafka JVM on our config file.
  if [[ -r "/proc/$pid/cmdline" ]]; then
    local cmd
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
    [[ "$cmd" == *kafka.Kafka*"$CONFIG_FILE"* ]] || return 1
  fi
  echo "$pid"
}

# Assemble the broker classpath into $LIB_DIR once per Kafka version (and pom.xml content).
ensure_classpath() {
  local want
  want="$(sha256sum "$POM" | cut -d' ' -f1)"
  if [[ -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$want" ]] \
     && compgen -G "$LIB_DIR/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null; then
    return 0
  fi
  command -v "$MVN" >/dev/null 2>&1 || die "'$MVN' not found: Maven is needed once to download Kafka $KAFKA_VERSION"
  say "assembling Kafka $KAFKA_VERSION classpath into $LIB_DIR (Maven, first run only)..."
  local base tmp t0
  base="$(dirname "$LIB_DIR")"
  mkdir -p "$base"
  tmp="$(mktemp -d "$base/lib.tmp.XXXXXX")"
  t0=$SECONDS
  # Honours MAVEN_OPTS (e.g. -Dmaven.repo.local=...) and ~/.m2/settings.xml as usual.
  if ! "$MVN" -B -q -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" \
        -Dkafka.build.dir="$base/mvn-build" >"$base/mvn.log" 2>&1; then
    tail -n 50 "$base/mvn.log" >&2
    rm -rf "$tmp"
    die "Maven could not assemble the Kafka classpath (output above, full log $base/mvn.log)"
  fi
  [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after Maven"; }
  rm -rf "$LIB_DIR" "$base/mvn-build"
  mv "$tmp" "$LIB_DIR"
  echo "$want" >"$STAMP_FILE"
  say "classpath ready: $(ls "$LIB_DIR" | wc -l) jars in $((SECONDS - t0)) s"
}

# A random secret of 32 hex characters (no shell or JAAS metacharacters).
random_secret() { openssl rand -hex 16; }

# The CA, the broker's key and certificate (SAN 127.0.0.1, localhost) and one password per
# user, made once per state directory and kept across starts (so exported settings stay
# valid); `rm -rf <state>/secrets` makes new ones.
ensure_secrets() {
  mkdir -p "$TLS_DIR"
  chmod 700 "$SECRETS_DIR"
  local u
  for u in $USERS; do
    [[ -s "$SECRETS_DIR/$u.password" ]] || (umask 077; random_secret >"$SECRETS_DIR/$u.password")
  done
  [[ -s "$SECRETS_DIR/tls.password" ]] || (umask 077; random_secret >"$SECRETS_DIR/tls.password")
  if [[ -s "$TLS_DIR/ca.pem" && -s "$TLS_DIR/broker.p12" ]] \
     && openssl x509 -checkend 86400 -noout -in "$TLS_DIR/broker.pem" >/dev/null 2>&1; then
    return 0
  fi
  say "making a test CA and the broker's TLS certificate in $TLS_DIR"
  local pw
  pw="$(cat "$SECRETS_DIR/tls.password")"
  (
    umask 077
    cd "$TLS_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
      -subj "/CN=ensemble-test-ca" -keyout ca.key -out ca.pem \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj "/CN=ensemble-broker" -keyout broker.key -out broker.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \
      -extfile broker.ext -out broker.pem 2>/dev/null
    # A PKCS#12 key store (Java 17 cannot read PBES2-encrypted PEM keys).
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
      -passout "pass:$pw" -out broker.p12
    rm -f broker.csr broker.ext broker.key ca.srl
  ) || die "openssl could not make the TLS certificates in $TLS_DIR"
}

# `--add-scram` arguments for StorageTool: KRaft keeps SCRAM credentials in the metadata
# log, so they are written at format time (the broker itself authenticates as admin).
scram_args() {
  local u
  for u in $USERS; do
    printf '%s\n' "--add-scram" "SCRAM-SHA-512=[name=$u,password=$(cat "$SECRETS_DIR/$u.password")]"
  done
}

write_listeners() {
  if [[ "$SECURITY" == plaintext ]]; then
    cat <<EOF
# PLAINTEXT: no authentication, no authorisation. Quick start only (ENSEMBLE_KAFKA_SECURITY=plaintext).
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
EOF
    return 0
  fi
  local tls_pw admin_pw
  tls_pw="$(cat "$SECRETS_DIR/tls.password")"
  admin_pw="$(cat "$SECRETS_DIR/admin.password")"
  cat <<EOF
# SASL/SCRAM over TLS for clients and the broker itself; mutual TLS to the controller.
listeners=SASL_SSL://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=SASL_SSL://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_pw";
listener.name.controller.ssl.client.auth=required
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/broker.p12
ssl.keystore.password=$tls_pw
ssl.key.password=$tls_pw
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
# No access unless an ACL grants it; the broker (admin, and its certificate on the
# controller listener) is the only super user.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:CN=ensemble-broker
EOF
}

# The client settings that make a Python client of the project USER (dataflows/kafka_security.py).
cmd_env() {
  local u="${1:-}"
  [[ " $USERS " == *" $u "* ]] || die "env: USER must be one of: $USERS"
  if [[ "$SECURITY" == plaintext ]]; then
    echo "export ENSEMBLE_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"
    return 0
  fi
  [[ -s "$SECRETS_DIR/$u.password" ]] || die "no credentials in $SECRETS_DIR yet: run 'broker.sh start' first"
  echo "export ENSEMBLE_KAFKA_SECURITY_PROTOCOL=SASL_SSL"
  echo "export ENSEMBLE_KAFKA_SASL_MECHANISM=SCRAM-SHA-512"
  echo "export ENSEMBLE_KAFKA_SASL_USERNAME=$u"
  echo "export ENSEMBLE_KAFKA_SASL_PASSWORD_FILE=$SECRETS_DIR/$u.password"
  echo "export ENSEMBLE_KAFKA_SSL_CA=$TLS_DIR/ca.pem"
}

write_config() {
  (umask 077; cat >"$CONFIG_FILE" <<EOF
# Written by deploy/kafka/broker.sh: single-node KRaft broker, loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
$(write_listeners)
log.dirs=$DATA_DIR
# Topics are provisioned explicitly, never created by a stray producer or consumer.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
log.segment.bytes=1048576
EOF
  )
}

# Short-lived JVM runs (StorageTool): small heap, fast startup.
run_tool() {
  "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$LOG_DIR" \
    -cp "$LIB_DIR/*" kafka.tools.StorageTool "$@"
}

# Pick a client-level readiness probe: a Python with confluent-kafka or kafka-python.
PROBE_PY=""
PROBE_KIND=""
find_probe() {
  local cands=() py kind
  if [[ -n "${ENSEMBLE_KAFKA_PYTHON:-}" ]]; then cands+=("$ENSEMBLE_KAFKA_PYTHON"); fi
  if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then cands+=("$REPO_ROOT/.venv/bin/python"); fi
  cands+=(python3)
  for py in "${cands[@]}"; do
    command -v "$py" >/dev/null 2>&1 || continue
    for kind in confluent_kafka kafka; do
      if "$py" -c "import $kind" >/dev/null 2>&1; then
        PROBE_PY="$py"; PROBE_KIND="$kind"; return 0
      fi
    done
  done
  return 1
}

# One client-level request: fetch cluster metadata and require our broker in it.
# On the secured broker it authenticates as admin over TLS.
client_probe() {
  local sec=("" "" "")
  if [[ "$SECURITY" == sasl_ssl ]]; then
    sec=(admin "$SECRETS_DIR/admin.password" "$TLS_DIR/ca.pem")
  fi
  timeout 20 "$PROBE_PY" - "$BOOTSTRAP" "$PROBE_KIND" "${sec[@]}" >/dev/null 2>&1 <<'PY'
import sys
bootstrap, kind, user, pw_file, ca = sys.argv[1:6]
pw = open(pw_file).read().strip() if user else ""
if kind == "confluent_kafka":
    from confluent_kafka.admin import AdminClient
    sec = {"security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512",
           "sasl.username": user, "sasl.password": pw, "ssl.ca.location": ca} if user else {}
    md = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, **sec}).list_topics(timeout=5)
    ok = len(md.brokers) > 0
else:
    from kafka import KafkaAdminClient
    cfg = dict(bootstrap_servers=bootstrap, client_id="ensemble-broker-probe",
               request_timeout_ms=5000, bootstrap_timeout_ms=5000,
               api_version_auto_timeout_ms=5000)
    if user:
        cfg.update(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                   sasl_plain_username=user, sasl_plain_password=pw, ssl_cafile=ca)
    # kafka-python 2.x and 3.x accept different keys and reject unknown ones.
    admin = KafkaAdminClient(**{k: v for k, v in cfg.items()
                                if k in KafkaAdminClient.DEFAULT_CONFIG})
    try:
        admin.list_topics()
        ok = len(admin.describe_cluster().get("brokers", [])) > 0
    finally:
        admin.close()
sys.exit(0 if ok else 1)
PY
}

# The raw ApiVersions ping speaks plain TCP: on the TLS port an open port must do.
listener_up() {
  if [[ "$SECURITY" == sasl_ssl ]]; then port_open "$1"; else kafka_ping "$1"; fi
}

is_ready() {
  listener_up "$PORT" || return 1
  grep -q "Kafka Server started" "$SERVER_LOG" 2>/dev/null || return 1
  if [[ -n "$PROBE_KIND" ]]; then client_probe || return 1; fi
  return 0
}

show_logs() {
  say "last 50 lines of $SERVER_LOG:"
  tail -n 50 "$SERVER_LOG" >&2 2>/dev/null || echo "  (no server.log)" >&2
  if [[ -s "$JVM_OUT" ]]; then
    say "last 50 lines of $JVM_OUT:"
    tail -n 50 "$JVM_OUT" >&2
  fi
}

lock_state() {
  mkdir -p "$STATE_DIR"
  # The state dir lives in the work tree by default: keep git from ever seeing it.
  if [[ ! -f "$STATE_DIR/.gitignore" ]]; then echo '*' >"$STATE_DIR/.gitignore"; fi
  exec 9>"$STATE_DIR/.lock"
  flock -w 180 9 || die "another broker.sh is busy with $STATE_DIR"
}

# --- subcommands ---------------------------------------------------------------------

cmd_start() {
  lock_state
  local pid
  if pid="$(recorded_pid)"; then
    say "broker already running (started by this script, pid $pid): reusing it"
  elif port_open "$PORT"; then
    find_probe || true
    if ! listener_up "$PORT" || { [[ -n "$PROBE_KIND" ]] && ! client_probe; }; then
      die "port $PORT is in use by something that does not answer as a Kafka broker; set ENSEMBLE_KAFKA_PORT"
    fi
    say "a broker is already listening on $BOOTSTRAP: reusing it (not starting another; 'stop' will not touch it)"
    echo "$BOOTSTRAP"
    return 0
  else
    if port_open "$CONTROLLER_PORT"; then
      die "controller port $CONTROLLER_PORT is in use; set ENSEMBLE_KAFKA_CONTROLLER_PORT"
    fi
    command -v "$JAVA" >/dev/null 2>&1 || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
    local t0=$SECONDS
    ensure_classpath

    rm -f "$PID_FILE" "$PORT_FILE"
    if [[ "$KEEP_DATA" != "1" ]]; then
      rm -rf -- "$DATA_DIR" "$STATE_DIR/cluster.id"
    fi
    mkdir -p "$DATA_DIR" "$LOG_DIR"
    # Fresh logs each start (keep the previous run's for a post-mortem).
    local f
    for f in "$SERVER_LOG" "$JVM_OUT"; do
      if [[ -f "$f" ]]; then mv -f "$f" "$f.prev"; fi
    done
    if [[ "$SECURITY" == sasl_ssl ]]; then ensure_secrets; fi
    write_config

    local cluster_id
    if [[ -s "$STATE_DIR/cluster.id" ]]; then
      cluster_id="$(cat "$STATE_DIR/cluster.id")"
    else
      cluster_id="$(run_tool random-uuid 2>>"$JVM_OUT" | tail -n1)"
      [[ "$cluster_id" =~ ^[A-Za-z0-9_-]{22}$ ]] || { show_logs; die "StorageTool random-uuid failed"; }
      echo "$cluster_id" >"$STATE_DIR/cluster.id"
    fi
    # -g (--ignore-formatted): a no-op on a directory that is already formatted.
    local scram=()
    if [[ "$SECURITY" == sasl_ssl ]]; then mapfile -t scram < <(scram_args); fi
    if ! run_tool format -t "$cluster_id" -c "$CONFIG_FILE" -g "${scram[@]}" >>"$JVM_OUT" 2>&1; then
      show_logs; die "StorageTool format failed"
    fi

    say "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (controller $HOST:$CONTROLLER_PORT, state $STATE_DIR)"
    # setsid: own session, so a Ctrl-C in the calling shell does not reach the broker.
    # The child records its own PID, then execs the JVM; fd 9 (our lock) is not inherited.
    # shellcheck disable=SC2086
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" \
      "$JAVA" $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
      -Djava.awt.headless=true $EXTRA_JAVA_OPTS \
      -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$LOG_DIR" \
      -cp "$LIB_DIR/*" kafka.Kafka "$CONFIG_FILE" \
      </dev/null >>"$JVM_OUT" 2>&1 9>&- &
    # Wait for the child to write its PID.
    local i
    for i in $(seq 1 50); do [[ -s "$PID_FILE" ]] && break; sleep 0.1; done
    echo "$PORT" >"$PORT_FILE"
    say "broker pid $(cat "$PID_FILE" 2>/dev/null || echo '?'), setup took $((SECONDS - t0)) s"
  fi

  find_probe || true
  local first="ApiVersions on port $PORT"
  if [[ "$SECURITY" == sasl_ssl ]]; then first="TLS port $PORT open"; fi
  if [[ -n "$PROBE_KIND" ]]; then
    say "readiness: $first + 'Kafka Server started' + metadata request via $PROBE_PY ($PROBE_KIND)"
  else
    say "readiness: $first + 'Kafka Server started' (no python with confluent_kafka or kafka-python for a metadata check)"
  fi
  local deadline=$((SECONDS + START_TIMEOUT)) t0=$SECONDS
  while :; do
    if ! pid="$(recorded_pid)"; then
      show_logs
      rm -f "$PID_FILE" "$PORT_FILE"
      die "the broker exited during startup"
    fi
    if is_ready; then
      say "Kafka $KAFKA_VERSION ready on $BOOTSTRAP (pid $pid, waited $((SECONDS - t0)) s)"
      echo "$BOOTSTRAP"
      return 0
    fi
    if (( SECONDS >= deadline )); then
      show_logs
      say "not ready after ${START_TIMEOUT} s; stopping pid $pid"
      stop_pid "$pid"
      rm -f "$PID_FILE" "$PORT_FILE"
      exit 1
    fi
    sleep 0.5
  done
}

# True while $1 exists and is not a zombie waiting to be reaped.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  if [[ -r "/proc/$1/stat" ]]; then
    local st
    st="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [[ "$st" != Z && -n "$st" ]] || return 1
  fi
  return 0
}

# SIGTERM (controlled shutdown), then SIGKILL after $STOP_TIMEOUT s.
stop_pid() {
  local pid="$1" waited=0
  kill -TERM "$pid" 2>/dev/null || return 0
  while alive "$pid"; do
    if (( waited >= STOP_TIMEOUT * 10 )); then
      say "pid $pid still alive after ${STOP_TIMEOUT} s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      waited=0
      while alive "$pid" && (( waited < 100 )); do sleep 0.1; waited=$((waited + 1)); done
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

cmd_stop() {
  lock_state
  local pid
  if pid="$(recorded_pid)"; then
    say "stopping broker pid $pid..."
    local t0=$SECONDS
    stop_pid "$pid"
    if alive "$pid"; then
      die "pid $pid is still alive"
    fi
    rm -f "$PID_FILE" "$PORT_FILE"
    say "stopped (took $((SECONDS - t0)) s)"
  else
    if [[ -f "$PID_FILE" ]]; then
      say "recorded pid $(cat "$PID_FILE") is not running (stale pid file removed)"
      rm -f "$PID_FILE" "$PORT_FILE"
    else
      say "no broker started by this script (no $PID_FILE)"
    fi
    if port_open "$PORT"; then
      say "note: something still listens on $BOOTSTRAP; it was not started here, so it is left alone"
    fi
  fi
}

cmd_status() {
  local pid port="$PORT"
  if [[ -s "$PORT_FILE" ]]; then port="$(cat "$PORT_FILE")"; fi
  if pid="$(recorded_pid)"; then
    if listener_up "$port"; then
      echo "running: Kafka $KAFKA_VERSION, pid $pid, bootstrap $HOST:$port (state $STATE_DIR)"
    else
      echo "starting: pid $pid, $HOST:$port not answering yet (state $STATE_DIR)"
    fi
    return 0
  fi
  if kafka_ping "$PORT"; then
    echo "running: a Kafka broker answers on $BOOTSTRAP, not started by this script"
    return 0
  fi
  if port_open "$PORT"; then
    echo "not running: port $PORT is in use by something that is not Kafka"
    return 3
  fi
  echo "not running (port $PORT closed)"
  return 3
}

usage() {
  cat >&2 <<EOF
usage: $(basename "$0") start|stop|status|env USER

Environment (defaults):
  ENSEMBLE_KAFKA_PORT=$PORT  ENSEMBLE_KAFKA_CONTROLLER_PORT=$CONTROLLER_PORT
  ENSEMBLE_KAFKA_SECURITY=$SECURITY (sasl_ssl, or plaintext for the quick start only)
  ENSEMBLE_KAFKA_HOME=$KAFKA_HOME_DIR   (classpath cache)
  ENSEMBLE_KAFKA_STATE=$STATE_DIR       (config, data, logs, pid)
  ENSEMBLE_KAFKA_KEEP_DATA=0 (1 keeps the data dir across starts)
  ENSEMBLE_KAFKA_START_TIMEOUT=90  ENSEMBLE_KAFKA_STOP_TIMEOUT=30
  ENSEMBLE_KAFKA_HEAP_OPTS='-Xms512m -Xmx512m'  ENSEMBLE_KAFKA_JAVA_OPTS=
  ENSEMBLE_KAFKA_PYTHON, ENSEMBLE_KAFKA_JAVA, ENSEMBLE_KAFKA_MVN
EOF
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env "${2:-}" ;;
  -h|--help|help) usage ;;
  *) usage; exit 2 ;;
esac
