//! The dom0 initramfs: busybox, Xen's tools with their libraries, the Linux Xen backend
//! modules, the guest kernels, and an `/init` that starts xenstored/xenconsoled and runs the
//! planned guest runs with `xl`, printing markers the host side waits for.
//!
//! # Marker lines (dom0 → harness, on the serial console)
//!
//! | line | meaning |
//! |---|---|
//! | `=== DOM0 UP` | modules loaded, xenfs mounted |
//! | `=== TOOLS UP` | xenstored, xen-init-dom0 and xenconsoled running |
//! | `=== RUN <id> BEGIN` / `END` | one guest run (`basic-x86_64`, `busy-i686` ...) |
//! | `=== RUN <id> DOMID <n>` | the run's domain id: its debug-port lines are `(d<n>) ...` |
//! | `CHECK <scenario> <arch> PASS\|FAIL <detail>` | a dom0-side verdict |
//! | `=== FILE <name>` ... `=== ENDFILE <name>` | a file from dom0 (xenconsoled's guest log) |
//! | `=== FATAL <reason>` | dom0 set-up failed; nothing else will run |
//! | `=== ALL DONE` | every run finished; dom0 reboots the machine (QEMU exits) |
//!
//! Every wait in the script is a poll of a real condition (a xenstore node, `xl list`, a log
//! line) every 0.1 s with a bound; none is a fixed sleep.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::assets::Assets;
use crate::cpio::Archive;
use crate::domu;
use crate::plan::{Arch, Run, RunKind, Scenario};

/// Xen tool binaries copied into dom0 (with their libraries).
const XEN_TOOLS: &[&str] = &[
    "/usr/lib/xen-4.17/bin/xl",
    "/usr/lib/xen-4.17/bin/xenstored",
    "/usr/lib/xen-4.17/bin/xenconsoled",
    "/usr/lib/xen-4.17/bin/xen-init-dom0",
    "/usr/lib/xen-4.17/bin/xenctx",
    "/usr/bin/xenstore",
    "/usr/bin/socat",
];

/// Names the multi-call `xenstore` binary answers to.
const XENSTORE_NAMES: &[&str] = &[
    "xenstore-read",
    "xenstore-write",
    "xenstore-ls",
    "xenstore-rm",
    "xenstore-list",
    "xenstore-exists",
    "xenstore-watch",
    "xenstore-chmod",
];

/// Kernel modules, in load order (xenfs needs symbols of xen-privcmd).
pub const MODULES: &[&str] = &[
    "xen-evtchn",
    "xen-privcmd",
    "xenfs",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-blkback",
    "xen-netback",
];

/// `libgcc_s` is `dlopen`ed by glibc's `pthread_cancel`; xl aborts without it.
const LIBGCC_S: &[&str] = &[
    "/lib/x86_64-linux-gnu/libgcc_s.so.1",
    "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
];

fn read(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The shared libraries `ldd` resolves for `binary` (absolute paths as the loader names them).
fn libraries(binary: &str) -> Result<Vec<String>, String> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || !out.status.success() {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            return Err(format!("ldd {binary}: {}", line.trim()));
        }
        // "libx.so => /path/libx.so (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(p.to_string());
        }
    }
    Ok(libs)
}

/// The path of `<name>.ko` under a kernel's `lib/modules/<version>`.
pub fn find_module(modules: &Path, name: &str) -> Option<PathBuf> {
    let file = format!("{name}.ko");
    let mut stack = vec![modules.join("kernel")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).ok()?.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().and_then(|n| n.to_str()) == Some(file.as_str()) {
                return Some(path);
            }
        }
    }
    None
}

/// Builds the initramfs at `out` for `runs`, with the guest kernels `guests`.
///
/// # Errors
/// A host file, library or module that cannot be found or read.
pub fn build(
    assets: &Assets,
    guests: &[(Arch, PathBuf)],
    runs: &[Run],
    scenarios: &[Scenario],
    domu_extra: &[(String, u32, Vec<u8>)],
    out: &Path,
) -> Result<usize, String> {
    let mut a = Archive::new();
    for d in [
        "/bin",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/tmp",
        "/var/lib/xen",
        "/var/log/xen",
        "/etc/xen",
        "/lib/modules",
        "/guests",
        "/root",
    ] {
        a.dir(d);
    }
    a.symlink("/var/run", "/run");
    a.file("/bin/busybox", 0o755, read(Path::new("/bin/busybox"))?);

    let mut libs = BTreeSet::new();
    for tool in XEN_TOOLS {
        a.file(tool, 0o755, read(Path::new(tool))?);
        libs.extend(libraries(tool)?);
    }
    for name in XENSTORE_NAMES {
        a.symlink(&format!("/usr/bin/{name}"), "xenstore");
    }
    let libgcc = LIBGCC_S
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or("libgcc_s.so.1 not found on the host (package libgcc-s1)")?;
    libs.insert((*libgcc).to_string());
    for lib in &libs {
        // Store each library at the path the loader will look for (the default multiarch
        // directories; there is no ld.so.cache in the image).
        a.file(lib, 0o755, read(Path::new(lib))?);
    }
    if Path::new("/etc/xen/xl.conf").exists() {
        a.file(
            "/etc/xen/xl.conf",
            0o644,
            read(Path::new("/etc/xen/xl.conf"))?,
        );
    }

    for m in MODULES {
        let path = find_module(&assets.modules, m)
            .ok_or_else(|| format!("module {m}.ko not in {}", assets.modules.display()))?;
        a.file(&format!("/lib/modules/{m}.ko"), 0o644, read(&path)?);
    }
    for (arch, path) in guests {
        a.file(
            &format!("/guests/pvh-guest-{}", arch.name()),
            0o644,
            read(path)?,
        );
    }
    if runs.iter().any(|r| r.kind == RunKind::Dd) {
        // The Linux domU of the driver-domain scenarios: dom0's own kernel, its own image.
        a.file(domu::KERNEL_PATH, 0o644, domu::kernel(assets)?);
        a.file(domu::IMAGE_PATH, 0o644, domu::build(assets, domu_extra)?);
    }
    a.file("/init", 0o755, init_script(runs, scenarios).into_bytes());
    a.file(
        "/etc/xen/scripts/pvh-block",
        0o755,
        BLOCK_SCRIPT.as_bytes().to_vec(),
    );
    a.file(
        "/etc/xen/scripts/pvh-vif",
        0o755,
        VIF_SCRIPT.as_bytes().to_vec(),
    );
    for m in BRIDGE_MODULES.iter().chain(&["brd"]) {
        let path = find_module(&assets.modules, m)
            .ok_or_else(|| format!("module {m}.ko not in {}", assets.modules.display()))?;
        a.file(&format!("/lib/modules/{m}.ko"), 0o644, read(&path)?);
    }

    let mut bytes = Vec::with_capacity(a.payload_bytes() + (1 << 20));
    a.write_to(&mut bytes).map_err(|e| format!("cpio: {e}"))?;
    fs::write(out, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(bytes.len())
}

/// The xl configuration of one run's guest.
fn guest_config(run: &Run) -> String {
    let disk = match run.kind {
        // One RAM disk per architecture and run (brd rd_nr=4), so each run starts from zeroes
        // and dom0 never has stale page cache for it. `target=` must come last. The busy run
        // (scenario destroy) keeps its disk busy until it is destroyed.
        RunKind::Blk | RunKind::Busy => format!(
            "disk = [ 'format=raw, vdev=xvda, access=rw, script=/etc/xen/scripts/pvh-block, target=/dev/ram{}' ]\n",
            match (run.kind, run.arch) {
                (RunKind::Blk, Arch::X86_64) => 0,
                (RunKind::Blk, _) => 1,
                (_, Arch::X86_64) => 2,
                _ => 3,
            }
        ),
        RunKind::Net => format!(
            "vif = [ 'mac=00:16:3e:5a:00:0{}, bridge=xenbr0, script=/etc/xen/scripts/pvh-vif' ]\n",
            match run.arch {
                Arch::X86_64 => 1,
                Arch::I686 => 2,
            }
        ),
        // The driver domain: `driver_domain` is what xl has for it (it only creates the
        // `libxl` and `device-model` directories writable for the domain, used by `xl devd`);
        // the backends need no privilege beyond a plain domU's (see docs/REAL-XEN.md).
        // dd-net: the driver domain's own vif (uplink, backend in dom0 on xenbr0) that its
        // network backend bridges the frontends it serves to.
        RunKind::Dd => format!(
            "driver_domain = 1\nvif = [ 'mac=00:16:3e:5a:01:0{}, bridge=xenbr0, script=/etc/xen/scripts/pvh-vif' ]\n",
            match run.arch {
                Arch::X86_64 => 1,
                Arch::I686 => 2,
            }
        ),
        _ => String::new(),
    };
    let (memory, extra_args) = match run.kind {
        // 16 MiB RAM disk + 8 MiB for the 32-bit frontend's disk + the backends' heap.
        RunKind::Dd => (128, format!(" dd={}", DD_BACKENDS.join(","))),
        RunKind::Busy => (64, " busy=blk".to_string()),
        _ => (64, String::new()),
    };
    format!(
        r#"name = "{name}"
type = "pvh"
kernel = "/guests/pvh-guest-{arch}"
cmdline = "run={kind} name={name} nonce={nonce}{extra_args}"
memory = {memory}
vcpus = 1
# Without it Xen's SVM emulation of RDTSCP fails under QEMU TCG.
tsc_mode = "native"
on_poweroff = "destroy"
on_reboot = "destroy"
# Keep a crashed guest for inspection; the script reports and destroys it.
on_crash = "preserve"
{disk}"#,
        name = run.domain_name(),
        arch = run.arch.name(),
        kind = run.kind.name(),
        nonce = run.nonce,
        disk = disk,
    )
}

/// The hotplug script named by `script=` in the blk run's disk: what the stock `block`
/// script does for a block device, without bash or flock (busybox only): publish the device
/// number for xen-blkback and report success to the toolstack.
const BLOCK_SCRIPT: &str = r#"#!/bin/sh
# xl runs it as `pvh-block add|remove` with XENBUS_PATH = the backend directory.
case "$1" in
add)
    dev=$(xenstore-read "$XENBUS_PATH/params")
    xenstore-write "$XENBUS_PATH/physical-device" "$(stat -L -c '%t:%T' "$dev")"
    xenstore-write "$XENBUS_PATH/hotplug-status" connected
    ;;
