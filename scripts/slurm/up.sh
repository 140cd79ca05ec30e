#!/usr/bin/env bash
# Bring up a single-node SLURM cluster with accounting on this machine, for the tests and for trying
# launches by hand:  munged -> private mariadbd -> slurmdbd -> slurmctld -> slurmd, all under
# $DIFFODE_SLURM_DIR (default /tmp/diffode-slurm). Installs the Debian packages first if they are
# missing (needs root and apt). Idempotent: daemons already running are left alone.
# On success prints the env file to source (it exports SLURM_CONF); exit 2 means "cannot start here"
# (no root, no apt, packages missing) with the reason on stderr, anything else non-zero is a failure.
#   bash scripts/slurm/up.sh && source /tmp/diffode-slurm/env && sinfo
set -euo pipefail
source "$(dirname "$0")/common.sh"
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
NODE_CPUS="${DIFFODE_SLURM_CPUS:-8}"   # advertised CPUs (more than the machine has is allowed: tiny jobs)

cannot() { say "cannot start a local SLURM cluster: $*"; exit 2; }

install_packages() {
    local missing=() b
    for b in slurmctld slurmd slurmdbd sbatch munged mariadbd mariadb-install-db; do
        command -v "$b" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || missing+=("$b")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || cannot "${missing[*]} not installed and not root (apt-get install ${PACKAGES[*]})"
    command -v apt-get >/dev/null || cannot "${missing[*]} not installed and no apt-get"
    say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    # policy-rc.d (exit 101 in these images) keeps the packages from starting services on install
    if ! { ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -q >"$SLURM_DIR/log/apt.log" 2>&1; } ||
       ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" \
            >>"$SLURM_DIR/log/apt.log" 2>&1; then
        tail -5 "$SLURM_DIR/log/apt.log" >&2
        cannot "apt-get install failed (log: $SLURM_DIR/log/apt.log)"
    fi
}

# wait_for WHAT SECONDS LOG CMD...: poll CMD every 0.2 s; on timeout show LOG's tail and fail.
wait_for() {
    local what="$1" secs="$2" logf="$3" i; shift 3
    for i in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    say "$what did not come up in ${secs} s; last lines of $logf:"; tail -20 "$logf" >&2 || true
    exit 1
}

write_configs() {
    local host node mem
    host="$(hostname -s)"
    mem="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)"
    node="NodeName=$host NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$mem State=UNKNOWN"
    cat >"$SLURM_CONF.new" <<CONF
# written by scripts/slurm/up.sh: one node, one partition, accounting through slurmdbd
ClusterName=diffode
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it a job takes the whole node's memory and jobs run one at a time
DefMemPerCPU=1024
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=600
CommunicationParameters=NoInAddrAny
SlurmdParameters=config_overrides
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/run/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/run/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
$node
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    cat >"$SLURM_DIR/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$SLURM_DIR/run/slurmdbd.pid
LogFile=$SLURM_DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=diffode
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$SLURM_DIR/etc/slurmdbd.conf"   # slurmdbd refuses a readable one
    if [[ -f "$SLURM_CONF" ]] && cmp -s "$SLURM_CONF" "$SLURM_CONF.new"; then
        rm "$SLURM_CONF.new"
    else  # both daemons must restart on a new slurm.conf ("Node appears to have a different slurm.conf")
        stop slurmd "$SLURM_DIR/run/slurmd.pid"; stop slurmctld "$SLURM_DIR/run/slurmctld.pid"
        mv "$SLURM_CONF.new" "$SLURM_CONF"
    fi
}

