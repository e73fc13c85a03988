#!/bin/busybox sh
# /init of the offload test VM (cargo xtask offload-test): a Debian kernel
# with netdevsim, the real `dispatcher` binary, and the checks below. Each
# check prints "OFFLOAD-TEST ok NAME" or "OFFLOAD-TEST FAIL NAME" and the
# output that made it fail; the host counts them.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /tmp /run /dev
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t debugfs debugfs /sys/kernel/debug
mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
insmod /lib/psample.ko
insmod /lib/netdevsim.ko
echo "1 1" > /sys/bus/netdevsim/new_device
sleep 1
IF=$(ls /sys/bus/netdevsim/devices/netdevsim1/net/)
ip link set "$IF" up
DBG=/sys/kernel/debug/netdevsim/netdevsim1
PINS=/sys/fs/bpf/dispatcher/$IF
# The id of the program offloaded to the port (0: none); busybox's `ip`
# does not show XDP.
offloaded() { [ "$(cat $DBG/ports/0/bpf_offloaded_id)" != 0 ]; }
echo "OFFLOAD-TEST info kernel $(uname -r), netdevsim interface $IF"

# Timing: seconds since boot from /proc/uptime; `since T` is the time
# since T. Every step announces itself before it starts, so a hang names
# the step, and reports how long it took, so a slow machine shows as slow.
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
at_least() { awk -v a="$1" -v b="$(now)" -v n="$2" 'BEGIN { exit !(b - a >= n) }'; }
begin() { STEP=$1; STEP_STARTED=$(now); echo "OFFLOAD-TEST step $STEP"; }
ok() { echo "OFFLOAD-TEST ok $1 ($(since $STEP_STARTED) s)"; }
fail() { echo "OFFLOAD-TEST FAIL $1 ($(since $STEP_STARTED) s)"; tail -n 40 /tmp/out; }
# Bounds for single waits (in the guest's time): generous, since loading
# dispatch_hw under emulation takes 20-25 s on an idle machine here; the
# host bounds the whole run as well.
WAIT_LIMIT=900
STOP_LIMIT=120

# Whether process $1 is running (not exited, not a zombie left unreaped).
alive() { s=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null); [ -n "$s" ] && [ "$s" != Z ]; }
# start_daemon ARGS...: `dispatcher ARGS` in the background, its log in
# /tmp/run.log.
start_daemon() { dispatcher "$@" > /tmp/run.log 2>&1 & DAEMON=$!; DAEMON_STARTED=$(now); }
# wait_log NEEDLE: until the daemon's log says NEEDLE (0), or the daemon
# exits or WAIT_LIMIT passes without it (1). Waits for the event, not for
# a count of sleeps.
wait_log() {
    while ! grep -q "$1" /tmp/run.log; do
        if ! alive $DAEMON; then grep -q "$1" /tmp/run.log; return; fi
        if at_least $DAEMON_STARTED $WAIT_LIMIT; then echo "(no \"$1\" after $WAIT_LIMIT s)" >> /tmp/run.log; return 1; fi
        sleep 0.2
    done
    echo "OFFLOAD-TEST time \"$1\" $(since $DAEMON_STARTED) s after the daemon started"
}
# stop_daemon: SIGTERM, then wait for the exit (SIGKILL after STOP_LIMIT);
# its exit status in DAEMON_STATUS.
stop_daemon() {
    t=$(now)
    kill -TERM $DAEMON
    while alive $DAEMON; do
        if at_least $t $STOP_LIMIT; then echo "(still running $STOP_LIMIT s after SIGTERM: SIGKILL)" >> /tmp/run.log; kill -KILL $DAEMON; fi
        sleep 0.2
    done
    wait $DAEMON
    DAEMON_STATUS=$?
    echo "OFFLOAD-TEST time the daemon exited ($DAEMON_STATUS) $(since $t) s after SIGTERM"
}
# expect_refusal NAME NEEDLE ARGS...: dispatcher ARGS fails, says NEEDLE,
# and leaves no pins and no program behind.
expect_refusal() {
    name=$1; needle=$2; shift 2
    begin "$name"
    if timeout $WAIT_LIMIT dispatcher "$@" > /tmp/out 2>&1; then fail "$name (it succeeded)"; return; fi
    if ! grep -q "$needle" /tmp/out; then fail "$name (no \"$needle\")"; return; fi
    if [ -e "$PINS" ]; then fail "$name (pins left behind)"; return; fi
    if offloaded; then fail "$name (a program left offloaded)"; return; fi
    ok "$name"; tail -n 5 /tmp/out | sed 's/^/    /'
}
RUN="run --iface $IF --mode hw --config /dispatcher.toml"

