#!/usr/bin/env bash
# A real one-node slurm cluster on this machine (Debian 12, root), for the slurm job test and for trying
# launch/slurm/train.sbatch locally. Installs slurm-wlm + munge when missing, writes a minimal slurm.conf for
# this host (its real CPU layout and memory, no cgroups), creates the munge key, starts munged, slurmctld and
# slurmd, and waits until `sinfo` shows the node idle. Idempotent: running it again leaves a healthy cluster as is.
#
#   sudo launch/slurm/local_cluster.sh        # then: sinfo; sbatch ...; squeue
#
# Environment: SLURM_LOCAL_PARTITION (default "local"), SLURM_LOCAL_WAIT_S (default 60).
set -euo pipefail

PARTITION="${SLURM_LOCAL_PARTITION:-local}"
WAIT_S="${SLURM_LOCAL_WAIT_S:-60}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
MUNGE_KEY=/etc/munge/munge.key
HOST="$(hostname -s)"

log() { echo "local_cluster: $*" >&2; }
die() { echo "local_cluster: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"

node_state() { sinfo --noheader --nodes="$HOST" --format=%T 2>/dev/null | head -n1; }

pid_alive() {  # pid_alive PIDFILE: the daemon recorded there is running
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache policy slurm-wlm 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        apt-get update -qq
    fi
    # policy-rc.d 101: the packages must not try to start their services (no systemd in containers).
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    fi
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    [[ $created_policy -eq 1 ]] && rm -f "$policy"
    return 0
}

start_munge() {
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating munge key $MUNGE_KEY"
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    if ! pid_alive /run/munge/munged.pid; then
        log "starting munged"
        runuser -u munge -- /usr/sbin/munged
    fi
    munge -n | unmunge >/dev/null || die "munge credentials do not round-trip (see /var/log/munge/munged.log)"
}

node_line() {
    # This host's hardware as slurmd detects it: CPUs, sockets, cores, threads, RealMemory (MB).
    local detected
    detected="$(slurmd -C | head -n1)" || die "slurmd -C failed"
    echo "${detected/NodeName=* CPUs=/NodeName=$HOST NodeAddr=127.0.0.1 CPUs=} State=UNKNOWN"
}

CONFIG_CHANGED=0
write_config() {
    install -d -m 0755 "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
    local node tmp
    node="$(node_line)"
    tmp="$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")"
    cat >"$tmp" <<EOF
# Written by bigrerank launch/slurm/local_cluster.sh: a one-node cluster for local tests.
ClusterName=bigrerank-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after 10 s instead of 120 s
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
InactiveLimit=0
KillWait=15
MinJobAge=600
$node
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 0644 "$tmp"
    if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        return
    fi
    mv "$tmp" "$CONF"
    CONFIG_CHANGED=1
    log "wrote $CONF"
}

stop_slurm() {
    log "config changed: restarting slurmctld and slurmd"
    scontrol shutdown >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 30))
    while { pid_alive /run/slurmctld.pid || pid_alive /run/slurmd.pid; } && ((SECONDS < deadline)); do sleep 1; done
    ! pid_alive /run/slurmctld.pid && ! pid_alive /run/slurmd.pid || die "slurm daemons did not stop"
}

start_slurm() {
    if [[ $CONFIG_CHANGED -eq 1 ]] && { pid_alive /run/slurmctld.pid || pid_alive /run/slurmd.pid; }; then
        stop_slurm
    fi
    if ! pid_alive /run/slurmctld.pid; then
        log "starting slurmctld"
        slurmctld
    fi
    if ! pid_alive /run/slurmd.pid; then
        log "starting slurmd"
        slurmd
    fi
}

wait_idle() {
    local state deadline=$((SECONDS + WAIT_S))
    while ((SECONDS < deadline)); do
        state="$(node_state)"
        case "$state" in
            idle | mixed | allocated | completing) log "node $HOST is $state"; return 0 ;;
            down* | drain* | fail*)
                scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
        esac
        sleep 1
    done
    sinfo >&2 || true
    tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    die "node $HOST not idle after ${WAIT_S}s (state '${state:-unknown}')"
}

main() {
    install_packages
    start_munge
    write_config
    start_slurm
    wait_idle
    sinfo
}

main "$@"