esac
exit 0
"#;

/// The hotplug script of the net run's vif: put the backend interface on the bridge (the
/// stock `vif-bridge` needs bash and more than busybox).
const VIF_SCRIPT: &str = r#"#!/bin/sh
# xl runs it as `pvh-vif online|offline` with vif = the interface, XENBUS_PATH = the backend.
case "$1" in
online|add)
    brctl addif "${bridge:-xenbr0}" "$vif"
    ip link set "$vif" up
    xenstore-write "$XENBUS_PATH/hotplug-status" connected
    ;;
esac
exit 0
"#;

/// Modules of the bridge the net run's vif is put on (dependencies first).
const BRIDGE_MODULES: &[&str] = &["llc", "stp", "bridge"];

const PRELUDE: &str = r#"#!/bin/busybox sh
# dom0 /init, generated by xen-harness (tests/xen-harness/src/dom0.rs).
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/usr/lib/xen-4.17/bin
# Resolve every symbol at load time: glibc's lazy-binding trampoline (xsave-based) has crashed
# xl under QEMU TCG ("segfault in ld-linux", "xl: not found").
export LD_BIND_NOW=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /run/xen /run/xenstored /tmp/xc
mount -t devpts devpts /dev/pts          # xenconsoled allocates ptys

# One write per line: with ONLCR the tty sends "\r\n" separately, and Xen may print a guest's
# "(dN)" line in between. Xen passes dom0's writes through in 128-byte chunks, so marker and
# CHECK lines are kept shorter than that.
stty -onlcr < /dev/console 2>/dev/null

fatal() { echo "=== FATAL $*"; reboot -f; }

for m in MODULES; do
    insmod /lib/modules/$m.ko || fatal "insmod $m failed"
done
insmod /lib/modules/brd.ko rd_nr=4 rd_size=16384 || fatal "insmod brd failed"
for m in llc stp bridge; do
    insmod /lib/modules/$m.ko || fatal "insmod $m failed"
done
ip link set lo up
brctl addbr xenbr0 || fatal "cannot create the bridge"
brctl stp xenbr0 off
brctl setfd xenbr0 0
ip addr add 10.99.0.1/24 dev xenbr0
ip link set xenbr0 up
mount -t xenfs xenfs /proc/xen || fatal "cannot mount xenfs"
echo "=== DOM0 UP"

# wait_for TENTHS CMD...: run CMD every 0.1 s until it succeeds, at most TENTHS times.
wait_for() {
    local n=$1
    shift
    while ! "$@" >/dev/null 2>&1; do
        n=$((n - 1))
        [ "$n" -gt 0 ] || return 1
        watched_crash "$n" && return 1
        sleep 0.1
    done
}
# watched_crash ROUND: every 20th round, whether the domain a scenario watches (its Linux
# domU: $watch_domu, domid $watch_domid; none when empty) crashed: every wait of the scenario
# then ends at once instead of running out its time. A triple fault makes Xen shut the domain
# down as "reboot" and xl then destroys it (on_reboot), so the sign is Xen's log (tcg_crash),
# read while the dump is still in its ring, or xl's "crashed" state. Said once per domain.
watched_crash() {
    [ -n "$watch_domid" ] && [ $(($1 % 20)) = 0 ] || return 1
    if tcg_crash "$watch_domid" || boot_crash "$watch_domid" "$watch_domu"; then
        tcg_crashed=yes
    elif ! crashed "$watch_domu"; then
        return 1
    fi
    [ "$watch_said" = "$watch_domid" ] ||
        echo "NOTE $watch_domu (d$watch_domid) crashed (emulator: $tcg_crashed): its scenario's waits end"
    watch_said=$watch_domid
}
others() { xl list 2>/dev/null | awk 'NR > 1 && $1 != "Domain-0"'; }
no_others() { [ -z "$(others)" ]; }
# fails_cleanly CMD...: CMD ran and failed (status 1 to 128). dom0's programs segfault now and
# then under TCG (status > 128); a crash is asked again, up to three times, and never reads as
# a clean failure (a crashed `xl domid` once meant "the guest is gone" to a wait).
fails_cleanly() {
    local n rc
    for n in 1 2 3; do
        "$@" >/dev/null 2>&1
        rc=$?
        [ "$rc" -gt 128 ] || return $((rc == 0))
    done
    return 1
}
gone() { fails_cleanly xl domid "$1"; }
# up_secs: whole seconds since dom0 booted, into $up_now, read by the shell itself: no child
# process that could crash (a crashed `date` once ended a 90 s wait at its first round). No
# function may have a local of that name: the shell's variables are dynamically scoped (dd-net's
# `local up` once got the time instead of its file name).
up_secs() { read -r up_now up_rest < /proc/uptime; up_now=${up_now%.*}; }
state_of() { xl list "$1" 2>/dev/null | awk 'NR == 2 { print $5 }'; }
# crashed NAME: xl lists NAME as crashed (every guest has on_crash = "preserve"). A crashed xl
# prints nothing, which reads as "not crashed".
crashed() { case "$(state_of "$1")" in *c*) return 0 ;; *) return 1 ;; esac; }
# tcg_crash DOMID: Xen reported a triple fault of DOMID with Xen's own code selector (e008) in
# the saved state: the emulator (QEMU TCG's nested SVM) handed the guest the hypervisor's
# registers, which no guest code can cause. Seen for Linux domUs, at boot and mid-run.
tcg_crash() { xl dmesg 2>/dev/null | grep -A6 "d$1v[0-9]* Triple fault" | grep -q 'RIP: *e008:'; }
# boot_crash DOMID NAME: Xen reported a triple fault of DOMID before the domain printed anything
# on its console: its kernel died before setting up its console, so before any PV device (ours
# included) existed. Seen for Linux domUs at boot, with a guest's own registers in the dump.
boot_crash() { [ ! -s "/tmp/xc/guest-$2.log" ] && xl dmesg 2>/dev/null | grep -q "d$1v[0-9]* Triple fault"; }
clean_up() {
    for d in $(xl list 2>/dev/null | awk 'NR > 1 && $1 != "Domain-0" { print $2 }'); do
        xl destroy "$d"
    done
    wait_for 100 no_others
}
dump_file() { echo "=== FILE $1"; cat "$2" 2>/dev/null; echo; echo "=== ENDFILE $1"; }
moved() { v=$(xenstore-read "$1") && [ "$v" != "$2" ]; }
file_moved() { local f; f=$(cat "$1") && [ -n "$f" ] && [ "$f" != "$2" ]; }   # FILE OLD
# vbd_gone DOMID: dom0's blkback let go of the domain's disk (its device and directory gone).
vbd_gone() { ! test -e "/sys/bus/xen-backend/devices/vbd-$1-51712" && ! xenstore-read "/local/domain/0/backend/vbd/$1" >/dev/null 2>&1; }
reported() { xenstore-read "$1" || gone "$2"; }   # KEY NAME: the key exists or the guest is gone
udp_listening() { grep -q ':15B3 ' /proc/net/udp; }   # 5555
post_mortem() {   # domid name: registers of a crashed or stuck guest
    echo "--- xl list"; xl list
    echo "--- xenctx $1"; xenctx "$1" 0 2>&1 | head -40
}

