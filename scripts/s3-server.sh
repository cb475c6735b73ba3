#!/usr/bin/env bash
# Throwaway S3 server for tests: a one-node Ceph cluster (1 mon + 1 memstore OSD, auth off)
# with radosgw serving S3 on 127.0.0.1. Every file (config, data, pid files, logs) lives
# under DIR; the data is in memory and is gone once the OSD stops.
#
#   scripts/s3-server.sh start DIR [PORT]   # PORT defaults to 7480
#   scripts/s3-server.sh stop DIR
#
# Needs:  apt-get install -y radosgw ceph-mon ceph-osd
# S3 credentials come from FAKESCAN_S3_ACCESS_KEY / FAKESCAN_S3_SECRET_KEY (defaults below).
# On success `start` prints exactly one line on stdout:
#   endpoint=http://127.0.0.1:PORT access_key=KEY seconds=N
# Progress goes to stderr. On failure it prints the tail of the relevant logs, stops what it
# started and exits non-zero. Calling `start` again on the same DIR first stops the daemons
# recorded there. The mon listens on two free ports picked at start, so a leftover cluster
# elsewhere cannot collide with it.
set -eEuo pipefail

ACCESS_KEY=${FAKESCAN_S3_ACCESS_KEY:-fakescan-test}
SECRET_KEY=${FAKESCAN_S3_SECRET_KEY:-fakescan-test-secret}
DAEMONS=(rgw osd mon)                 # stop order: radosgw hangs on SIGTERM once the mon is gone
BINARIES=(ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool curl)
MON_WAIT_S=60 OSD_WAIT_S=90 RGW_WAIT_S=120

say() { echo "s3-server: $*" >&2; }
usage() { echo "usage: $0 start DIR [PORT] | stop DIR" >&2; exit 2; }

# ---------------------------------------------------------------- process bookkeeping

# True when PID is alive and is a daemon of *this* DIR (guards against recycled pids).
is_ours() {
    local cmdline
    [[ $1 =~ ^[0-9]+$ ]] || return 1
    cmdline=$(tr "\0" " " 2>/dev/null <"/proc/$1/cmdline") || return 1
    [[ $cmdline == *"$CONF"* ]]
}

wait_gone() {  # PID TENTHS_OF_SECONDS
    local i
    for ((i = 0; i < $2; i++)); do
        is_ours "$1" || return 0
        sleep 0.1
    done
    return 1
}