# 1. The device holds at most 2 entries per map: the default sizes are
#    refused, with the fix named.
expect_refusal maps_too_large_for_the_device "give a smaller --hw-map-entries" $RUN

# 2. With 2 entries per map: bound, attached in hardware mode, pinned.
begin binds_and_attaches_in_hw_mode
start_daemon $RUN --hw-map-entries 2
ATTACHED=0
if wait_log "data plane attached" && [ -e "$PINS/link" ] && offloaded && grep -q "mode=Hardware" /tmp/run.log; then
    ATTACHED=1
    ok binds_and_attaches_in_hw_mode
    echo "    program $(cat $DBG/ports/0/bpf_offloaded_id) offloaded to $IF"
else
    cp /tmp/run.log /tmp/out
    fail binds_and_attaches_in_hw_mode
fi

# 3. The CLI reads the offloaded maps (the host reads them through the
#    driver; the daemon wrote SETTINGS and SERVICES there already).
begin cli_reads_offloaded_maps
if dispatcher maps dump --json > /tmp/out 2>&1 && dispatcher stats >> /tmp/out 2>&1 && dispatcher functions list >> /tmp/out 2>&1; then
    ok cli_reads_offloaded_maps
else
    fail cli_reads_offloaded_maps
fi
# 3b. The CLI adds and reads workers on the offloaded maps. Two entries per
#     map hold one function of two workers (`dispatcher maps dump geometry`).
begin cli_adds_and_reads_workers_on_offloaded_maps
: > /tmp/out
cli() { echo "\$ dispatcher $*" >> /tmp/out; timeout $WAIT_LIMIT dispatcher "$@" >> /tmp/out 2>&1; }
if cli maps dump geometry && grep -q "workers_per_function" /tmp/out \
    && cli functions add 1 --policy hash \
    && cli workers add --function 1 --addr 10.0.1.1:9000 --mac 02:00:00:00:01:01 \
    && cli workers add --function 1 --addr 10.0.1.2:9000 --mac 02:00:00:00:01:02 --weight 2 \
    && cli workers list --function 1 --json \
    && grep -q '"addr":"10.0.1.1:9000"' /tmp/out && grep -q '"addr":"10.0.1.2:9000","mac":"02:00:00:00:01:02","weight":2,"state":"up"' /tmp/out \
    && cli functions list --json && grep -q '"policy":"hash","workers":2,"up":2' /tmp/out; then
    ok cli_adds_and_reads_workers_on_offloaded_maps
    sed 's/^/    /' /tmp/out
else
    fail cli_adds_and_reads_workers_on_offloaded_maps
fi
# What does not fit the device is refused with the limit named.
begin what_does_not_fit_the_device_is_refused
: > /tmp/out
if ! cli workers add --function 1 --addr 10.0.1.3:9000 --mac 02:00:00:00:01:03 \
    && grep -q "the most the data plane holds per function" /tmp/out \
    && ! cli functions add 2 && grep -q "all 1 function rows of the data plane are in use" /tmp/out; then
    ok what_does_not_fit_the_device_is_refused
    sed 's/^/    /' /tmp/out
else
    fail what_does_not_fit_the_device_is_refused