xenstored --pid-file /run/xenstored.pid &
wait_for 600 test -S /run/xenstored/socket || fatal "xenstored socket never appeared"
xen-init-dom0 || fatal "xen-init-dom0 failed"
# xenconsoled runs in the foreground (-i) of a loop that starts it again when it dies: dom0's
# programs segfault now and then under TCG, and without xenconsoled a guest's console ring
# fills, its writes block, and every wait on a console line runs out. A new xenconsoled picks
# up the running domains and appends to their logs.
(
    while :; do
        xenconsoled -i --log=guest --log-dir=/tmp/xc
        echo "NOTE xenconsoled exited (status $?); started again"
        sleep 1
    done
) &
wait_for 300 pidof xenconsoled || fatal "xenconsoled did not start"
echo "=== TOOLS UP"

# create_tries NAME [-p]: xl create [-p] of /tmp/NAME.cfg, up to three times. dom0's tools
# segfault now and then under TCG; xl's domain-monitoring child has died after the domain was
# made (paused or not), so a failed try destroys whatever it left before the next.
create_tries() {
    local n
    for n in 1 2 3; do
        xl create $2 "/tmp/$1.cfg" && return 0
        echo "NOTE xl create $2 $1 failed (try $n of 3)"
        xl destroy "$1" 2>/dev/null
    done
    return 1
}
# create_paused NAME: create_tries with -p (the caller writes devices, then unpauses).
create_paused() { create_tries "$1" -p; }
# create_guest ID NAME: xl create (create_tries); prints the DOMID marker; the domid in $d.
create_guest() {
    if ! create_tries "$2"; then
        dump_file xl.log "/var/log/xen/xl-$2.log"
        return 1
    fi
    d=$(xl domid "$2")
    echo "=== RUN $1 DOMID $d"
}

# ack_xenstore ARCH DOMID NONCE: copy the guest's data/pvh-test to data/pvh-ack.
ack_xenstore() {
    local p=/local/domain/$2/data
    if ! wait_for 600 xenstore-read "$p/pvh-test"; then
        echo "CHECK xenstore $1 FAIL data/pvh-test did not appear within 60 s"
        return
    fi
    local v
    v=$(xenstore-read "$p/pvh-test")
    xenstore-write "$p/pvh-ack" "$v"
    if [ "$v" = "$3" ]; then
        echo "CHECK xenstore $1 PASS dom0 read data/pvh-test = nonce, wrote pvh-ack"
    else
        echo "CHECK xenstore $1 FAIL dom0 read data/pvh-test = '$v', not '$3'"
    fi
}

run_basic() {   # ARCH NONCE
    local a=$1 nonce=$2 name=pvh-basic-$1 id=basic-$1
    echo "=== RUN $id BEGIN"
    if create_guest "$id" "$name"; then
        ack_xenstore "$a" "$d" "$nonce"
        if wait_for 600 gone "$name" && wait_for 100 no_others; then
            echo "CHECK shutdown $a PASS d$d powered itself off and was reaped; only Domain-0 left"
        elif [ "$(state_of "$name" | cut -c4)" = s ]; then
            # The guest's part (SCHEDOP_shutdown/poweroff) worked: Xen has it in the shutdown
            # state. Reaping is the job of xl's per-domain daemon, which on a loaded CI machine
            # was once seen not to act within the wait; record that, then reap it ourselves.
            dump_file xl.log "/var/log/xen/xl-$name.log"
            xl destroy "$d"
            if wait_for 100 no_others; then
                echo "CHECK shutdown $a PASS d$d powered itself off (state s); xl's reaper was late, destroyed by the harness"
            else
                echo "CHECK shutdown $a FAIL d$d shut down but could not be destroyed: $(others | tr '\n' ';')"
            fi
        else
            echo "CHECK shutdown $a FAIL domain $d still listed (state '$(state_of "$name")'): $(others | tr '\n' ';')"
            post_mortem "$d" "$name"
            clean_up
        fi
        if wait_for 50 grep -q "nonce=$nonce" "/tmp/xc/guest-$name.log"; then
            echo "CHECK console $a PASS xenconsoled logged the guest's line with the nonce"
        else
            echo "CHECK console $a FAIL no line with the nonce in xenconsoled's log"
        fi
        dump_file guest-console.log "/tmp/xc/guest-$name.log"
    else
        echo "CHECK create $a FAIL xl create $name failed"
    fi
    echo "=== RUN $id END"
}

run_busy() {    # ARCH NONCE
    local a=$1 nonce=$2 name=pvh-busy-$1 id=busy-$1
    echo "=== RUN $id BEGIN"
    if create_guest "$id" "$name"; then
        local p=/local/domain/$d/data busy= st=/sys/bus/xen-backend/devices/vbd-$d-51712
        ack_xenstore "$a" "$d" "$nonce" | sed 's/^CHECK xenstore/NOTE xenstore/'
        # The guest writes data/pvh-busy once its disk is connected and its I/O loop runs.
        wait_for 900 xenstore-read "$p/pvh-busy" && busy=$(xenstore-read "$p/pvh-busy")
        if [ "$busy" != blk ]; then
            echo "CHECK destroy $a FAIL the guest's disk I/O did not start: '$(echo "$busy" | head -c 60)'"
            post_mortem "$d" "$name"
            clean_up
        else
            local c1 c2 w1 w2
            c1=$(xenstore-read "$p/pvh-counter")
            w1=$(cat "$st/statistics/wr_req" 2>/dev/null)
            wait_for 100 moved "$p/pvh-counter" "$c1"
            wait_for 100 file_moved "$st/statistics/wr_req" "$w1"
            c2=$(xenstore-read "$p/pvh-counter")
            w2=$(cat "$st/statistics/wr_req" 2>/dev/null)
            local how="xl destroy"
            if ! xl destroy "$name"; then
                # xl itself has crashed here under TCG (a segfault in ld.so); try once more.
                how="xl destroy (retried)"
                xl destroy "$name"
            fi
            if ! gone "$name" && ! wait_for 100 gone "$name"; then
                echo "CHECK destroy $a FAIL $how did not remove $name"
                clean_up
            elif ! { wait_for 100 no_others && wait_for 100 vbd_gone "$d"; }; then
                echo "CHECK destroy $a FAIL after xl destroy: $(others | tr '\n' ';') vbd $(ls -d "$st" 2>/dev/null)"
                clean_up
            elif [ "$w1" = "$w2" ] || [ -z "$w2" ]; then
                echo "CHECK destroy $a FAIL blkback's wr_req did not move ('$w1' -> '$w2'): not mid-I/O"
            else
                echo "CHECK destroy $a PASS $how mid-disk-I/O (rounds $c1->$c2, wr_req $w1->$w2); vbd gone; only Domain-0 left"
            fi
        fi
        dump_file guest-console.log "/tmp/xc/guest-$name.log"
    else
        echo "CHECK create $a FAIL xl create $name failed"
    fi
    echo "=== RUN $id END"
}

run_blk() {     # ARCH NONCE RAMDISK
    local a=$1 nonce=$2 ram=$3 name=pvh-blk-$1 id=blk-$1
    echo "=== RUN $id BEGIN"
    if create_guest "$id" "$name"; then
        local p=/local/domain/$d/data vbd=/local/domain/$d/device/vbd v2=
        ack_xenstore "$a" "$d" "$nonce" | sed 's/^CHECK xenstore/NOTE xenstore/'
        if wait_for 1200 reported "$p/pvh-blk" "$name" && xenstore-read "$p/pvh-blk"; then
            {
                for v in $(xenstore-list "$vbd"); do
                    echo "--- frontend $vbd/$v"
                    xenstore-ls -f "$vbd/$v"
                    echo "--- backend"
                    xenstore-ls -f "$(xenstore-read "$vbd/$v/backend")"
                done
            } > "/tmp/blk-$a.txt" 2>&1
            xenstore-write "$p/pvh-blk-ack" 1
            # Detach and attach again while the guest runs.
            local dev
            dev=$(xenstore-list "$vbd" | head -n 1)
            if xl block-detach "$d" "$dev"; then
                wait_for 300 sh -c "! xenstore-read $vbd/$dev/state"
                if xl block-attach "$d" "format=raw, vdev=xvda, access=rw, script=/etc/xen/scripts/pvh-block, target=$ram"; then
                    if wait_for 1200 reported "$p/pvh-blk2" "$name"; then
                        v2=$(xenstore-read "$p/pvh-blk2")
                        xenstore-write "$p/pvh-blk2-ack" 1
                    fi
                else
                    echo "NOTE blk $a xl block-attach failed"
                fi
            else
                echo "NOTE blk $a xl block-detach $d $dev failed"
            fi
        else
            echo "CHECK blk $a FAIL no data/pvh-blk from the guest"
            post_mortem "$d" "$name"
        fi
        if ! { wait_for 600 gone "$name" && wait_for 100 no_others; }; then
            echo "NOTE blk $a guest still present: $(others | tr '\n' ';')"
            post_mortem "$d" "$name"
            clean_up
        fi
        echo 3 > /proc/sys/vm/drop_caches
        local n last n2
        n=$(dd if="$ram" bs=512 count=128 2>/dev/null | grep -c "^PVHBLK $nonce ")
        last=$(dd if="$ram" bs=512 skip=127 count=1 2>/dev/null | head -n 1)
        if [ "$n" = 128 ] && [ "$last" = "PVHBLK $nonce 000127" ]; then
            echo "CHECK blk $a PASS dom0 read the guest's 128 sectors from $ram (xen-blkback)"
        else
            echo "CHECK blk $a FAIL $ram: $n of 128 sectors; sector 127: '$last'"
        fi
        n2=$(dd if="$ram" bs=512 count=256 2>/dev/null | grep -c "^PVHBLK $nonce ")
        last=$(dd if="$ram" bs=512 skip=255 count=1 2>/dev/null | head -n 1)
        case "$v2" in
        ok:*)
            if [ "$n2" = 256 ] && [ "$last" = "PVHBLK $nonce 000255" ]; then
                echo "CHECK blk-reattach $a PASS after detach+attach: 256 sectors on $ram"
            else
                echo "CHECK blk-reattach $a FAIL $ram: $n2 of 256 sectors; 255: '$last'"
            fi
            ;;
        *)
            echo "CHECK blk-reattach $a FAIL guest: '$(echo "$v2" | head -c 60)'"
            ;;
        esac
        dump_file blk-xenstore.txt "/tmp/blk-$a.txt"
        dump_file guest-console.log "/tmp/xc/guest-$name.log"
    else
        echo "CHECK create $a FAIL xl create $name failed"
    fi
    echo "=== RUN $id END"
}