stop_daemon() {  # NAME GRACE_SECONDS
    local pidfile="$DIR/$1.pid" pid
    [[ -f $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if is_ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" $(($2 * 10)); then
            say "$1 (pid $pid) ignored SIGTERM for ${2}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 50 || say "$1 (pid $pid) still alive after SIGKILL"
        fi
    fi
    rm -f "$pidfile"
}

stop_all() {
    stop_daemon rgw 5
    stop_daemon osd 10
    stop_daemon mon 10
}

# ---------------------------------------------------------------- failure reporting

STAGE=setup
STAGE_LOGS=()

fail() {
    trap - ERR
    say "FAILED during $STAGE: $*"
    local f
    for f in "${STAGE_LOGS[@]}"; do
        [[ -s $f ]] || continue
        echo "----- last 40 lines of $f -----" >&2
        tail -n 40 "$f" >&2
    done
    stop_all
    exit 1
}

stage() {  # NAME LOG...
    STAGE=$1
    shift
    STAGE_LOGS=("$@")
    say "$STAGE"
}

# Poll CMD until it succeeds; fail if the daemon behind PIDFILE dies or the deadline passes.
wait_for() {  # WHAT SECONDS PIDFILE CMD...
    local what=$1 limit=$2 pidfile=$3 deadline
    shift 3
    deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        is_ours "$(<"$pidfile")" || fail "$what: process exited"
        ((SECONDS < deadline)) || fail "$what: not ready after ${limit}s"
        sleep 0.5
    done
}

# ---------------------------------------------------------------- helpers

python() {
    if [[ -x /usr/bin/python3 ]]; then /usr/bin/python3 "$@"; else python3 "$@"; fi
}

free_ports() {  # COUNT -> distinct free TCP ports on 127.0.0.1
    python - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ceph_cli() { timeout 15 ceph -c "$CONF" --connect-timeout 5 "$@"; }

osd_is_up() { ceph_cli osd stat 2>/dev/null | grep -q ' 1 up'; }

rgw_answers() { curl -s -o /dev/null --max-time 2 "$ENDPOINT/"; }

uuid() { cat /proc/sys/kernel/random/uuid; }

spawn() {  # NAME CMD... : run a daemon in the foreground of a background job, record its pid
    local name=$1
    shift
    "$@" </dev/null >"$LOG/$name.out" 2>&1 &
    echo $! >"$DIR/$name.pid"
}

# ---------------------------------------------------------------- start

write_conf() {  # FSID MON_ADDRS
    cat >"$CONF" <<EOF
[global]
fsid = $1
mon_host = $2
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
# radosgw asks for ms_mon_client_mode=secure by default, which cannot work with auth off.
ms_mon_client_mode = crc
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_max_pg_per_osd = 1000
# Propose map changes at once instead of batching them for 1 s: start-up 13 s -> ~3 s.
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
run_dir = $DIR/run
admin_socket = $DIR/run/\$name.asok
pid_file = $DIR/run/\$name.pid
log_file = $LOG/\$name.log
keyring = $DIR/keyring
mon_data = $DIR/mon/\$cluster-\$id
osd_data = $DIR/osd/\$cluster-\$id
osd_objectstore = memstore
memstore_device_bytes = 4294967296

[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:$PORT
rgw_data = $DIR/rgw
rgw_dns_name = 127.0.0.1
EOF
}

start() {
    local missing=() b
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null || missing+=("$b")
    done
    if ((${#missing[@]})); then
        say "missing programs: ${missing[*]}"
        say "install them with: sudo apt-get install -y radosgw ceph-mon ceph-osd curl"
        exit 3
    fi
    [[ $PORT =~ ^[0-9]+$ ]] || usage

    if compgen -G "$DIR/*.pid" >/dev/null; then
        say "stopping a previous instance in $DIR"
        stop_all
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"/{mon,osd,rgw,run} "$LOG"
    trap 'fail "command failed (line $LINENO): $BASH_COMMAND"' ERR

    if port_in_use "$PORT"; then
        fail "port $PORT on 127.0.0.1 is already in use (a leftover radosgw? try another PORT)"
    fi

    local fsid mon_v2 mon_v1 mon_addrs osd_uuid osd_id
    fsid=$(uuid)
    read -r mon_v2 mon_v1 < <(free_ports 2)
    [[ -n $mon_v2 && -n $mon_v1 ]] || fail "could not pick free ports for the mon"
    mon_addrs="[v2:127.0.0.1:$mon_v2,v1:127.0.0.1:$mon_v1]"
    write_conf "$fsid" "$mon_addrs"

    stage "creating mon on ports $mon_v2/$mon_v1" "$LOG/mkfs.log"
    monmaptool --create --addv a "$mon_addrs" --fsid "$fsid" "$DIR/monmap" >>"$LOG/mkfs.log" 2>&1
    ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' \
        >>"$LOG/mkfs.log" 2>&1
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" \
        >>"$LOG/mkfs.log" 2>&1

    stage "starting mon" "$LOG/mon.out" "$LOG/mon.a.log"
    spawn mon ceph-mon -c "$CONF" -i a -f
    wait_for "mon" "$MON_WAIT_S" "$DIR/mon.pid" ceph_cli -s

    stage "creating osd" "$LOG/mkfs.log" "$LOG/client.admin.log"
    osd_uuid=$(uuid)
    osd_id=$(ceph_cli osd new "$osd_uuid" 2>>"$LOG/mkfs.log")
    mkdir -p "$DIR/osd/ceph-$osd_id"
    ceph-osd -c "$CONF" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" >>"$LOG/mkfs.log" 2>&1

    stage "starting osd.$osd_id" "$LOG/osd.out" "$LOG/osd.$osd_id.log"
    spawn osd ceph-osd -c "$CONF" -i "$osd_id" -f
    wait_for "osd" "$OSD_WAIT_S" "$DIR/osd.pid" osd_is_up

    stage "starting radosgw on $ENDPOINT" "$LOG/rgw.out" "$LOG/client.rgw.a.log"
    spawn rgw radosgw -c "$CONF" -n client.rgw.a -f
    wait_for "radosgw" "$RGW_WAIT_S" "$DIR/rgw.pid" rgw_answers

    stage "creating S3 user $ACCESS_KEY" "$LOG/user.log"
    timeout 60 radosgw-admin -c "$CONF" user create --uid=fakescan --display-name=fakescan \
        --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >"$LOG/user.log" 2>&1

    trap - ERR
    echo "endpoint=$ENDPOINT access_key=$ACCESS_KEY seconds=$SECONDS"
}

# ---------------------------------------------------------------- main

(($# >= 2)) || usage
CMD=$1
DIR=$(realpath -m -- "$2")
PORT=${3:-7480}
CONF=$DIR/ceph.conf
LOG=$DIR/log
ENDPOINT=http://127.0.0.1:$PORT

case $CMD in
    start) (($# <= 3)) || usage; start ;;
    stop) (($# == 2)) || usage; stop_all ;;
    *) usage ;;
esac
