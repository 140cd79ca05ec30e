# Shared by up.sh and down.sh: where the local cluster lives and how to tell a daemon is alive.
# Everything (configs, state, spool, logs, pid files, the private database) is under one directory.
SLURM_DIR="${DIFFODE_SLURM_DIR:-/tmp/diffode-slurm}"
export SLURM_CONF="$SLURM_DIR/etc/slurm.conf"   # slurmdbd reads slurmdbd.conf from this file's directory
DB_PORT="${DIFFODE_SLURM_DB_PORT:-3307}"         # the private mariadbd (3306 may be somebody's real one)

say() { echo "[slurm] $*" >&2; }

# alive PIDFILE: the process named in PIDFILE exists and is not a zombie (stopped daemons linger as
# zombies here for a few seconds, so `kill -0` would say they still run).
alive() {
    local pid state
    [[ -s "$1" ]] || return 1
    pid="$(tr -dc 0-9 < "$1")"
    [[ -n "$pid" && -r "/proc/$pid/stat" ]] || return 1
    state="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)"
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# stop NAME PIDFILE: TERM, wait up to 15 s, then KILL; the pid file goes.
stop() {
    local name="$1" pidfile="$2" pid i
    if alive "$pidfile"; then
        pid="$(tr -dc 0-9 < "$pidfile")"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 150); do alive "$pidfile" || break; sleep 0.1; done
        if alive "$pidfile"; then say "$name ($pid) ignored TERM: KILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
        say "stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}