run_net() {     # ARCH NONCE
    local a=$1 nonce=$2 name=pvh-net-$1 id=net-$1 mac=00:16:3e:5a:00:0$3
    echo "=== RUN $id BEGIN"
    # dom0's UDP echo: the guest's datagrams are logged and sent back to it.
    socat -T 300 UDP4-RECVFROM:5555,bind=10.99.0.1,reuseaddr,fork SYSTEM:"tee -a /tmp/udp-$a.txt" &
    local sp=$!
    wait_for 300 udp_listening || echo "NOTE net $a socat is not listening on UDP 5555"
    if create_guest "$id" "$name"; then
        local p=/local/domain/$d/data vif=/local/domain/$d/device/vif v
        ack_xenstore "$a" "$d" "$nonce" | sed 's/^CHECK xenstore/NOTE xenstore/'
        if wait_for 1200 reported "$p/pvh-net" "$name" && v=$(xenstore-read "$p/pvh-net"); then
            local pinged=no
            ping -c 3 -W 5 10.99.0.2 > "/tmp/ping-$a.txt" 2>&1 && pinged=yes
            {
                cat "/tmp/ping-$a.txt"
                ip -s link
                for f in $(xenstore-list "$vif"); do
                    echo "--- frontend $vif/$f"
                    xenstore-ls -f "$vif/$f"
                    echo "--- backend"
                    xenstore-ls -f "$(xenstore-read "$vif/$f/backend")"
                done
            } > "/tmp/net-$a.txt" 2>&1
            xenstore-write "$p/pvh-net-ack" 1
            case "$v" in
            FAIL*) echo "CHECK net $a FAIL guest: $(echo "$v" | head -c 60)" ;;
            *)
                if [ "$pinged" = yes ] && grep -q "pvh-net $nonce" "/tmp/udp-$a.txt"; then
                    echo "CHECK net $a PASS dom0 got the UDP datagram; 3/3 pings to 10.99.0.2 answered"
                else
                    echo "CHECK net $a FAIL udp '$(head -c 40 "/tmp/udp-$a.txt" 2>/dev/null)' ping $pinged"
                fi
                ;;
            esac
            # Detach and attach the vif again while the guest runs.
            local dev v2=
            dev=$(xenstore-list "$vif" | head -n 1)
            if xl network-detach "$d" "$dev"; then
                wait_for 300 sh -c "! xenstore-read $vif/$dev/state"
                rm -f "/tmp/udp-$a.txt"
                if xl network-attach "$d" "mac=$mac" bridge=xenbr0 script=/etc/xen/scripts/pvh-vif; then
                    if wait_for 1200 reported "$p/pvh-net2" "$name"; then
                        v2=$(xenstore-read "$p/pvh-net2")
                        pinged=no
                        ping -c 3 -W 5 10.99.0.2 >> "/tmp/net-$a.txt" 2>&1 && pinged=yes
                        xenstore-write "$p/pvh-net2-ack" 1
                    fi
                else
                    echo "NOTE net $a xl network-attach failed"
                fi
            else
                echo "NOTE net $a xl network-detach $d $dev failed"
            fi
            case "$v2" in
            ok:*)
                if [ "$pinged" = yes ] && grep -q "pvh-net $nonce" "/tmp/udp-$a.txt"; then
                    echo "CHECK net-reattach $a PASS after detach+attach: UDP datagram again, 3/3 pings"
                else
                    echo "CHECK net-reattach $a FAIL udp '$(head -c 40 "/tmp/udp-$a.txt" 2>/dev/null)' ping $pinged"
                fi
                ;;
            *) echo "CHECK net-reattach $a FAIL guest: '$(echo "$v2" | head -c 60)'" ;;
            esac
        else
            echo "CHECK net $a FAIL no data/pvh-net from the guest; udp '$(head -c 40 "/tmp/udp-$a.txt" 2>/dev/null)'"
            post_mortem "$d" "$name"
        fi
        if ! { wait_for 600 gone "$name" && wait_for 100 no_others; }; then
            echo "NOTE net $a guest still present: $(others | tr '\n' ';')"
            post_mortem "$d" "$name"
            clean_up
        fi
        dump_file net-dom0.txt "/tmp/net-$a.txt"
        dump_file guest-console.log "/tmp/xc/guest-$name.log"
    else
        echo "CHECK create $a FAIL xl create $name failed"
    fi
    kill "$sp" 2>/dev/null
    wait "$sp" 2>/dev/null
    echo "=== RUN $id END"
}
"#;

/// dom0's functions for the driver-domain run (issue 8): the Linux domU, the xenstore nodes
/// of a device served by the driver domain, and the run itself. Other driver-domain
/// scenarios add their step to `run_dd` (one `case` line) and their function here.
const DD_FUNCTIONS: &str = r#"
# ---- Driver domain ------------------------------------------------------------------------
# is_value KEY VALUE: the xenstore node KEY holds VALUE.
is_value() { [ "$(xenstore-read "$1" 2>/dev/null)" = "$2" ]; }
# wait_secs SECONDS CMD...: run CMD every 0.2 s until it succeeds, for at most SECONDS of wall
# time (wait_for counts rounds, which stretch when each CMD is slow under TCG), read by up_secs.
wait_secs() {
    local end ws_round=0
    up_secs
    end=$((up_now + $1))
    shift
    while ! "$@" >/dev/null 2>&1; do
        up_secs
        [ "$up_now" -lt "$end" ] || return 1
        ws_round=$((ws_round + 1))
        watched_crash "$ws_round" && return 1
        sleep 0.2
    done
}

