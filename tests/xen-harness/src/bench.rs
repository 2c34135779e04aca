//! `xen-harness bench` (scenario `bench`, issue 9 item 4): real-Xen benchmark figures taken in
//! **one boot**, so that ratios between them mean something even under QEMU TCG (absolute
//! figures under TCG say little about real hardware; two paths measured in the same boot, by
//! the same guest, alternating, do compare).
//!
//! One Linux PVH domU (the `domu.rs` image, script `bench`) gets two disks and two vifs:
//!
//! | path | disk | vif |
//! |---|---|---|
//! | `a` (Linux's backends) | `xvda`: dom0's xen-blkback on a `brd` RAM disk (`/dev/ram0`, xl's `disk =`) | `vif/0`: dom0's xen-netback on `xenbr0` (xl's `vif =`) |
//! | `b` (ours) | `xvdb`: the driver domain's blkback on its RAM disk (`dd_attach_vbd`) | `vif/1`: the driver domain's netback, bridged to its uplink on `xenbr0` (`dd_attach_vif`) |
//!
//! The domU runs the same workload on both, alternating a/b (b/a on even repetitions), and
//! times it with its own clock (`/proc/uptime`, 10 ms): O_DIRECT sequential write and read of
//! [`BLK_MIB`] MiB in 1 MiB `dd` blocks, 4 KiB O_DIRECT reads one at a time, then reads both
//! disks back and compares them with what it wrote; pings dom0 through each vif, sends
//! [`NET_MIB`] MiB to dom0's `nc` listeners through each, and times [`NET_ECHO`] ICMP echo
//! exchanges with 56 and with 1400 data bytes (`ping -A`) through each.
//!
//! Path **c** (our frontends on Linux's backends): after the domU, our PVH guest
//! (tests/pvh-guest, `run=bench`, bench.rs there) gets the RAM disk path a used (`xvda` from
//! dom0's xen-blkback) and a vif on dom0's xen-netback, and runs the same block workload (1
//! MiB bios, 4 KiB reads at queue depth 1) and the same echo exchanges with its own tiny
//! stack, timed with Xen's system time (ns): `BENCHNS` lines. Path c against path a compares
//! the frontends (ours vs Linux's) on the same backends, in the same boot but one after the
//! other (the two guests cannot alternate), within [`PVH_SECS`].
//! It prints `BENCH <op> <path> <rep> <bytes> <centiseconds> <rc>`, `BENCHPING out <path> <avg
//! ms>` and `BENCHFEAT` lines; dom0 adds the negotiated features from xenstore (`FEAT`
//! lines, taken while the devices are connected) and dumps everything as `bench-results.txt`;
//! the driver domain's own report (`RESULT bench-blk`, `RESULT bench-net`: what it
//! negotiated and served) is in the run's `guest-debug.log`. `benches/src/realxen.rs` turns
//! them into the table of `cargo kmod bench`.
//!
//! Under TCG on a loaded 2-core machine a Linux domU needs minutes to boot and our driver
//! domain served a 4 KiB request in tens of milliseconds, so the sizes are small and dom0
//! keeps the whole scenario within 840 s (the driver domain serves 900 s at most): what was
//! measured by then is reported, the rest is missing from the results.
//!
//! `CHECK bench` passes when every block figure was taken and both disks read back what was
//! written; the network part's outcome is in its detail (its figures are missing from the
//! results when it failed). Not part of `cargo kmod test` (not in `Scenario::ALL`).

/// MiB per sequential block transfer (the RAM disks have 16 MiB).
pub const BLK_MIB: u32 = 8;
/// 4 KiB reads per latency measurement.
pub const BLK_4K: u32 = 128;
/// Alternating repetitions of each block measurement (the tables take the median).
pub const BLK_REPS: u32 = 3;
/// MiB per TCP transfer.
pub const NET_MIB: u32 = 2;
/// Alternating repetitions of each TCP transfer (dom0 listens on 7101 .. 7100 + 2 × this)
/// and of each echo measurement.
pub const NET_REPS: u32 = 3;
/// ICMP echo requests per echo measurement (56 and 1400 data bytes; `ping -A` in the Linux
/// domU, `run=bench` in our PVH guest).
pub const NET_ECHO: u32 = 30;
/// Seconds the PVH guest's part may take (after the Linux domU's, which has 840).
pub const PVH_SECS: u32 = 240;
/// Memory of the bench's Linux domU (MiB): it has two disks (dom0's and the driver domain's),
/// and xen-blkfront with the image's module parameters allocates about 65 MiB up front for
/// each (`domu::MODULE_ARGS`); with 192 MiB a fresh-clone run's domU died of OOM in its insmod.
pub const DOMU_MEMORY_MIB: u32 = crate::domu::DD_BLK_MEMORY_MIB + 128;