fi
# Removing a worker rewrites the tables on the device in one step.
begin cli_removes_a_worker_on_offloaded_maps
: > /tmp/out
if cli workers rm --function 1 --addr 10.0.1.1:9000 && cli workers list --function 1 --json \
    && ! grep -q '10.0.1.1:9000",' /tmp/out && cli functions list --json && grep -q '"workers":1,"up":1' /tmp/out; then
    ok cli_removes_a_worker_on_offloaded_maps
else
    fail cli_removes_a_worker_on_offloaded_maps
fi
# `dispatcher trace` is refused: the offloaded program has no ring buffer.
begin trace_is_refused_on_the_offloaded_program
if ! timeout $WAIT_LIMIT dispatcher trace --duration 1 > /tmp/out 2>&1 \
    && grep -q "offloaded to the NIC (--mode hw), whose program cannot trace" /tmp/out; then
    ok trace_is_refused_on_the_offloaded_program
else
    fail trace_is_refused_on_the_offloaded_program
fi

# 4. SIGTERM detaches and removes the pins: of a program proven attached.
begin sigterm_detaches
stop_daemon
cp /tmp/run.log /tmp/out
if [ $ATTACHED = 1 ] && [ $DAEMON_STATUS = 0 ] && [ ! -e "$PINS" ] && ! offloaded; then
    ok sigterm_detaches
else
    echo "(attached before: $ATTACHED; exit status $DAEMON_STATUS)" >> /tmp/out
    fail sigterm_detaches
fi

# 5. --keep-attached leaves it offloaded and pinned; the next daemon adopts
#    it; that one's SIGTERM detaches.
begin keep_attached_leaves_it_offloaded
start_daemon $RUN --hw-map-entries 2 --keep-attached
KEPT=0
if wait_log "data plane attached"; then
    stop_daemon
    if [ $DAEMON_STATUS = 0 ] && [ -e "$PINS/link" ] && offloaded; then KEPT=1; fi
else
    stop_daemon
fi
cp /tmp/run.log /tmp/out
if [ $KEPT = 1 ]; then ok keep_attached_leaves_it_offloaded; else fail keep_attached_leaves_it_offloaded; fi

begin adopted_by_the_next_daemon
start_daemon $RUN --hw-map-entries 2
ADOPTED=0
if [ $KEPT = 1 ] && wait_log "adopted" && offloaded; then ADOPTED=1; fi
cp /tmp/run.log /tmp/out
if [ $ADOPTED = 1 ]; then ok adopted_by_the_next_daemon; else fail adopted_by_the_next_daemon; fi

begin the_adopter_detaches
stop_daemon
cp /tmp/run.log /tmp/out
if [ $ADOPTED = 1 ] && [ $DAEMON_STATUS = 0 ] && [ ! -e "$PINS" ] && ! offloaded; then
    ok the_adopter_detaches
else
    echo "(adopted before: $ADOPTED; exit status $DAEMON_STATUS)" >> /tmp/out
    fail the_adopter_detaches
fi
# Whatever failed above, the device starts the refusals clean.
rm -rf "$PINS"

# 6. The device's refusals, flipped through netdevsim's debugfs knobs.
echo N > $DBG/bpf_bind_accept
expect_refusal device_refuses_the_program "refused to take dispatch_hw" $RUN --hw-map-entries 2
echo Y > $DBG/bpf_bind_accept
echo N > $DBG/ports/0/bpf_map_accept
expect_refusal device_refuses_the_maps "refused to hold map" $RUN --hw-map-entries 2
echo Y > $DBG/ports/0/bpf_map_accept
echo N > $DBG/ports/0/bpf_xdpoffload_accept
expect_refusal device_refuses_hw_attach "refused to run dispatch_hw in hardware mode" $RUN --hw-map-entries 2
echo Y > $DBG/ports/0/bpf_xdpoffload_accept

echo "OFFLOAD-TEST done"
poweroff -f