# domu_start NAME SCRIPT NONCE [MEMORY [VCPUS]]: creates the Linux PVH domU NAME paused, running
# /scripts/SCRIPT of its image; its domid in $d. Unpause it with `xl unpause` once its devices
# are written.
domu_cfg() {
    cat > "/tmp/$1.cfg" <<EOC
name = "$1"
type = "pvh"
kernel = "/guests/linux-vmlinuz"
ramdisk = "/guests/linux-domu.cpio"
cmdline = "console=hvc0 loglevel=6 script=$2 nonce=$3"
memory = ${4:-192}
vcpus = ${5:-2}
tsc_mode = "native"
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "preserve"
EOC
}
domu_start() {
    local n=0
    # dom0's busybox tools segfault now and then under TCG (a `cat` once left the config
    # without its name): check what was written; create_paused tries xl create three times.
    while ! grep -q "^name = \"$1\"" "/tmp/$1.cfg" 2>/dev/null && [ "$n" -lt 3 ]; do
        domu_cfg "$@"
        n=$((n + 1))
    done
    if ! create_paused "$1"; then
        dump_file xl.log "/var/log/xen/xl-$1.log"
        return 1
    fi
    d=$(xl domid "$1")
}
# domu_log NAME: the domU's console so far (xenconsoled's log, without CRs).
domu_log() { tr -d '\r' < "/tmp/xc/guest-$1.log" 2>/dev/null; }
# domu_said NAME: for a NOTE on a stalled wait: the domU's last two console lines, the size
# of its log and xenconsoled's pid (a guest whose console is not drained stops at its next write).
domu_said() {
    echo "xenconsoled '$(pidof xenconsoled)', log $(wc -c < "/tmp/xc/guest-$1.log" 2>/dev/null) B: $(domu_log "$1" | tail -n 2 | tr '\n' '|' | head -c 100)"
}
# domu_done NAME DOMID: the domU printed DOMU DONE or its xenstore home is gone (cheaper than
# asking xl every round).
domu_done() { domu_log "$1" | grep -q '^DOMU DONE' || home_gone "$2"; }
# domu_wait NAME SECONDS: until the domU printed DOMU DONE (or is gone).
domu_wait() { wait_secs "$2" domu_done "$1" "$(xl domid "$1" 2>/dev/null)"; }
# domu_verdict NAME SCENARIO ARCH: the domU's `DOMU SCENARIO PASS|FAIL ...` line as a CHECK.
domu_verdict() {
    local l n=0
    # dom0's busybox tools segfault now and then under TCG: an empty result is retried.
    while [ -z "$l" ] && [ "$n" -lt 3 ]; do
        l=$(domu_log "$1" | grep "^DOMU $2 " | tail -n 1)
        n=$((n + 1))
    done
    case "$l" in
    "DOMU $2 PASS "*) echo "CHECK $2 $3 PASS $(echo "${l#DOMU $2 PASS }" | head -c 90)" ;;
    "DOMU $2 FAIL "*) echo "CHECK $2 $3 FAIL domU: $(echo "${l#DOMU $2 FAIL }" | head -c 84)" ;;
    *) echo "CHECK $2 $3 FAIL no verdict from domU $1: $(domu_log "$1" | tail -n 1 | head -c 60)" ;;
    esac
}
# home_gone DOMID: the domain's xenstore home is gone (xl removes it when the domain dies).
home_gone() { fails_cleanly xenstore-exists "/local/domain/$1"; }
# domu_finish NAME: waits for the domU to power off (destroys it after 30 s).
domu_finish() {
    local id
    if [ "$1" = "$watch_domu" ]; then
        # Xen destroys a domU that triple-faulted (as a reboot): ask its log by the domid.
        if tcg_crash "$watch_domid" || boot_crash "$watch_domid" "$1"; then
            echo "NOTE domU $1 (d$watch_domid) crashed with Xen's own registers or before its console (a QEMU TCG fault)"
            tcg_crashed=yes
        fi
        watch_domu= watch_domid=
    fi
    id=$(xl domid "$1" 2>/dev/null) || return 0
    if tcg_crash "$id"; then
        echo "NOTE domU $1 (d$id) crashed with Xen's own registers (a QEMU TCG fault)"
        tcg_crashed=yes
    fi
    if crashed "$1"; then
        xl destroy "$1"
        wait_secs 10 home_gone "$id"
    elif ! wait_secs 30 home_gone "$id"; then
        echo "NOTE domU $1 did not power off; destroyed"
        xl destroy "$1"
        wait_secs 10 home_gone "$id"
    fi
}

# dd_attach_vbd FE DD DEVID PARAMS [MODE]: the nodes `xl block-attach` writes for a disk whose
# backend runs in driver domain DD, for frontend domain FE (created paused). The frontend
# directory is owned by FE and readable by DD; the backend directory is owned by DD and
# readable by FE. Each directory is created with its permissions first, so every node
# written into it inherits them (xenstored copies the parent's permissions to a new node);
# the backend's content is then written in one transaction (one xenstore-write), so the
# driver domain's bus sees a complete device.
dd_attach_vbd() {
    local fe=$1 dd=$2 id=$3 params=$4 mode=${5:-w}
    local fp=/local/domain/$1/device/vbd/$3 bp=/local/domain/$2/backend/vbd/$1/$3
    xenstore-write "$fp" "" && xenstore-chmod "$fp" "n$fe" "r$dd" &&
        xenstore-write "$fp/backend" "$bp" "$fp/backend-id" "$dd" "$fp/virtual-device" "$id" \
            "$fp/device-type" disk "$fp/state" 1 &&
        xenstore-write "$bp" "" && xenstore-chmod "$bp" "n$dd" "r$fe" &&
        xenstore-write "$bp/frontend" "$fp" "$bp/frontend-id" "$fe" "$bp/params" "$params" \
            "$bp/mode" "$mode" "$bp/type" ram "$bp/device-type" disk "$bp/online" 1 \
            "$bp/removable" 0 "$bp/bootable" 1 "$bp/dev" xvda "$bp/state" 1
}
# dd_attach_vbd_live FE DD DEVID PARAMS: dd_attach_vbd for a frontend that is running: both
# directories are created (empty: neither side probes a directory without a state) and
# chmod'ed first, then every node of both goes in one xenstore-write (one transaction), as
# libxl does. A running Linux probes as soon as its frontend nodes exist, and fails (-ENOENT)
# when the backend directory they name is not there yet.
dd_attach_vbd_live() {
    local fe=$1 dd=$2 id=$3 params=$4
    local fp=/local/domain/$1/device/vbd/$3 bp=/local/domain/$2/backend/vbd/$1/$3
    xenstore-write "$fp" "" && xenstore-chmod "$fp" "n$fe" "r$dd" &&
        xenstore-write "$bp" "" && xenstore-chmod "$bp" "n$dd" "r$fe" &&
        xenstore-write "$bp/frontend" "$fp" "$bp/frontend-id" "$fe" "$bp/params" "$params" \
            "$bp/mode" w "$bp/type" ram "$bp/device-type" disk "$bp/online" 1 \
            "$bp/removable" 0 "$bp/bootable" 1 "$bp/dev" xvda "$bp/state" 1 \
            "$fp/backend" "$bp" "$fp/backend-id" "$dd" "$fp/virtual-device" "$id" \
            "$fp/device-type" disk "$fp/state" 1
}
# dd_detach_vbd FE DD DEVID: removes both directories (after the frontend is gone).
dd_detach_vbd() {
    xenstore-rm "/local/domain/$2/backend/vbd/$1/$3" 2>/dev/null
    xenstore-rm "/local/domain/$1/device/vbd/$3" 2>/dev/null
}
# dd_attach_vif FE DD DEVID MAC: the nodes `xl network-attach` writes for a vif whose backend
# runs in driver domain DD, for frontend domain FE (created paused); ownership and order as
# dd_attach_vbd. The backend's feature-* keys are not written here: the driver domain's
# netback publishes its own offer when it probes the device.
dd_attach_vif() {
    local fe=$1 dd=$2 id=$3 mac=$4
    local fp=/local/domain/$1/device/vif/$3 bp=/local/domain/$2/backend/vif/$1/$3
    xenstore-write "$fp" "" && xenstore-chmod "$fp" "n$fe" "r$dd" &&
        xenstore-write "$fp/backend" "$bp" "$fp/backend-id" "$dd" "$fp/handle" "$id" \
            "$fp/mac" "$mac" "$fp/state" 1 &&
        xenstore-write "$bp" "" && xenstore-chmod "$bp" "n$dd" "r$fe" &&
        xenstore-write "$bp/frontend" "$fp" "$bp/frontend-id" "$fe" "$bp/handle" "$id" \
            "$bp/mac" "$mac" "$bp/type" vif "$bp/online" 1 "$bp/state" 1
}
# dd_attach_vif_live FE DD DEVID MAC: dd_attach_vif for a running frontend: both directories
# created and chmod'ed empty first, then all nodes of both in one transaction (see
# dd_attach_vbd_live).
dd_attach_vif_live() {
    local fe=$1 dd=$2 id=$3 mac=$4
    local fp=/local/domain/$1/device/vif/$3 bp=/local/domain/$2/backend/vif/$1/$3
    xenstore-write "$fp" "" && xenstore-chmod "$fp" "n$fe" "r$dd" &&
        xenstore-write "$bp" "" && xenstore-chmod "$bp" "n$dd" "r$fe" &&
        xenstore-write "$bp/frontend" "$fp" "$bp/frontend-id" "$fe" "$bp/handle" "$id" \
            "$bp/mac" "$mac" "$bp/type" vif "$bp/online" 1 "$bp/state" 1 \
            "$fp/backend" "$bp" "$fp/backend-id" "$dd" "$fp/handle" "$id" \
            "$fp/mac" "$mac" "$fp/state" 1
}
# dd_detach_vif FE DD DEVID: removes both directories (after the frontend is gone).
dd_detach_vif() {
    xenstore-rm "/local/domain/$2/backend/vif/$1/$3" 2>/dev/null
    xenstore-rm "/local/domain/$1/device/vif/$3" 2>/dev/null
}
# pid_gone PID: the process has exited.
pid_gone() { ! kill -0 "$1" 2>/dev/null; }
# ddnet_done NAME: the domU printed DOMU DONE, or xl says it is gone (`gone` asks again when xl
# crashed).
ddnet_done() { domu_log "$1" | grep -q '^DOMU DONE' || gone "$1"; }
# ddnet_again CMD...: CMD's output, CMD run up to 3 times until it prints something (a process
# of its pipeline may segfault under TCG and leave it empty).
ddnet_again() {
    local i out
    for i in 1 2 3; do
        out=$("$@") && [ -n "$out" ] && break
    done
    echo "$out"
}
# ddnet_line NAME TAG: the domU's last line starting with TAG; ddnet_field: its 2nd word.
ddnet_line() { domu_log "$1" | grep "^$2 " | tail -n 1; }
ddnet_field() { ddnet_line "$1" "$2" | cut -d' ' -f2; }
ddnet_sha() { sha256sum < "$1" | cut -c1-64; }
# ddnet_want2 NAME: the domU asks for its second vif (or is done).
ddnet_want2() { domu_log "$1" | grep -q -e '^NET2 WANT' -e '^DOMU DONE'; }