/// The domU script (sourced by the domU's `/init` with `$nonce`, `verdict` and `wait_for`).
const DOMU_SCRIPT: &str = r#"
# bench (tests/xen-harness/src/bench.rs): path a = dom0's xen-blkback/xen-netback, path b = the
# driver domain's blkback/netback; the same workload on both, alternating.
MIB=@BLK_MIB@ K4=@BLK_4K@ REPS=@BLK_REPS@ NMIB=@NET_MIB@ NREPS=@NET_REPS@ NECHO=@NET_ECHO@
# cs: the domU's clock in centiseconds (/proc/uptime has two decimals).
cs() { local u r; read u r < /proc/uptime; echo "${u%.*}${u#*.}"; }
# timed OP PATH REP BYTES CMD...: one measurement line; fails when CMD fails.
timed() {
    local op=$1 p=$2 r=$3 b=$4 t0 t1 rc
    shift 4
    t0=$(cs)
    "$@" > /dev/null 2>&1
    rc=$?
    t1=$(cs)
    echo "BENCH $op $p $r $b $((t1 - t0)) $rc"
    [ "$rc" = 0 ]
}
# timed_ping PATH REP SIZE: NECHO echo requests of SIZE data bytes to dom0, each sent when the
# previous reply is in (busybox ping -A; after 1 s without one, the next goes anyway). dom0's
# kernel answers: no dom0 process in the loop. A BENCHLOST line when replies were missing.
timed_ping() {
    local p=$1 r=$2 s=$3 t0 t1 rc got
    t0=$(cs)
    timeout 300 ping -A -c "$NECHO" -s "$s" 10.99.0.1 > /tmp/echo.out 2>&1
    rc=$?
    t1=$(cs)
    echo "BENCH echo$s $p $r $((NECHO * s)) $((t1 - t0)) $rc"
    got=$(grep -o '[0-9]* packets received' /tmp/echo.out | cut -d' ' -f1)
    [ "${got:-0}" = "$NECHO" ] || echo "BENCHLOST echo$s $p $r $((NECHO - ${got:-0})) of $NECHO"
    [ "$rc" = 0 ]
}
# err WHY: a BENCHERR line; WHY goes into the verdict.
err() { why=$*; echo "BENCHERR $*"; }
order() { if [ $(($1 % 2)) = 1 ]; then echo a b; else echo b a; fi; }
disk() { if [ "$1" = a ]; then echo xvda; else echo xvdb; fi; }
bench_blk() {
    local p d r op ok=0 want got
    wait_for 600 test -b /dev/xvda || { err "blk: no /dev/xvda (dom0's blkback)"; return 1; }
    wait_for 1200 test -b /dev/xvdb || { err "blk: no /dev/xvdb (driver domain's blkback)"; return 1; }
    for p in a b; do
        d=$(disk $p)
        echo "BENCHFEAT blk $p $d sectors=$(cat /sys/block/$d/size) queues=$(ls /sys/block/$d/mq | wc -l) max_segments=$(cat /sys/block/$d/queue/max_segments) max_hw_sectors_kb=$(cat /sys/block/$d/queue/max_hw_sectors_kb) $(dmesg | grep "blkfront: $d:" | tail -n 1 | cut -d: -f3- | tr -d ';')"
    done
    dd if=/dev/urandom of=/tmp/pat bs=1048576 count=$MIB 2>/dev/null
    echo "BENCH BLKSTART"
    for r in $(seq 1 $REPS); do
        for op in write read read4k; do
            for p in $(order $r); do
                d=/dev/$(disk $p)
                case $op in
                write) timed write $p $r $((MIB * 1048576)) dd if=/tmp/pat of=$d bs=1048576 count=$MIB oflag=direct ;;
                read) timed read $p $r $((MIB * 1048576)) dd if=$d of=/dev/null bs=1048576 count=$MIB iflag=direct ;;
                *) timed read4k $p $r $((K4 * 4096)) dd if=$d of=/dev/null bs=4096 count=$K4 iflag=direct ;;
                esac || ok=1
            done
        done
    done
    want=$(sha256sum < /tmp/pat | cut -c1-64)
    for p in a b; do
        got=$(dd if=/dev/$(disk $p) bs=1048576 count=$MIB iflag=direct 2>/dev/null | sha256sum | cut -c1-64)
        if [ "$got" = "$want" ]; then echo "BENCHVERIFY $p ok"; else echo "BENCHVERIFY $p differs"; ok=1; fi
    done
    return $ok
}
# route_via PATH: route dom0's address through that path's vif (source address of that vif).
route_via() {
    if [ "$1" = a ]; then ip route replace 10.99.0.1/32 dev "$ea" src 10.99.0.4
    else ip route replace 10.99.0.1/32 dev "$eb" src 10.99.0.5; fi
}
avg_of() { grep -o 'min/avg/max = [0-9./]*' "$1" | cut -d' ' -f3 | cut -d/ -f2; }
bench_net() {
    local i v p r n port=7101 ok=0
    wait_for 600 test -e /sys/class/net/eth1 || { err "net: no eth1 within 60 s: $(ls /sys/class/net | tr '\n' ' ')"; return 1; }
    for i in $(ls /sys/class/net); do
        v=$(readlink "/sys/class/net/$i/device")
        case "$v" in *vif-0) ea=$i ;; *vif-1) eb=$i ;; esac
    done
    [ -n "$ea" ] && [ -n "$eb" ] || { err "net: no vif-0/vif-1 interfaces"; return 1; }
    # Two interfaces in one subnet: each answers ARP only for its own address.
    echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore
    echo 2 > /proc/sys/net/ipv4/conf/all/arp_announce
    ip addr add 10.99.0.4/24 dev "$ea" && ip link set "$ea" up &&
        ip addr add 10.99.0.5/24 dev "$eb" && ip link set "$eb" up || { err "net: cannot configure $ea/$eb"; return 1; }
    echo "BENCHFEAT net a $ea tx_queues=$(ls -d /sys/class/net/$ea/queues/tx-* | wc -l) rx_queues=$(ls -d /sys/class/net/$ea/queues/rx-* | wc -l)"
    echo "BENCHFEAT net b $eb tx_queues=$(ls -d /sys/class/net/$eb/queues/tx-* | wc -l) rx_queues=$(ls -d /sys/class/net/$eb/queues/rx-* | wc -l)"
    # dom0 records the vifs' xenstore nodes now, while both are connected (after the last
    # measurement the domU powers off and the teardown races the snapshot); the first echo
    # replies below take longer than that, and no figure is being taken meanwhile.
    echo "BENCH NETUP"
    for p in a b; do
        route_via $p
        n=0
        while ! ping -c 1 -W 2 10.99.0.1 > /dev/null 2>&1; do
            n=$((n + 1))
            [ "$n" -lt 15 ] || { err "net: path $p: no echo reply from 10.99.0.1"; return 1; }
        done
        ping -c 5 -W 5 10.99.0.1 > /tmp/ping.out 2>&1
        echo "BENCHPING out $p $(avg_of /tmp/ping.out)"
    done
    dd if=/dev/urandom of=/tmp/net bs=1048576 count=$NMIB 2>/dev/null
    for r in $(seq 1 $NREPS); do
        for p in $(order $r); do
            route_via $p
            timed tcp $p $r $((NMIB * 1048576)) timeout 200 nc 10.99.0.1 $port < /tmp/net || { ok=1; why="net: tcp $p rep $r failed"; }
            port=$((port + 1))
        done
    done
    for r in $(seq 1 $NREPS); do
        for s in 56 1400; do
            for p in $(order $r); do
                route_via $p
                timed_ping $p $r $s || { ok=1; why="net: echo$s $p rep $r failed"; }
            done
        done
    done
    return $ok
}
bench_blk
brc=$?
bench_net
nrc=$?
if [ "$nrc" = 0 ]; then nets="net ok"; else nets="net FAILED: $(echo "$why" | cut -c1-50)"; fi
if [ "$brc" = 0 ]; then
    verdict bench PASS "blk: every figure taken, both disks read back ok; $nets"
