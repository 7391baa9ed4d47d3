#!/bin/sh
# Init container of the dataflow StatefulSet; runs before every start of a dataflow pod.
#
# 1. Writes the Bytewax hostfile: one address per process of the StatefulSet, in ordinal
#    order (Bytewax reads it through BYTEWAX_HOSTFILE_PATH and finds its own process id
#    from BYTEWAX_POD_NAME minus "BYTEWAX_STATEFULSET_NAME-"). A process only listens on
#    its own line and connects to the others, so its own line is 0.0.0.0:PORT: it never
#    waits for its own DNS record, and a single process needs no DNS at all.
# 2. Creates this process's Bytewax recovery partitions on its volume, once: partition j
#    of RECOVERY_PARTITIONS lives on the pod whose ordinal is j mod BYTEWAX_REPLICAS.
#    A volume that already holds partitions is left alone (the dataflow resumes from its
#    last snapshot). A volume set up for another number of processes or partitions stops
#    the start: its state cannot be used as it is (docs/deploy.md, "Scale").
set -eu

fail() {
    echo "init-dataflow: $*" >&2
    exit 2
}

for name in BYTEWAX_POD_NAME BYTEWAX_STATEFULSET_NAME BYTEWAX_REPLICAS BYTEWAX_SERVICE_NAME \
    BYTEWAX_PROCESS_PORT BYTEWAX_HOSTFILE_PATH BYTEWAX_RECOVERY_DIRECTORY POD_NAMESPACE \
    RECOVERY_PARTITIONS; do
    eval "value=\${$name:-}"
    [ -n "$value" ] || fail "$name is not set"
done

is_count() {
    case "$1" in '' | *[!0-9]* | 0*) return 1 ;; *) return 0 ;; esac
}
is_count "$BYTEWAX_REPLICAS" || fail "BYTEWAX_REPLICAS='$BYTEWAX_REPLICAS' must be a whole number >= 1"
is_count "$RECOVERY_PARTITIONS" || fail "RECOVERY_PARTITIONS='$RECOVERY_PARTITIONS' must be a whole number >= 1"
is_count "$BYTEWAX_PROCESS_PORT" || fail "BYTEWAX_PROCESS_PORT='$BYTEWAX_PROCESS_PORT' must be a port number"

ordinal="${BYTEWAX_POD_NAME#"$BYTEWAX_STATEFULSET_NAME"-}"
case "$ordinal" in
'' | *[!0-9]*) fail "pod name '$BYTEWAX_POD_NAME' is not '$BYTEWAX_STATEFULSET_NAME-<ordinal>'" ;;
esac
[ "$ordinal" -lt "$BYTEWAX_REPLICAS" ] ||
    fail "pod ordinal $ordinal but BYTEWAX_REPLICAS=$BYTEWAX_REPLICAS: the StatefulSet was scaled without updating BYTEWAX_REPLICAS (docs/deploy.md, \"Scale\")"
[ "$RECOVERY_PARTITIONS" -ge "$BYTEWAX_REPLICAS" ] ||
    fail "RECOVERY_PARTITIONS=$RECOVERY_PARTITIONS is fewer than BYTEWAX_REPLICAS=$BYTEWAX_REPLICAS processes"

# -- 1. hostfile ------------------------------------------------------------------------------
hostfile_tmp="$BYTEWAX_HOSTFILE_PATH.tmp"
: >"$hostfile_tmp"
i=0
while [ "$i" -lt "$BYTEWAX_REPLICAS" ]; do
    if [ "$i" -eq "$ordinal" ]; then
        echo "0.0.0.0:$BYTEWAX_PROCESS_PORT" >>"$hostfile_tmp"
    else
        echo "$BYTEWAX_STATEFULSET_NAME-$i.$BYTEWAX_SERVICE_NAME.$POD_NAMESPACE.svc:$BYTEWAX_PROCESS_PORT" >>"$hostfile_tmp"
    fi
    i=$((i + 1))
done
mv "$hostfile_tmp" "$BYTEWAX_HOSTFILE_PATH"
echo "init-dataflow: process $ordinal of $BYTEWAX_REPLICAS, hostfile $BYTEWAX_HOSTFILE_PATH"

# -- 2. recovery partitions -------------------------------------------------------------------
dir="$BYTEWAX_RECOVERY_DIRECTORY"
[ -d "$dir" ] || fail "recovery directory $dir does not exist (is the recovery volume mounted?)"
layout_file="$dir/ensemble-layout"
layout="processes=$BYTEWAX_REPLICAS partitions=$RECOVERY_PARTITIONS ordinal=$ordinal"

if [ -f "$layout_file" ]; then
    have="$(cat "$layout_file")"
    [ "$have" = "$layout" ] ||
        fail "recovery volume was set up for '$have', this pod is '$layout'; refusing to start on state it cannot use: move the partitions or reset recovery (docs/deploy.md, \"Scale\" and \"Reset the recovery state\")"
    echo "init-dataflow: recovery partitions present in $dir ($layout): the dataflow resumes from its last snapshot"
    exit 0
fi
for f in "$dir"/part-*.sqlite3; do
    if [ -e "$f" ]; then
        fail "$dir holds recovery partitions but no $layout_file (an interrupted first start?); reset recovery (docs/deploy.md, \"Reset the recovery state\")"
    fi
done

staging="$dir/.staging"
rm -rf "$staging"
mkdir "$staging"
python -m bytewax.recovery "$staging" "$RECOVERY_PARTITIONS"
mine=""
j=0
while [ "$j" -lt "$RECOVERY_PARTITIONS" ]; do
    if [ $((j % BYTEWAX_REPLICAS)) -eq "$ordinal" ]; then
        mv "$staging/part-$j.sqlite3" "$dir/"
        mine="$mine $j"
    fi
    j=$((j + 1))
done
rm -rf "$staging"
echo "$layout" >"$layout_file.tmp"
mv "$layout_file.tmp" "$layout_file"
echo "init-dataflow: created recovery partitions$mine of $RECOVERY_PARTITIONS in $dir ($layout); the dataflow starts from the beginning of its input topics"