start_munged() {
    # slurmctld -> slurmdbd and sacctmgr use the default socket whatever AuthInfo says
    if [[ -S /run/munge/munge.socket.2 ]] && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        alive "$SLURM_DIR/run/munged.pid" || say "using the munged already serving /run/munge (not ours: down.sh leaves it)"
        return 0
    fi
    mkdir -p /run/munge
    STARTED+=(munged)
    # a private key owned by root (the package's belongs to the munge user, which munged as root refuses)
    local key="$SLURM_DIR/etc/munge.key"
    [[ -s "$key" ]] || { dd if=/dev/urandom of="$key" bs=1024 count=1 2>/dev/null; chmod 600 "$key"; }
    munged --key-file="$key" --pid-file="$SLURM_DIR/run/munged.pid" --log-file="$SLURM_DIR/log/munged.log" \
           --seed-file="$SLURM_DIR/run/munged.seed"
    wait_for munged 10 "$SLURM_DIR/log/munged.log" bash -c 'munge -n </dev/null | unmunge'
}

start_mariadbd() {
    local sock="$SLURM_DIR/run/mysqld.sock" pidf="$SLURM_DIR/run/mariadbd.pid"
    alive "$pidf" && return 0
    STARTED+=(mariadbd)
    if [[ ! -d "$SLURM_DIR/mysql/mysql" ]]; then
        mariadb-install-db --no-defaults --datadir="$SLURM_DIR/mysql" --user=root --skip-test-db \
            >"$SLURM_DIR/log/mariadb-install.log" 2>&1 || { tail "$SLURM_DIR/log/mariadb-install.log" >&2; exit 1; }
    fi
    nohup mariadbd --no-defaults --datadir="$SLURM_DIR/mysql" --user=root --socket="$sock" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$pidf" \
        --log-error="$SLURM_DIR/log/mariadbd.log" --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
        </dev/null >/dev/null 2>&1 &
    wait_for mariadbd 60 "$SLURM_DIR/log/mariadbd.log" mariadb --no-defaults --socket="$sock" -uroot -e 'select 1'
    mariadb --no-defaults --socket="$sock" -uroot -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'diffode';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}

start_slurmdbd() {
    alive "$SLURM_DIR/run/slurmdbd.pid" && return 0
    STARTED+=(slurmdbd)
    slurmdbd   # daemonizes; reads slurmdbd.conf next to $SLURM_CONF
    wait_for slurmdbd 60 "$SLURM_DIR/log/slurmdbd.log" sacctmgr -n show cluster
}

start_slurmctld() {
    alive "$SLURM_DIR/run/slurmctld.pid" || { STARTED+=(slurmctld); slurmctld -f "$SLURM_CONF"; }
    wait_for slurmctld 60 "$SLURM_DIR/log/slurmctld.log" bash -c 'scontrol ping | grep -q UP'
}

node_idle() { sinfo -h -N -o %t | grep -Eq '^(idle|mix|alloc)$'; }

start_slurmd() {
    alive "$SLURM_DIR/run/slurmd.pid" || { STARTED+=(slurmd); slurmd -f "$SLURM_CONF"; }
    local i
    for i in $(seq 150); do node_idle && return 0; sleep 0.2; done
    # a node left down/drained by an earlier run: ReturnToService=2 covers most cases, this the rest
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    wait_for "the node (idle in sinfo)" 30 "$SLURM_DIR/log/slurmd.log" node_idle
}

STARTED=()
main() {
    local t0=$SECONDS
    mkdir -p "$SLURM_DIR"/{etc,state,spool,run,log}
    export PATH="$PATH:/usr/sbin:/sbin"
    install_packages
    [[ $(id -u) -eq 0 ]] || cannot "the daemons run as root here (SlurmUser=root) and this is uid $(id -u)"
    write_configs
    start_munged
    start_mariadbd
    start_slurmdbd
    start_slurmctld
    start_slurmd
    printf 'export SLURM_CONF=%q\nexport PATH="$PATH:/usr/sbin:/sbin"\n' "$SLURM_CONF" >"$SLURM_DIR/env"
    [[ ${#STARTED[@]} -gt 0 ]] && say "started ${STARTED[*]}" || say "already up (nothing started)"
    say "up in $((SECONDS - t0)) s: $(sinfo -h -N -o '%N %P %t %c CPUs') (source $SLURM_DIR/env)"
    echo "$SLURM_DIR/env"
}
main "$@"