else
    verdict bench FAIL "blk: a measurement or the read-back failed; $nets"
fi
"#;

/// dom0's functions for the scenario; `run_dd` calls `bench_run ARCH DD NONCE`.
pub const DOM0_FUNCTIONS: &str = r#"
# ---- bench (tests/xen-harness/src/bench.rs) -----------------------------------------------
# bench_said NAME WORD: the domU printed `BENCH WORD` or is done.
bench_said() { domu_log "$1" | grep -q -e "^BENCH $2\$" -e '^DOMU DONE'; }
# bench_feat LABEL DIR: the negotiation keys of a device directory, on one FEAT line.
bench_feat() {
    local s
    s=$(xenstore-ls "$2" 2>/dev/null)
    echo "FEAT $1 $(echo "$s" | grep -E '^(feature-[a-z0-9-]+|multi-queue-[a-z-]+|ring-page-order|max-ring-page-order|protocol|request-rx-copy|sectors) = ' | sed 's/ = "\(.*\)"$/=\1/' | tr '\n' ' ')$(echo "$s" | grep -q '^ *event-channel-rx = ' && echo split-event-channels=1)"
    { echo "--- $1 $2"; xenstore-ls -f "$2"; } >> /tmp/bench-xs.txt 2>&1
}
# bench_left: seconds left of the bench's budget ($bench_end), at least 10.
bench_left() {
    local l
    up_secs
    l=$((bench_end - up_now))
    if [ "$l" -gt 10 ]; then echo "$l"; else echo 10; fi
}
# bench_run ARCH DD NONCE: scenario bench (see bench.rs). Everything within 840 s, so the
# results are dumped before the driver domain stops serving (900 s after it started) and
# before the run's deadline; what was measured by then is kept.
bench_run() {
    local a=$1 dd=$2 n=pvh-bench-$1 fe lp= port res=/tmp/bench-results.txt
    up_secs
    bench_end=$((up_now + 840))
    ip neigh flush dev xenbr0 2>/dev/null
    rm -f /tmp/bench-hold /tmp/bench-dom0.txt /tmp/bench-xs.txt
    mkfifo /tmp/bench-hold
    exec 5<>/tmp/bench-hold
    for port in $(seq 7101 $((7100 + 2 * @NET_REPS@))); do
        nc -l -p "$port" < /tmp/bench-hold > /dev/null &
        lp="$lp $!"
    done
    cat > "/tmp/$n.cfg" <<EOC
name = "$n"
type = "pvh"
kernel = "/guests/linux-vmlinuz"
ramdisk = "/guests/linux-domu.cpio"
cmdline = "console=hvc0 loglevel=6 script=bench nonce=$3"
memory = @DOMU_MIB@
vcpus = 2
tsc_mode = "native"
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "preserve"
disk = [ 'format=raw, vdev=xvda, access=rw, script=/etc/xen/scripts/pvh-block, target=/dev/ram0' ]
vif = [ 'mac=00:16:3e:5a:03:01, bridge=xenbr0, script=/etc/xen/scripts/pvh-vif' ]
EOC
    if ! create_paused "$n"; then
        dump_file xl.log "/var/log/xen/xl-$n.log"
        echo "CHECK bench $a FAIL xl create -p of the Linux domU failed"
        kill $lp 2>/dev/null
        exec 5>&-
        return
    fi
    fe=$(xl domid "$n")
    echo "NOTE bench $a Linux PVH domU d$fe, driver domain d$dd"
    dd_attach_vbd "$fe" "$dd" 51728 ram:16M || echo "NOTE bench $a writing the vbd nodes failed"
    dd_attach_vif "$fe" "$dd" 1 00:16:3e:5a:03:02 || echo "NOTE bench $a writing the vif nodes failed"
    xl unpause "$fe"
    if wait_secs "$(bench_left)" bench_said "$n" BLKSTART; then
        bench_feat blk-a-frontend "/local/domain/$fe/device/vbd/51712"
        bench_feat blk-a-backend "/local/domain/0/backend/vbd/$fe/51712"
        bench_feat blk-b-frontend "/local/domain/$fe/device/vbd/51728"
        bench_feat blk-b-backend "/local/domain/$dd/backend/vbd/$fe/51728"
    fi >> /tmp/bench-dom0.txt
    if wait_secs "$(bench_left)" bench_said "$n" NETUP; then
        bench_feat net-a-frontend "/local/domain/$fe/device/vif/0"
        bench_feat net-a-backend "/local/domain/0/backend/vif/$fe/0"
        bench_feat net-b-frontend "/local/domain/$fe/device/vif/1"
        bench_feat net-b-backend "/local/domain/$dd/backend/vif/$fe/1"
    fi >> /tmp/bench-dom0.txt
    domu_wait "$n" "$(bench_left)"
    kill $lp 2>/dev/null
    exec 5>&-
    { domu_log "$n" | grep '^BENCH'; cat /tmp/bench-dom0.txt; } > "$res"
    v=$(domu_verdict "$n" bench "$a")
    domu_finish "$n"
    dd_detach_vbd "$fe" "$dd" 51728
    dd_detach_vif "$fe" "$dd" 1
    dd_report "$dd" bench-blk vbd "$fe" 51728 x86_64-abi
    dd_report "$dd" bench-net vif "$fe" 1 -
    bench_pvh "$a" "$3"
    { domu_log "pvh-benchc-$a" | grep -e '^BENCH' -e '^RESULT bench '; cat /tmp/bench-dom0c.txt; } >> "$res"
    c=$(domu_log "pvh-benchc-$a" | grep '^RESULT bench ' | tail -n 1)
    case "$v" in
    "CHECK bench $a PASS "*)
        case "$c" in
        "RESULT bench PASS "*) echo "$v; pvh ok" ;;
        *) echo "CHECK bench $a FAIL pvh guest: $(echo "${c:-no RESULT bench line}" | cut -c1-70)" ;;
        esac
        ;;
    *) echo "$v" ;;
    esac
    dump_file bench-results.txt "$res"
    dump_file bench-xenstore.txt /tmp/bench-xs.txt
    dump_file bench-domu.log "/tmp/xc/guest-$n.log"
    dump_file bench-pvh.log "/tmp/xc/guest-pvh-benchc-$a.log"
}
# bench_pvh ARCH NONCE: path c, our PVH guest's blkfront and netfront (run=bench) against
# dom0's xen-blkback (the same brd RAM disk the Linux domU's xvda had) and xen-netback on
# xenbr0; the same workload as the Linux domU's path a, timed with Xen's system time.
bench_pvh() {
    local a=$1 n=pvh-benchc-$1 fe
    up_secs
    bench_end=$((up_now + @PVH_SECS@))
    rm -f /tmp/bench-dom0c.txt
    cat > "/tmp/$n.cfg" <<EOC
name = "$n"
type = "pvh"
kernel = "/guests/pvh-guest-$a"
cmdline = "run=bench name=$n nonce=$2 bmib=@BLK_MIB@ b4k=@BLK_4K@ breps=@BLK_REPS@ necho=@NET_ECHO@ nreps=@NET_REPS@"
memory = 128
vcpus = 1
tsc_mode = "native"
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "preserve"
disk = [ 'format=raw, vdev=xvda, access=rw, script=/etc/xen/scripts/pvh-block, target=/dev/ram0' ]
vif = [ 'mac=00:16:3e:5a:03:03, bridge=xenbr0, script=/etc/xen/scripts/pvh-vif' ]
EOC
    ip neigh flush dev xenbr0 2>/dev/null
    if ! create_tries "$n"; then
        dump_file xl.log "/var/log/xen/xl-$n.log"
        echo "NOTE bench $a xl create of the PVH guest failed"
        return
    fi
    fe=$(xl domid "$n")
    echo "NOTE bench $a PVH guest d$fe (path c)"
    ack_xenstore "$a" "$fe" "$2" | sed 's/^CHECK xenstore/NOTE xenstore/'
    if wait_secs "$(bench_left)" bench_said_c "$n" 'BENCHFEAT blk c'; then
        bench_feat blk-c-frontend "/local/domain/$fe/device/vbd/51712"
        bench_feat blk-c-backend "/local/domain/0/backend/vbd/$fe/51712"
    fi >> /tmp/bench-dom0c.txt
    # Read once dom0's netback is Connected, not on the guest's BENCHFEAT line: its echoes are
    # over in a second, and a guest that powered off first left no directories to read.
    if wait_secs "$(bench_left)" bench_vif_up "$fe" "$n"; then
        bench_feat net-c-frontend "/local/domain/$fe/device/vif/0"
        bench_feat net-c-backend "/local/domain/0/backend/vif/$fe/0"
    fi >> /tmp/bench-dom0c.txt
    wait_secs "$(bench_left)" bench_said_c "$n" 'RESULT bench'
    domu_finish "$n"
}
# bench_said_c NAME PREFIX: the PVH guest printed a line starting with PREFIX, or is gone.
# bench_vif_up DOMID NAME: dom0's netback has the guest's vif Connected, or the guest is gone.
bench_vif_up() { is_value "/local/domain/0/backend/vif/$1/0/state" 4 || gone "$2"; }
bench_said_c() { domu_log "$1" | grep -q "^$2" || gone "$1"; }
"#;

