#!/usr/bin/env bash
# A real one-node Slurm cluster on localhost, for the launcher tests (facts behind each line: ../shared/slurm-notes.md
# of the project's workplace; summarised in the comments).
#
#   bash tests/slurm_cluster.sh install        apt-get slurm-wlm and munge (root; services not auto-started)
#   bash tests/slurm_cluster.sh start DIR      start munged, slurmctld and slurmd with all state under DIR;
#                                              prints the environment the clients need (SLURM_CONF, PATH)
#   bash tests/slurm_cluster.sh stop DIR       stop them (by their pid files)
#
# Needs root (slurmd runs jobs as their user; SlurmUser=root) and no other cluster on ports 6817/6818.
set -euo pipefail

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  # keep the packages' own init scripts from starting services (there is no systemd)
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
}

wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

node_idle() { sinfo -h -N -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }

start() {
  local dir node
  dir=$(mkdir -p "$1" && cd "$1" && pwd)
  node=$(hostname -s)
  for tool in munged slurmctld slurmd; do
    command -v $tool >/dev/null || { echo "error: $tool not found: run 'bash $0 install' (root, apt)" >&2; exit 3; }
  done
  [ "$(id -u)" = 0 ] || { echo "error: the test cluster needs root (slurmd, SlurmUser=root)" >&2; exit 3; }
  local port
  for port in 6817 6818; do  # another cluster's daemons would answer this one's clients
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "error: port $port is taken (another Slurm daemon?): stop it ('bash $0 stop DIR' for a test cluster," \
        "or pkill slurmctld slurmd) and start again" >&2
      exit 5
    fi
  done
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log" "$dir/bin"
  # munge without systemd: its own folder, owned by the munge user
  chown munge: "$dir/munge"; chmod 755 "$dir/munge"  # munged: the socket folder must be searchable by all
  [ -f "$dir/munge/munge.key" ] || runuser -u munge -- mungekey --create --keyfile="$dir/munge/munge.key"
  runuser -u munge -- munged --socket="$dir/munge/socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed"
  munge -n -S "$dir/munge/socket" | unmunge -S "$dir/munge/socket" >/dev/null
  # stay on loopback only when the host name resolves to 127.x (else slurmctld dies)
  local bind=""
  if getent hosts "$node" | grep -q '^127\.'; then bind="CommunicationParameters=NoCtldInAddrAny,NoInAddrAny"; fi
  local hw
  hw=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ UpTime=.*//')
  cat > "$dir/slurm.conf" <<EOF
ClusterName=domainbed-align-test
SlurmctldHost=localhost(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/socket
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
MailProg=/bin/true
ReturnToService=2
MinJobAge=3600
KillWait=5
$bind
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  # submitit asks sacct for job states; with accounting off sacct fails and a job Slurm kills (scancel, time
  # limit) never counts as finished: answer from squeue (MinJobAge keeps ended jobs visible)
  cat > "$dir/bin/sacct" <<'EOF'
#!/usr/bin/env bash
ids=""; while [ $# -gt 0 ]; do case "$1" in -j) ids=$2; shift 2;; *) shift;; esac; done
echo "JobID|State|NodeList"
squeue -h -r --states=all -j "$ids" -o '%i|%T|%N' 2>/dev/null || true
EOF
  chmod +x "$dir/bin/sacct"
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -f "$SLURM_CONF"
  wait_for 20 bash -c "scontrol ping | grep -q UP" || { echo "error: slurmctld did not start: $dir/log/slurmctld.log" >&2; exit 4; }
  slurmd -f "$SLURM_CONF" -N "$node"
  wait_for 20 node_idle || { echo "error: the node did not come up: $dir/log/slurmd.log" >&2; exit 4; }
  echo "export SLURM_CONF=$dir/slurm.conf PATH=$dir/bin:\$PATH"
}

stop() {
  local dir=$1 pid
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  install) install_packages ;;
  start) [ $# -eq 2 ] || { echo "usage: $0 start DIR" >&2; exit 2; }; start "$2" ;;
  stop) [ $# -eq 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
  *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