# dd_net_linux ARCH DD NONCE: scenario dd-net. dom0 listens on 7001 (the domU's upload,
# saved) and 7002 (3 MiB of random data, the domU's download); the Linux domU (10.99.0.3,
# 2 vCPUs so its netfront can use 2 queues) reaches 10.99.0.1 through the driver domain,
# whose uplink vif is on xenbr0.
dd_net_linux() {
    local a=$1 dd=$2 n=pvh-ddnet-$1 fe bp lp sp got want sum back l m=1
    local up=/tmp/ddnet-up-$1.bin down=/tmp/ddnet-down-$1.bin hold=/tmp/ddnet-hold-$1
    [ "$a" = x86_64 ] || m=2
    ip neigh flush dev xenbr0 2>/dev/null
    head -c 3145728 /dev/urandom > "$down"
    rm -f "$up" "$hold"
    mkfifo "$hold"
    exec 4<>"$hold"
    nc -l -p 7001 < "$hold" > "$up" &
    lp=$!
    nc -l -p 7002 < "$down" > /dev/null &
    sp=$!
    if ! domu_start "$n" dd-net "$3" 192 2; then
        echo "CHECK dd-net $a FAIL xl create -p of the Linux domU failed"
        kill "$lp" "$sp" 2>/dev/null
        exec 4>&-
        return
    fi
    fe=$d
    watch_domu=$n watch_domid=$d
    bp=/local/domain/$dd/backend/vif/$fe/0
    echo "NOTE dd-net $a Linux PVH domU d$fe, driver domain d$dd"
    dd_attach_vif "$fe" "$dd" 0 "00:16:3e:5a:02:0$m" || echo "NOTE dd-net $a writing the vif nodes failed"
    xl unpause "$fe"
    if wait_for 1200 is_value "$bp/state" 4; then
        { xenstore-ls -f "/local/domain/$fe/device/vif"; xenstore-ls -f "$bp"; } > "/tmp/ddnet-$a.txt" 2>&1
    else
        echo "NOTE dd-net $a backend state $(xenstore-read "$bp/state" 2>/dev/null) after 120 s; $(domu_said "$n")"
    fi
    # A second vif (handle 1) for the same domU, attached while it runs (after its transfers,
    # when it prints NET2 WANT): 10.99.1.3 in the domU, 10.99.1.1 on xenbr0; both vifs are
    # then served at once by the driver domain's bridge (domu.rs, net_second).
    if wait_secs 600 ddnet_want2 "$n" && ! domu_log "$n" | grep -q '^DOMU DONE'; then
        ip addr add 10.99.1.1/24 dev xenbr0 2>/dev/null
        dd_attach_vif_live "$fe" "$dd" 1 "00:16:3e:5a:03:0$m" || echo "NOTE dd-net $a writing the second vif failed"
    else
        echo "NOTE dd-net $a the domU did not ask for a second vif; $(domu_said "$n")"
    fi
    domu_wait "$n" 240
    # The listeners stay until the domU is done, also when domu_wait gave up early (its
    # "gone" test, xenstore-exists, is a dom0 process, which has segfaulted under TCG); here
    # the wait is by rounds and asks xl.
    wait_for 1200 ddnet_done "$n"
    wait_for 300 pid_gone "$lp"
    kill "$lp" "$sp" 2>/dev/null
    exec 4>&-
    l=$(ddnet_again ddnet_line "$n" "DOMU dd-net")
    got=$(ddnet_again ddnet_sha "$up")
    want=$(ddnet_again ddnet_field "$n" NETUP)
    sum=$(ddnet_again ddnet_sha "$down")
    back=$(ddnet_again ddnet_line "$n" NETDOWN)
    case "$l" in
    "DOMU dd-net PASS "*)
        if [ -z "$got" ] || [ "$got" != "$want" ]; then
            echo "CHECK dd-net $a FAIL upload: dom0 got $(wc -c < "$up") B sha $(echo "$got" | cut -c1-8), domU sent $(echo "$want" | cut -c1-8)"
        elif [ "$back" != "NETDOWN $sum 3145728" ]; then
            echo "CHECK dd-net $a FAIL download: domU got $(echo "$back" | cut -c1-50)"
        else
            echo "CHECK dd-net $a PASS sha256 ok both ways; $(echo "${l#DOMU dd-net PASS }" | head -c 70)"
        fi
        ;;
    *) domu_verdict "$n" dd-net "$a" ;;
    esac
    domu_finish "$n"
    dd_detach_vif "$fe" "$dd" 0
    dd_detach_vif "$fe" "$dd" 1
    ip addr del 10.99.1.1/24 dev xenbr0 2>/dev/null
    dd_report "$dd" dd-net vif "$fe" 0 -
    dump_file dd-net-xenstore.txt "/tmp/ddnet-$a.txt"
    dump_file dd-net-domu.log "/tmp/xc/guest-$n.log"
}

# dd_report DD SCENARIO TYPE FE DEVID EXPECT: asks the driver domain for its RESULT line about
# backend TYPE/FE/DEVID (negotiated features, counters; EXPECT: the protocol it must have
# negotiated, or -) and waits for it to confirm (data/dd-report-done = the request).
dd_report() {
    local p=/local/domain/$1/data req="$2 $3 $4 $5 $6"
    xenstore-write "$p/dd-report" "$req"
    wait_secs 30 is_value "$p/dd-report-done" "$req" ||
        echo "NOTE $2 the driver domain did not answer the report request"
}

# ddblk_unbound FP BP NAME: both ends of the vbd are Closed (the domU unbound its blkfront),
# or the domU is done (it never got that far).
ddblk_unbound() {
    { is_value "$1/state" 6 && is_value "$2/state" 6; } || domu_log "$3" | grep -q '^DOMU DONE'
}
# ddblk_devgone NAME: the domU says its xenbus device of the vbd is gone (or it is done).
ddblk_devgone() { domu_log "$1" | grep -q -e '^BLK DEVGONE' -e '^DOMU DONE'; }
# dd_blk_linux ARCH DD NONCE: scenario dd-blk. The domU's memory (the harness puts in
# domu.rs's constant for it) holds the bounce pages of xen-blkfront's module arguments.
dd_blk_linux() {
    local a=$1 dd=$2 n=pvh-ddblk-$1 fe bp fp
    if ! domu_start "$n" dd-blk "$3" DD_BLK_MEMORY; then
        echo "CHECK dd-blk $a FAIL xl create -p of the Linux domU failed"
        return
    fi
    fe=$d
    watch_domu=$n watch_domid=$d
    bp=/local/domain/$dd/backend/vbd/$fe/51712
    fp=/local/domain/$fe/device/vbd/51712
    echo "NOTE dd-blk $a Linux PVH domU d$fe, driver domain d$dd"
    dd_attach_vbd "$fe" "$dd" 51712 ram:16M || echo "NOTE dd-blk $a writing the vbd nodes failed"
    xl unpause "$fe"
    if wait_secs 300 is_value "$bp/state" 4; then
        { xenstore-ls -f "/local/domain/$fe/device/vbd"; xenstore-ls -f "$bp"; } > "/tmp/ddblk-$a.txt" 2>&1
    else
        echo "NOTE dd-blk $a backend state $(xenstore-read "$bp/state" 2>/dev/null) after 300 s; $(domu_said "$n")"
    fi
    # The reconnect (domu.rs, blk_reconnect): once the domU has unbound its blkfront and both
    # ends are Closed, the device is removed and, when Linux has dropped it (BLK DEVGONE),
    # written again, as xl block-detach and block-attach would.
    if wait_secs 600 ddblk_unbound "$fp" "$bp" "$n" && ! domu_log "$n" | grep -q '^DOMU DONE'; then
        dd_detach_vbd "$fe" "$dd" 51712
        wait_secs 120 ddblk_devgone "$n" || echo "NOTE dd-blk $a no BLK DEVGONE from the domU within 120 s"
        dd_attach_vbd_live "$fe" "$dd" 51712 ram:16M || echo "NOTE dd-blk $a writing the vbd nodes again failed"
        wait_secs 300 is_value "$bp/state" 4 ||
            echo "NOTE dd-blk $a backend state $(xenstore-read "$bp/state" 2>/dev/null) 300 s after the re-attach"
    else
        echo "NOTE dd-blk $a the domU did not unbind its vbd: front $(xenstore-read "$fp/state" 2>/dev/null) back $(xenstore-read "$bp/state" 2>/dev/null)"
    fi
    domu_wait "$n" 240
    domu_verdict "$n" dd-blk "$a"
    domu_finish "$n"
    dd_detach_vbd "$fe" "$dd" 51712
    dd_report "$dd" dd-blk vbd "$fe" 51712 x86_64-abi
    dump_file dd-blk-xenstore.txt "/tmp/ddblk-$a.txt"
    dump_file dd-blk-domu.log "/tmp/xc/guest-$n.log"
}

