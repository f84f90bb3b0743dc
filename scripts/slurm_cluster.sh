#!/usr/bin/env bash
# A real single-node SLURM cluster on loopback, for the cluster tests (tests/test_slurm.py) and for trying
# hydra/launcher=slurm on one machine: munged, MariaDB, slurmdbd (so `sacct` answers), slurmctld and slurmd,
# all in a fresh scratch folder, all stopped by their pid files.
#
#   scripts/slurm_cluster.sh start     # fresh state, prints `export SLURM_CONF=...`
#   eval "$(scripts/slurm_cluster.sh env)"
#   scripts/slurm_cluster.sh stop
#
# Needs root and Debian's packages: apt-get install --no-install-recommends slurmctld slurmd slurm-client munge
# slurmdbd mariadb-server-core mariadb-client-core (.ci/run installs them). Jobs run as root on this machine.
#
# Authentication is munge, with a key and socket of its own in the scratch folder: auth/none would let any local
# user submit jobs that run as root (the job's uid is whatever the client claims), which is no way to leave a
# developer's machine, and munged costs a few milliseconds to start.
#
# Accounting is not optional: submitit decides that a job is over from `sacct` alone, so without slurmdbd a job
# that dies hard (SIGKILL, os._exit, out of memory) leaves its state UNKNOWN and the sweep waits for it forever.
#
# Environment: SLORA_SLURM_DIR (scratch folder, default /tmp/slora-slurm; emptied at each start),
# SLORA_SLURM_PORT (first of four ports: slurmctld, slurmd, slurmdbd, MariaDB; default 16817).
set -euo pipefail

DIR=${SLORA_SLURM_DIR:-/tmp/slora-slurm}
PORT=${SLORA_SLURM_PORT:-16817}
CTLD_PORT=$PORT SLURMD_PORT=$((PORT + 1)) DBD_PORT=$((PORT + 2)) DB_PORT=$((PORT + 3))
CONF=$DIR/etc/slurm.conf

log() { echo "slurm_cluster: $*" >&2; }

stop_pid() {  # stop_pid NAME PIDFILE: TERM, then KILL after 10 s; only the process its own pid file names
  local name=$1 file=$2 pid
  [[ -s $file ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "$name ($pid) ignored TERM: KILL"; kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$file"
}

stop() {
  # Jobs first (slurmd's steps die with it), then the daemons in reverse order of start.
  stop_pid slurmd "$DIR/run/slurmd.pid"
  stop_pid slurmctld "$DIR/run/slurmctld.pid"
  stop_pid slurmdbd "$DIR/run/slurmdbd.pid"
  stop_pid mariadbd "$DIR/run/mariadb.pid"
  stop_pid munged "$DIR/munge/munged.pid"
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...: poll every 0.2 s, each try cut off at 5 s
  local what=$1 deadline=$((SECONDS + $2))
  shift 2
  while ((SECONDS < deadline)); do timeout 5 "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "$what did not come up within ${seconds}s; logs in $DIR/log"
  tail -n 20 "$DIR"/log/* >&2 || true
  exit 1
}

start() {
  [[ $(id -u) == 0 ]] || { log "must run as root (the daemons and the jobs run as root)"; exit 1; }
  for tool in munged mariadbd mariadb mariadb-install-db slurmdbd slurmctld slurmd sinfo sacct; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || { log "$tool not found; install Debian's slurmctld slurmd slurm-client munge slurmdbd mariadb-server-core mariadb-client-core"; exit 1; }
  done
  export PATH=$PATH:/usr/sbin
  local began=$EPOCHREALTIME
  stop  # a cluster left by an earlier start in this folder
  if [[ -d $DIR && -n $(ls -A "$DIR") && ! -f $CONF ]]; then
    log "$DIR holds files of something else; give the cluster an empty or new folder (SLORA_SLURM_DIR)"
    exit 1
  fi
  rm -rf "$DIR"
  mkdir -p "$DIR"/{etc,run,log,state,spool,db}
  chmod 755 "$DIR"

  # munge: its own key and socket, in a folder only the munge user writes and others may only pass through.
  install -d -m 711 -o munge -g munge "$DIR/munge"
  mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null 2>&1 || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 2>/dev/null
  chown munge:munge "$DIR/munge/munge.key" && chmod 400 "$DIR/munge/munge.key"
  runuser -u munge -- munged --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"

  # MariaDB for slurmdbd: loopback TCP only, a password made for this start, kept in a mode-600 file.
  local db_password
  db_password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  mariadb-install-db --no-defaults --user=root --datadir="$DIR/db" --auth-root-authentication-method=socket \
    >"$DIR/log/mariadb-install.log" 2>&1
  mariadbd --no-defaults --user=root --datadir="$DIR/db" --socket="$DIR/run/mysql.sock" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadb.pid" --log-error="$DIR/log/mariadb.log" \
    --skip-name-resolve --innodb-buffer-pool-size=32M >/dev/null 2>&1 &
  wait_for MariaDB 30 mariadb --no-defaults --socket="$DIR/run/mysql.sock" -u root -e "SELECT 1"
  mariadb --no-defaults --socket="$DIR/run/mysql.sock" -u root -e \
    "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$db_password'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

  local host node
  host=$(hostname -s)
  # slurmd -C describes this machine; CPUs, sockets, cores, threads and memory as it says, reached on loopback.
  node=$(slurmd -C | head -n 1 | sed -E "s/^NodeName=[^ ]+/NodeName=$host NodeAddr=127.0.0.1/")

  cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$db_password
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"

  cat >"$CONF" <<EOF
# Written by scripts/slurm_cluster.sh; see there.
ClusterName=slora
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
CommunicationParameters=NoInAddrAny
# No cgroups: CI containers have no writable cgroup tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# Finished jobs stay known to slurmctld for 5 minutes; sacct has them for good.
MinJobAge=300
# Jobs share the node's CPUs (threads), so a 2-core machine runs 2 one-CPU jobs at once.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# A requeued job (scontrol requeue, preemption) may run again.
JobRequeue=1
# 5 s between SIGTERM and SIGKILL at a time limit or scancel (default 30): the tests wait for it.
KillWait=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# For slurmdbd, the "password" is the munge socket to use (slurmctld ignores AuthInfo there).
AccountingStoragePass=$DIR/munge/munge.socket
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=60 State=UP
EOF
  export SLURM_CONF=$CONF

  slurmdbd
  wait_for slurmdbd 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT"
  slurmctld
  slurmd
  wait_for "the node" 30 bash -c "sinfo -h -o %t | grep -qx idle"
  wait_for "accounting (sacct)" 30 sacct -n -X
  log "cluster up in $(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $began }") s: $(sinfo -h -o '%P %D node(s) %c CPUs %m MB %t'); SLURM_CONF=$CONF"
  echo "export SLURM_CONF=$CONF"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  env) [[ -f $CONF ]] || { log "no cluster in $DIR (start it first)"; exit 1; }; echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
