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

ok() { echo "OFFLOAD-TEST ok $1"; }
fail() { echo "OFFLOAD-TEST FAIL $1"; cat /tmp/out; }
# expect_refusal NAME NEEDLE ARGS...: dispatcher ARGS fails, says NEEDLE,
# and leaves no pins and no program behind.
expect_refusal() {
    name=$1; needle=$2; shift 2
    if dispatcher "$@" > /tmp/out 2>&1; then fail "$name (it succeeded)"; return; fi
    if ! grep -q "$needle" /tmp/out; then fail "$name (no \"$needle\")"; return; fi
    if [ -e "$PINS" ]; then fail "$name (pins left behind)"; return; fi
    if offloaded; then fail "$name (a program left offloaded)"; return; fi
    ok "$name"; cat /tmp/out | sed 's/^/    /'
}
RUN="run --iface $IF --mode hw --config /dispatcher.toml"

# 1. The device holds at most 2 entries per map: the default sizes are
#    refused, with the fix named.
expect_refusal maps_too_large_for_the_device "give a smaller --hw-map-entries" $RUN

# 2. With 2 entries per map: bound, attached in hardware mode, pinned.
dispatcher $RUN --hw-map-entries 2 > /tmp/run.log 2>&1 &
DAEMON=$!
for i in $(seq 1 100); do [ -e "$PINS/link" ] && break; sleep 0.2; done
cp /tmp/run.log /tmp/out
if [ -e "$PINS/link" ] && offloaded && grep -q "mode=Hardware" /tmp/run.log; then
    ok binds_and_attaches_in_hw_mode
    echo "    program $(cat $DBG/ports/0/bpf_offloaded_id) offloaded to $IF"
else
    fail binds_and_attaches_in_hw_mode
fi

# 3. The CLI reads the offloaded maps (the host reads them through the
#    driver; the daemon wrote SETTINGS and SERVICES there already).
if dispatcher maps dump --json > /tmp/out 2>&1 && dispatcher stats >> /tmp/out 2>&1 && dispatcher functions list >> /tmp/out 2>&1; then
    ok cli_reads_offloaded_maps
else
    fail cli_reads_offloaded_maps
fi
# 3b. The CLI adds and reads workers on the offloaded maps. Two entries per
#     map hold one function of two workers (`dispatcher maps dump geometry`).
: > /tmp/out
cli() { echo "\$ dispatcher $*" >> /tmp/out; dispatcher "$@" >> /tmp/out 2>&1; }
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
: > /tmp/out
if cli workers rm --function 1 --addr 10.0.1.1:9000 && cli workers list --function 1 --json \
    && ! grep -q '10.0.1.1:9000",' /tmp/out && cli functions list --json && grep -q '"workers":1,"up":1' /tmp/out; then
    ok cli_removes_a_worker_on_offloaded_maps
else
    fail cli_removes_a_worker_on_offloaded_maps
fi

# 4. SIGTERM detaches and removes the pins.
kill -TERM $DAEMON
wait $DAEMON
cp /tmp/run.log /tmp/out
if [ ! -e "$PINS" ] && ! offloaded; then ok sigterm_detaches; else fail sigterm_detaches; fi

# 5. --keep-attached leaves it offloaded and pinned; the next daemon adopts
#    it; that one's SIGTERM detaches.
wait_for() { for i in $(seq 1 100); do eval "$1" && return 0; sleep 0.2; done; return 1; }
dispatcher $RUN --hw-map-entries 2 --keep-attached > /tmp/run.log 2>&1 &
DAEMON=$!
wait_for '[ -e "$PINS/link" ]'
kill -TERM $DAEMON
wait $DAEMON
cp /tmp/run.log /tmp/out
if [ -e "$PINS/link" ] && offloaded; then ok keep_attached_leaves_it_offloaded; else fail keep_attached_leaves_it_offloaded; fi
dispatcher $RUN --hw-map-entries 2 > /tmp/run.log 2>&1 &
DAEMON=$!
wait_for 'grep -q "adopted" /tmp/run.log'
cp /tmp/run.log /tmp/out
if grep -q "adopted" /tmp/run.log && offloaded; then ok adopted_by_the_next_daemon; else fail adopted_by_the_next_daemon; fi
kill -TERM $DAEMON
wait $DAEMON
cp /tmp/run.log /tmp/out
if [ ! -e "$PINS" ] && ! offloaded; then ok the_adopter_detaches; else fail the_adopter_detaches; fi

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