# dd_blk_abi32 ARCH DD NONCE: scenario dd-blk-abi32, our i686 PVH guest's blkfront against
# the driver domain's blkback (x86_32-abi ring layout).
dd_blk_abi32() {
    local a=$1 dd=$2 n=pvh-ddfe32-$1 fe v
    cat > "/tmp/$n.cfg" <<EOC
name = "$n"
type = "pvh"
kernel = "/guests/pvh-guest-i686"
cmdline = "run=blk name=$n nonce=$3 blk=once"
memory = 64
vcpus = 1
tsc_mode = "native"
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "preserve"
EOC
    if ! create_paused "$n"; then
        dump_file xl.log "/var/log/xen/xl-$n.log"
        echo "CHECK dd-blk-abi32 $a FAIL xl create -p $n failed"
        return
    fi
    fe=$(xl domid "$n")
    echo "NOTE dd-blk-abi32 $a i686 frontend d$fe, driver domain d$dd"
    dd_attach_vbd "$fe" "$dd" 51712 ram:16M || echo "NOTE dd-blk-abi32 $a writing the vbd nodes failed"
    xl unpause "$fe"
    ack_xenstore i686 "$fe" "$3" | sed 's/^CHECK xenstore/NOTE xenstore/'
    local p=/local/domain/$fe/data
    if wait_secs 150 reported "$p/pvh-blk" "$n" && v=$(xenstore-read "$p/pvh-blk"); then
        xenstore-write "$p/pvh-blk-ack" 1
        case "$v" in
        FAIL*) echo "CHECK dd-blk-abi32 $a FAIL frontend: $(echo "$v" | head -c 80)" ;;
        *"abi X86_32 "*) echo "CHECK dd-blk-abi32 $a PASS i686 blkfront wrote+read 64 KiB via d$dd: $(echo "$v" | head -c 50)" ;;
        *) echo "CHECK dd-blk-abi32 $a FAIL not x86_32: $(echo "$v" | head -c 80)" ;;
        esac
    else
        echo "CHECK dd-blk-abi32 $a FAIL no data/pvh-blk from the i686 frontend"
        post_mortem "$fe" "$n"
    fi
    domu_finish "$n"
    dd_detach_vbd "$fe" "$dd" 51712
    dd_report "$dd" dd-blk-abi32 vbd "$fe" 51712 x86_32-abi
}

# run_dd ARCH NONCE "SCENARIOS": the driver domain (our PVH guest with run=dd) and, one after
# the other, the frontends of the selected scenarios; then data/dd-stop and the driver
# domain powers off.
# dd_step FUNCTION ARCH DD NONCE: one driver-domain scenario, run again (up to three runs) when
# one of its domains crashed with Xen's own registers (tcg_crash: a fault of the emulator, which
# no guest and no backend can cause; twice in a row it has hit a Linux domU at boot); the last
# run's CHECK and RESULT lines are the verdict. Earlier runs' consoles are kept (.try1, .try2).
dd_step() {
    local try f
    for try in 1 2 3; do
        tcg_crashed=no
        "$@"
        watch_domu= watch_domid=
        [ "$tcg_crashed" = yes ] && [ "$try" -lt 3 ] || return 0
        echo "NOTE dd $2 $1: a domain crashed under QEMU TCG (above); the scenario runs again"
        for f in /tmp/xc/guest-pvh-dd?*-"$2".log; do
            mv "$f" "$f.try$try" 2>/dev/null
        done
    done
}
run_dd() {
    local a=$1 nonce=$2 scen=" $3 " name=pvh-dd-$1 id=dd-$1
    echo "=== RUN $id BEGIN"
    if create_guest "$id" "$name"; then
        local dd=$d p=/local/domain/$d/data
        ack_xenstore "$a" "$dd" "$nonce" | sed 's/^CHECK xenstore/NOTE xenstore/'
        if wait_for 600 reported "$p/dd-ready" "$name" && xenstore-read "$p/dd-ready" >/dev/null; then
            case "$scen" in *" dd-blk "*) dd_step dd_blk_linux "$a" "$dd" "$nonce" ;; esac
            case "$scen" in *" dd-blk-abi32 "*) dd_step dd_blk_abi32 "$a" "$dd" "$nonce" ;; esac
            case "$scen" in *" dd-hostile "*) dd_step dd_hostile "$a" "$dd" "$nonce" ;; esac
            case "$scen" in *" dd-net "*) dd_step dd_net_linux "$a" "$dd" "$nonce" ;; esac
            case "$scen" in *" bench "*) bench_run "$a" "$dd" "$nonce" ;; esac
            xenstore-write "$p/dd-stop" 1
        else
            echo "NOTE dd $a the driver domain never wrote data/dd-ready"
            post_mortem "$dd" "$name"
        fi
        if ! { wait_for 300 gone "$name" && wait_for 100 no_others; }; then
            echo "NOTE dd $a domains still present: $(others | tr '\n' ';')"
            post_mortem "$dd" "$name"
            clean_up
        fi
        dump_file guest-console.log "/tmp/xc/guest-$name.log"
    else
        echo "CHECK create $a FAIL xl create $name failed"
    fi
    echo "=== RUN $id END"
}
"#;

/// The backends the driver domain runs (its `dd=` option).
pub const DD_BACKENDS: &[&str] = &["blk", "net"];