/// Fills in the sizes.
fn sized(text: &str) -> String {
    text.replace("@BLK_MIB@", &BLK_MIB.to_string())
        .replace("@BLK_4K@", &BLK_4K.to_string())
        .replace("@BLK_REPS@", &BLK_REPS.to_string())
        .replace("@NET_MIB@", &NET_MIB.to_string())
        .replace("@NET_REPS@", &NET_REPS.to_string())
        .replace("@NET_ECHO@", &NET_ECHO.to_string())
        .replace("@PVH_SECS@", &PVH_SECS.to_string())
        .replace("@DOMU_MIB@", &DOMU_MEMORY_MIB.to_string())
}

/// dom0's functions with the sizes filled in.
pub fn dom0_functions() -> String {
    sized(DOM0_FUNCTIONS)
}

/// The files the scenario adds to the domU image: its script.
pub fn domu_files() -> Vec<(String, u32, Vec<u8>)> {
    vec![(
        "/scripts/bench".to_string(),
        0o644,
        sized(DOMU_SCRIPT).into_bytes(),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_agree_on_names_and_sizes() {
        let domu = String::from_utf8(domu_files().remove(0).2).unwrap();
        let dom0 = dom0_functions();
        for placeholder in ["@BLK_", "@NET_", "@PVH_", "@DOMU_"] {
            assert!(!domu.contains(placeholder) && !dom0.contains(placeholder));
        }
        assert!(domu.contains("MIB=8 K4=128 REPS=3 NMIB=2 NREPS=3 NECHO=30"));
        // The PVH guest gets the same sizes on its command line, and its disk is the RAM
        // disk the Linux domU's path a used.
        assert!(dom0.contains("run=bench name=$n nonce=$2 bmib=8 b4k=128 breps=3 necho=30 nreps=3"));
        assert!(dom0.contains("target=/dev/ram0' ]\nvif = [ 'mac=00:16:3e:5a:03:03,"));
        assert!(dom0.contains("bench_end=$((up_now + 240))"));
        // Room for xen-blkfront's up-front allocation on both of its disks.
        assert!(dom0.contains("memory = 384\n"));
        // dom0 waits for the lines the guest prints (tests/pvh-guest/src/bench.rs).
        for line in ["BENCHFEAT blk c", "RESULT bench"] {
            assert!(dom0.contains(&format!("bench_said_c \"$n\" '{line}'")));
        }
        // The vif's keys are read while it is connected (the guest's echoes are too quick for
        // its BENCHFEAT line to be waited on).
        assert!(
            dom0.contains("bench_vif_up \"$fe\" \"$n\"; then\n        bench_feat net-c-frontend")
        );
        // The echo sizes are the guest's.
        assert!(domu.contains("for s in 56 1400; do"));
        // The markers dom0 waits for are the ones the domU prints.
        for word in ["BLKSTART", "NETUP"] {
            assert!(domu.contains(&format!("echo \"BENCH {word}\"")));
            assert!(dom0.contains(&format!("bench_said \"$n\" {word}")));
        }
        // dom0 listens on as many ports as the domU uses.
        assert!(dom0.contains("$(seq 7101 $((7100 + 2 * 3)))"));
        assert!(domu.contains("port=7101"));
        // Disk b is xvdb (51728 = 202 << 8 | 16), vif b is vif/1.
        assert_eq!((202 << 8) | 16, 51728);
        assert!(dom0.contains("dd_attach_vbd \"$fe\" \"$dd\" 51728"));
        assert!(dom0.contains("dd_attach_vif \"$fe\" \"$dd\" 1 "));
        assert!(domu.contains("*vif-1) eb=$i"));
        assert!(domu.contains("verdict bench PASS"));
        assert!(dom0.contains("domu_verdict \"$n\" bench \"$a\""));
    }
}