/// The whole `/init`; `scenarios` are the selected ones (a driver-domain run does only the
/// steps they need).
pub fn init_script(runs: &[Run], scenarios: &[Scenario]) -> String {
    let mut s = PRELUDE.replace(
        "for m in MODULES;",
        &format!("for m in {};", MODULES.join(" ")),
    );
    s.push_str(&DD_FUNCTIONS.replace("DD_BLK_MEMORY", &crate::domu::DD_BLK_MEMORY_MIB.to_string()));
    s.push_str(crate::hostile::DOM0_FUNCTIONS);
    s.push_str(&crate::bench::dom0_functions());
    for run in runs {
        let _ = writeln!(
            s,
            "cat > /tmp/{}.cfg <<'EOC'\n{}EOC",
            run.domain_name(),
            guest_config(run)
        );
        let call = match (run.kind, run.arch) {
            (RunKind::Basic, a) => format!("run_basic {a} {}", run.nonce),
            (RunKind::Busy, a) => format!("run_busy {a} {}", run.nonce),
            (RunKind::Blk, Arch::X86_64) => format!("run_blk x86_64 {} /dev/ram0", run.nonce),
            (RunKind::Blk, Arch::I686) => format!("run_blk i686 {} /dev/ram1", run.nonce),
            (RunKind::Net, Arch::X86_64) => format!("run_net x86_64 {} 1", run.nonce),
            (RunKind::Net, Arch::I686) => format!("run_net i686 {} 2", run.nonce),
            (RunKind::Dd, a) => {
                let names: Vec<&str> = scenarios
                    .iter()
                    .filter(|s| s.run_kind() == RunKind::Dd)
                    .map(|s| s.name())
                    .collect();
                format!("run_dd {a} {} \"{}\"", run.nonce, names.join(" "))
            }
        };
        let _ = writeln!(s, "{call}");
    }
    s.push_str("xl list\necho \"=== ALL DONE\"\nreboot -f\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of the shell function `name` in `script`: its one-line definition, or up to
    /// the `}` that closes it at the start of a line.
    fn shell_fn(script: &str, name: &str) -> String {
        let at = script
            .find(&format!("\n{name}() {{"))
            .unwrap_or_else(|| panic!("{name}() is not defined"))
            + 1;
        let rest = &script[at..];
        let first = rest.lines().next().unwrap_or_default();
        if first.trim_end().ends_with('}') {
            return format!("{first}\n");
        }
        let end = rest.find("\n}\n").expect("a closing brace") + 3;
        rest[..end].to_string()
    }

    /// Runs `script` with dom0's shell (busybox, when the host has it) and says whether it
    /// exited 0.
    fn dom0_shell(script: &str) -> bool {
        let mut cmd = if Path::new("/usr/bin/busybox").exists() {
            let mut c = std::process::Command::new("/usr/bin/busybox");
            c.arg("sh");
            c
        } else {
            std::process::Command::new("sh")
        };
        cmd.arg("-c")
            .arg(script)
            .status()
            .expect("a shell runs")
            .success()
    }

    #[test]
    fn crash_checks_read_xl_as_dom0_does() {
        let s = init_script(&[], &[Scenario::DdHostile]);
        let mut fns = String::new();
        for f in [
            "fails_cleanly",
            "gone",
            "state_of",
            "crashed",
            "tcg_crash",
            "boot_crash",
            "watched_crash",
        ] {
            fns.push_str(&shell_fn(&s, f));
        }
        // A fake xl: Xen's log with a triple fault of d4 holding Xen's own registers (the
        // emulator's fault) and one of d5 holding a guest's; `list` shows $XL_STATE; `domid`
        // exits with $XL_DOMID_RC (1: no such domain; 139: xl segfaulted).
        let fake = r#"xl() {
    case $1 in
    dmesg) printf '%s\n' '(XEN) d4v0 Triple fault - invoking HVM shutdown action 1' \
        '(XEN) *** Dumping Dom4 vcpu#0 state: ***' '(XEN) ----[ Xen-4.17.7  x86_64 ]----' \
        '(XEN) CPU:    0' '(XEN) RIP:    e008:[<ffff82d0402044a5>]' \
        '(XEN) d5v1 Triple fault - invoking HVM shutdown action 1' \
        '(XEN) *** Dumping Dom5 vcpu#1 state: ***' '(XEN) ----[ Xen-4.17.7  x86_64 ]----' \
        '(XEN) CPU:    1' '(XEN) RIP:    0010:[<ffffffff81000000>]' ;;
    list) printf 'Name ID Mem VCPUs State Time(s)\n%s 4 160 2 %s 1.0\n' "$2" "$XL_STATE" ;;
    domid) return "$XL_DOMID_RC" ;;
    esac
}
"#;
        let check = |env: &str, cond: &str| dom0_shell(&format!("{fns}{fake}{env}\n{cond}"));
        assert!(
            check("", "tcg_crash 4"),
            "d4 has Xen's selector in its dump"
        );
        assert!(
            !check("", "tcg_crash 5"),
            "d5's dump is a guest's own fault"
        );
        assert!(!check("", "tcg_crash 6"), "d6 never faulted");
        // A triple fault before the guest's first console byte is the emulator's too.
        let log = std::env::temp_dir().join(format!("xc-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&log);
        std::fs::create_dir_all(&log).expect("temp dir");
        std::fs::write(log.join("guest-spoke.log"), "Linux version").expect("log");
        let at = |cond: &str| cond.replace("/tmp/xc", &log.display().to_string());
        let boot = shell_fn(&s, "boot_crash");
        let fns_here = fns.replace(&boot, &at(&boot));
        let check_here =
            |env: &str, cond: &str| dom0_shell(&format!("{fns_here}{fake}{env}\n{cond}"));
        assert!(
            check_here("", "boot_crash 5 silent"),
            "d5 died before its console"
        );
        assert!(
            !check_here("", "boot_crash 5 spoke"),
            "d5 had printed: its own fault"
        );
        assert!(!check_here("", "boot_crash 6 silent"), "d6 never faulted");
        let _ = std::fs::remove_dir_all(&log);
        assert!(check("XL_STATE=---sc-", "crashed g"));
        assert!(!check("XL_STATE=-b----", "crashed g"));
        // A watched domain's crash ends waits (checked every 20th round) and, when it is the
        // emulator's, asks for the scenario to run again.
        let watched = "watch_domu=g watch_domid=4 XL_STATE=-b----";
        assert!(check(
            watched,
            "watched_crash 40 && [ \"$tcg_crashed\" = yes ]"
        ));
        assert!(!check(watched, "watched_crash 39"), "not a 20th round");
        assert!(!check(
            "watch_domu=g watch_domid=6 XL_STATE=-b----",
            "watched_crash 40"
        ));
        assert!(check(
            "watch_domu=g watch_domid=6 XL_STATE=---sc-",
            "watched_crash 40 && [ \"$tcg_crashed\" != yes ]"
        ));
        assert!(!check("watch_domu= watch_domid=", "watched_crash 40"));
        assert!(check("XL_DOMID_RC=1", "gone g"));
        assert!(!check("XL_DOMID_RC=0", "gone g"));
        assert!(
            !check("XL_DOMID_RC=139", "gone g"),
            "a crashed xl is not 'gone'"
        );
        // The whole script parses (dom0 would stop at the first syntax error).
        assert!(
            dom0_shell(&format!("set -n\n{s}")),
            "the init script does not parse"
        );
        // Every driver-domain scenario with a domU goes through the retry.
        for f in ["dd_blk_linux", "dd_blk_abi32", "dd_hostile", "dd_net_linux"] {
            assert!(s.contains(&format!("dd_step {f} \"$a\"")), "{f}");
        }
    }

    #[test]
    fn script_runs_every_planned_guest() {
        let runs = [
            Run {
                kind: RunKind::Basic,
                arch: Arch::X86_64,
                nonce: "n1".into(),
            },
            Run {
                kind: RunKind::Busy,
                arch: Arch::I686,
                nonce: "n2".into(),
            },
        ];
        let s = init_script(&runs, &[Scenario::Xenstore]);
        assert!(s.contains("run_basic x86_64 n1\n"));
        assert!(s.contains("run_busy i686 n2\n"));
        assert!(s.contains("kernel = \"/guests/pvh-guest-i686\""));
        assert!(s.contains("cmdline = \"run=busy name=pvh-busy-i686 nonce=n2 busy=blk\""));
        // The busy guest (scenario destroy) is destroyed mid-disk-I/O on a RAM disk of its own.
        assert!(s.contains("target=/dev/ram3' ]\n"));
        assert!(s.contains("rd_nr=4 "));
        assert!(s.contains("for m in xen-evtchn xen-privcmd xenfs"));
        assert!(s.trim_end().ends_with("reboot -f"));
        // Every paused create (the domUs, the good guests, the bench) goes through the retry
        // helper, so it must be in the prelude every script starts with.
        assert!(s.contains("\ncreate_paused() {"));
        // ... and so does every other create: xl create is run in create_tries only.
        assert!(!s.contains("xl create \"/tmp") && !s.contains("xl create -p \"/tmp"));
        assert!(s.contains("        xl create $2 \"/tmp/$1.cfg\" && return 0\n"));
        // xenconsoled stays in the foreground of its restart loop (a daemonised one would
        // make the loop start a new one every second).
        assert!(s.contains("        xenconsoled -i --log=guest --log-dir=/tmp/xc\n"));
        // Waits read the clock with the shell's own `read` (every dom0 function is in every
        // script): a crashed `date` ended a wait at its first round.
        assert!(s.contains("\nup_secs() { read -r up_now up_rest < /proc/uptime;"));
        assert!(!s.contains("date +%s"), "a dom0 function still runs date");
    }

    #[test]
    fn driver_domain_run_gets_its_scenarios_and_config() {
        let runs = [Run {
            kind: RunKind::Dd,
            arch: Arch::I686,
            nonce: "n3".into(),
        }];
        let s = init_script(
            &runs,
            &[Scenario::Boot, Scenario::DdBlk, Scenario::DdBlkAbi32],
        );
        assert!(s.contains("run_dd i686 n3 \"dd-blk dd-blk-abi32\"\n"));
        assert!(s.contains("driver_domain = 1\n"));
        assert!(s.contains("cmdline = \"run=dd name=pvh-dd-i686 nonce=n3 dd=blk"));
        assert!(s.contains("memory = 128\n"));
        // The functions other scenarios build on.
        for f in [
            "domu_start()",
            "domu_wait()",
            "domu_verdict()",
            "dd_attach_vbd()",
            "dd_report()",
        ] {
            assert!(s.contains(f), "{f} missing");
        }
        // The dd-blk domU gets the memory its xen-blkfront parameters need.
        assert!(s.contains(&format!(
            "domu_start \"$n\" dd-blk \"$3\" {}; then",
            crate::domu::DD_BLK_MEMORY_MIB
        )));
    }

    #[test]
    fn ldd_lines_are_parsed() {
        // `libraries` runs ldd; check its parsing on a real dynamic binary when available.
        if Path::new("/bin/sh").exists() {
            let libs = libraries("/bin/sh").unwrap();
            assert!(libs.iter().all(|l| l.starts_with('/')));
        }
    }
}
