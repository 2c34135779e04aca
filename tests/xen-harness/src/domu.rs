//! The Linux domU of the driver-domain scenarios: the same Debian kernel dom0 runs, booted by
//! `xl create` as a **PVH** guest (`type = "pvh"`, `kernel` = the ELF unpacked from the
//! bzImage on the host, entered at its `XEN_ELFNOTE_PHYS32_ENTRY`; the kernel has
//! `CONFIG_XEN_PVH=y`), with a small initramfs built here: static busybox, the Xen frontend
//! modules, and an `/init` that runs the script named by `script=` on the kernel command line.
//!
//! The guest reports on its console (hvc0), which xenconsoled logs in dom0 under
//! `/tmp/xc/guest-<name>.log`:
//!
//! ```text
//! DOMU <scenario> PASS|FAIL <detail>     one verdict (dom0 turns it into a CHECK line)
//! DOMU DONE <script>                     the script finished; the guest powers off next
//! ```
//!
//! Scripts are shell fragments sourced by `/init` with `$nonce` (from `nonce=`) and the helpers
//! `verdict NAME PASS|FAIL DETAIL` and `wait_for TENTHS CMD...` (poll every 0.1 s) defined.
//! Other scenarios add their script to [`SCRIPTS`] and any extra file (a program of their own)
//! through [`build`]'s `extra` argument. dom0's side is in `dom0.rs` (`domu_start`,
//! `domu_wait`, `domu_verdict`).

use std::fs;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::assets::Assets;
use crate::cpio::Archive;
use crate::dom0::find_module;

/// Modules loaded by `/init`, in order (xenfs needs xen-privcmd; vfat needs fat).
pub const MODULES: &[&str] = &[
    "xen-privcmd",
    "xenfs",
    "xen-evtchn",
    "xen-gntalloc",
    "xen-gntdev",
    "xen-blkfront",
    "xen-netfront",
    "fat",
    "vfat",
    "nls_cp437",
    "nls_ascii",
];

/// Module parameters: xen-blkfront's defaults are a one-page ring, 32 indirect segments and a
/// queue per vCPU. With persistent grants it allocates a bounce page for every grant it may
/// use, (segments + indirect pages) × ring entries × queues, up front: our whole offer (256
/// segments, 16-page rings = 512 entries, 4 queues; 2 with 2 vCPUs) would be ≈ 1 GiB (an early
/// try left a 192 MiB domU stuck allocating). What fits the dd-blk domU (256 MiB,
/// [`DD_BLK_MEMORY_MIB`]): 4-page rings (128 entries) with 64 segments, (64 + 1) × 128 × 2 =
/// 16 640 pages = 65 MiB, and as many grant references, half of a domU's default 32 768
/// (64 grant frames). The next steps would double that (8-page rings or 128 segments: 130 MiB
/// and all but all of the grant references).
pub const MODULE_ARGS: &[(&str, &str)] = &[(
    "xen-blkfront",
    "max_ring_page_order=2 max_queues=2 max_indirect_segments=64",
)];

/// Memory of the dd-blk domU (MiB): its kernel, the image, the test files in tmpfs and the
/// 65 MiB xen-blkfront allocates for [`MODULE_ARGS`].
pub const DD_BLK_MEMORY_MIB: u32 = 256;

/// The `insmod` lines of `/init`.
fn insmod_lines() -> String {
    MODULES
        .iter()
        .map(|m| {
            let args = MODULE_ARGS
                .iter()
                .find(|(n, _)| n == m)
                .map_or("", |(_, a)| a);
            format!("insmod /lib/modules/{m}.ko {args} || echo \"NOTE insmod {m} failed\"\n")
        })
        .collect()
}

/// The path of the image inside dom0's initramfs.
pub const IMAGE_PATH: &str = "/guests/linux-domu.cpio";
/// The path of the kernel inside dom0's initramfs.
pub const KERNEL_PATH: &str = "/guests/linux-vmlinuz";

/// The kernel ELF inside `bzimage` (the xz-compressed payload the setup header points at),
/// unpacked with the host's `xz`. xl's loader would otherwise unpack it inside dom0 for every
/// domU, which under TCG took ≈ 25 s of each `xl create`.
///
/// # Errors
/// Not a bzImage with an xz payload, or `xz` failed.
pub fn unpack_bzimage(bzimage: &[u8]) -> Result<Vec<u8>, String> {
    let byte = |i: usize| bzimage.get(i).copied().ok_or("truncated bzImage");
    let word = |i: usize| -> Result<usize, String> {
        let b = bzimage.get(i..i + 4).ok_or("truncated bzImage")?;
        usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .map_err(|e| format!("bzImage field: {e}"))
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err("no bzImage setup header".into());
    }
    let setup_sects = match byte(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + word(0x248)?;
    let payload = bzimage
        .get(start..start + word(0x24c)?)
        .ok_or("payload outside the bzImage")?;
    if !payload.starts_with(b"\xfd7zXZ\x00") {
        return Err("the payload is not xz-compressed".into());
    }
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("xz: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("xz: no stdin")?;
    let input = payload.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().map_err(|e| format!("xz: {e}"))?;
    let _ = writer.join();
    if !out.status.success() || !out.stdout.starts_with(b"\x7fELF") {
        return Err(format!(
            "xz -dc: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// The domU kernel: the unpacked ELF (cached next to the bzImage), or the bzImage itself when
/// it cannot be unpacked (xl then unpacks it, slowly).
pub fn kernel(assets: &Assets) -> Result<Vec<u8>, String> {
    let cached = assets
        .vmlinuz
        .with_file_name(format!("vmlinux-{}.elf", assets.kernel_version));
    if let Ok(elf) = fs::read(&cached) {
        return Ok(elf);
    }
    let bz = fs::read(&assets.vmlinuz).map_err(|e| format!("{}: {e}", assets.vmlinuz.display()))?;
    match unpack_bzimage(&bz) {
        Ok(elf) => {
            fs::write(&cached, &elf).map_err(|e| format!("{}: {e}", cached.display()))?;
            Ok(elf)
        }
        Err(e) => {
            println!("xen-harness: domU kernel stays a bzImage ({e}); xl will unpack it");
            Ok(bz)
        }
    }
}

const INIT: &str = r#"#!/bin/busybox sh
# Linux domU /init, generated by xen-harness (tests/xen-harness/src/domu.rs).
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /mnt /dev/xen
exec > /dev/hvc0 2>&1
for kv in $(cat /proc/cmdline); do
    case "$kv" in
    script=*) script=${kv#script=} ;;
    nonce=*) nonce=${kv#nonce=} ;;
    esac
done
INSMOD
mount -t xenfs xenfs /proc/xen 2>/dev/null
# verdict NAME PASS|FAIL DETAIL: one result line (dom0 keeps the first 100 bytes of DETAIL).
verdict() { local n=$1 v=$2; shift 2; echo "DOMU $n $v $*"; }
wait_for() {
    local n=$1
    shift
    while ! "$@" >/dev/null 2>&1; do
        n=$((n - 1))
        [ "$n" -gt 0 ] || return 1
        sleep 0.1
    done
}
echo "DOMU START $script nonce=$nonce"
if [ -f "/scripts/$script" ]; then
    . "/scripts/$script"
else
    verdict "$script" FAIL "no script /scripts/$script in the domU image"
fi
echo "DOMU DONE $script"
sync
poweroff -f
"#;

/// `dd-blk`: xen-blkfront against our driver domain's blkback (RAM disk). Raw I/O with
/// O_DIRECT and after dropping caches, then a vfat filesystem made, filled, remounted and
/// checked (busybox has mkdosfs but no fsck; the remount + checksums is the check).
const DD_BLK: &str = r#"
blk_check() {
    wait_for 600 test -b /dev/xvda || { echo "no /dev/xvda within 60 s"; return 1; }
    local sz want got f n
    sz=$(blockdev --getsz /dev/xvda)
    [ "$sz" -ge 16384 ] || { echo "disk has $sz sectors (< 8 MiB)"; return 1; }
    dmesg | grep -i blkfront | tail -n 3
    cat /sys/block/xvda/queue/max_segments /sys/block/xvda/queue/max_hw_sectors_kb \
        /sys/block/xvda/mq/*/nr_tags 2>/dev/null | tr '\n' ' '
    echo "(max_segments max_hw_sectors_kb nr_tags); queues: $(ls /sys/block/xvda/mq | wc -l)"
    # 4 MiB of random data with O_DIRECT in 64 KiB requests (16 segments: indirect).
    dd if=/dev/urandom of=/tmp/pat bs=65536 count=64 2>/dev/null
    want=$(sha256sum < /tmp/pat | cut -d' ' -f1)
    dd if=/tmp/pat of=/dev/xvda bs=65536 oflag=direct 2>/dev/null || { echo "direct write failed"; return 1; }
    got=$(dd if=/dev/xvda bs=65536 count=64 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "O_DIRECT read back differs: $got"; return 1; }
    # 1 MiB more through the page cache at 6 MiB, synced, caches dropped, read back.
    dd if=/tmp/pat of=/dev/xvda bs=4096 count=256 seek=1536 conv=fsync 2>/dev/null
    echo 3 > /proc/sys/vm/drop_caches
    want=$(head -c 1048576 /tmp/pat | sha256sum | cut -d' ' -f1)
    got=$(dd if=/dev/xvda bs=4096 skip=1536 count=256 2>/dev/null | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "cached read back at 6 MiB differs"; return 1; }
    # A filesystem: make, fill, unmount, drop caches, remount, compare.
    mkdosfs -n PVHDD /dev/xvda >/dev/null 2>&1 || { echo "mkdosfs failed"; return 1; }
    mount -t vfat /dev/xvda /mnt || { echo "mount vfat failed"; return 1; }
    cp /tmp/pat /mnt/pattern.bin
    for n in 1 2 3 4 5 6 7 8; do echo "file $n nonce $nonce" > "/mnt/f$n.txt"; done
    mkdir /mnt/dir && head -c 300000 /tmp/pat > /mnt/dir/part.bin
    sha256sum /mnt/pattern.bin /mnt/f*.txt /mnt/dir/part.bin > /tmp/sums
    umount /mnt || { echo "umount failed"; return 1; }
    echo 3 > /proc/sys/vm/drop_caches
    mount -t vfat -o ro /dev/xvda /mnt || { echo "remount failed"; return 1; }
    sha256sum -c /tmp/sums > /tmp/sumcheck 2>&1 || { echo "after remount: $(grep -v OK /tmp/sumcheck | head -n 2)"; umount /mnt; return 1; }
    f=$(ls /mnt | wc -l)
    grep -q "file 5 nonce $nonce" /mnt/f5.txt || { echo "f5.txt lost its content"; umount /mnt; return 1; }
    umount /mnt
    fstrim_out=$(blkdiscard -o 8388608 -l 1048576 /dev/xvda 2>&1 && echo discard-ok)
    echo "BLKOK $sz sectors; 4 MiB O_DIRECT + 1 MiB cached sha256 ok; vfat $f entries remounted, 10 sha256 ok; $fstrim_out"
}
# A reconnect as the toolstack does it: Linux's xen-blkfront cannot rebind a device it
# unbound (its probe leaves the device Closed, waiting for an Initialising it never writes), so
# the domU unbinds it (frontend Closed, the backend follows), dom0 removes both directories
# once both ends are Closed, waits for the domU's BLK DEVGONE (Linux has dropped its xenbus
# device: a directory written again before that is taken for the old, unbound device and never
# probed) and writes the device again (a new xenbus device in Linux, a new backend device in
# the driver domain, a new empty RAM disk); the domU checks I/O on it.
blk_reconnect() {
    local sz want got
    # On the console at once (the function's output is collected in a file): dom0 waits for it.
    echo "BLK UNBIND" > /dev/hvc0
    echo vbd-51712 > /sys/bus/xen/drivers/vbd/unbind || { echo "reconnect: unbind failed"; return 1; }
    wait_for 300 sh -c '! test -b /dev/xvda' || { echo "reconnect: /dev/xvda stayed after the unbind"; return 1; }
    wait_for 1800 sh -c '! test -e /sys/bus/xen/devices/vbd-51712' || { echo "reconnect: dom0 did not remove the vbd within 180 s"; return 1; }
    echo "BLK DEVGONE" > /dev/hvc0
    wait_for 1800 test -b /dev/xvda || { echo "reconnect: no /dev/xvda within 180 s of the removal"; return 1; }
    sz=$(blockdev --getsz /dev/xvda)
    dmesg | grep -i blkfront | tail -n 1
    dd if=/dev/urandom of=/tmp/pat2 bs=65536 count=16 2>/dev/null
    want=$(sha256sum < /tmp/pat2 | cut -d' ' -f1)
    dd if=/tmp/pat2 of=/dev/xvda bs=65536 oflag=direct 2>/dev/null || { echo "reconnect: direct write failed"; return 1; }
    got=$(dd if=/dev/xvda bs=65536 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "reconnect: 1 MiB read back differs"; return 1; }
    echo "RECONNOK $sz sectors, 1 MiB O_DIRECT sha256 ok"
}
blk_check > /tmp/blk.out 2>&1
cat /tmp/blk.out
if grep -q '^BLKOK ' /tmp/blk.out; then
    blk_reconnect > /tmp/rec.out 2>&1
    cat /tmp/rec.out
    if grep -q '^RECONNOK ' /tmp/rec.out; then
        verdict dd-blk PASS "reconnect ok; $(grep '^BLKOK ' /tmp/blk.out | cut -c7-)"
    else
        verdict dd-blk FAIL "$(tail -n 1 /tmp/rec.out)"
    fi
else
    verdict dd-blk FAIL "$(tail -n 1 /tmp/blk.out)"
fi
"#;

/// `dd-net`: xen-netfront against our driver domain's netback, bridged there to dom0's
/// xenbr0 (10.99.0.1): ping, then 3 MiB of random data up (`nc` to dom0's listener on 7001)
/// and 3 MiB down (from dom0's listener on 7002), each sha256 printed for dom0 to compare
/// (`NETUP`/`NETDOWN` lines). A receiving `nc` exits when its stdin ends, so the download
/// reads a FIFO held open until the transfer is over.
const DD_NET: &str = r#"
net_check() {
    wait_for 300 test -e /sys/class/net/eth0 || { echo "no eth0 within 30 s"; return 1; }
    ip addr add 10.99.0.3/24 dev eth0 && ip link set eth0 up || { echo "cannot configure eth0"; return 1; }
    local q n=0 rtt t0 t1 t2 rc got size
    q="$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)tx/$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)rx"
    dmesg | grep -i -e netfront -e 'eth0' | tail -n 3
    while ! ping -c 1 -W 2 10.99.0.1 >/dev/null 2>&1; do
        n=$((n + 1))
        [ "$n" -lt 15 ] || { echo "no echo reply from 10.99.0.1 in 15 tries"; return 1; }
    done
    ping -c 3 -W 10 10.99.0.1 > /tmp/ping.out 2>&1
    cat /tmp/ping.out
    # busybox ping succeeds when any reply came back: count them.
    got=$(grep -o '[0-9]* packets received' /tmp/ping.out | cut -d' ' -f1)
    [ "$got" = 3 ] || { echo "ping: ${got:-0} of 3 echo replies from 10.99.0.1"; return 1; }
    rtt=$(grep -o 'min/avg/max = [0-9./]*' /tmp/ping.out | cut -d' ' -f3 | cut -d/ -f2)
    head -c 3145728 /dev/urandom > /tmp/up
    echo "NETUP $(sha256sum < /tmp/up | cut -c1-64) $(wc -c < /tmp/up)"
    t0=$(date +%s)
    timeout 150 nc 10.99.0.1 7001 < /tmp/up || { echo "upload: nc failed"; return 1; }
    t1=$(date +%s)
    mkfifo /tmp/hold
    exec 3<>/tmp/hold
    timeout 150 nc 10.99.0.1 7002 < /tmp/hold > /tmp/down
    rc=$?
    exec 3>&-
    t2=$(date +%s)
    size=$(wc -c < /tmp/down)
    echo "NETDOWN $(sha256sum < /tmp/down | cut -c1-64) $size"
    echo "eth0 rx $(cat /sys/class/net/eth0/statistics/rx_packets)p/$(cat /sys/class/net/eth0/statistics/rx_bytes)B tx $(cat /sys/class/net/eth0/statistics/tx_packets)p/$(cat /sys/class/net/eth0/statistics/tx_bytes)B"
    [ "$rc" = 0 ] || { echo "download: nc exit $rc after $((t2 - t1)) s"; return 1; }
    [ "$size" = 3145728 ] || { echo "download: $size of 3145728 bytes after $((t2 - t1)) s"; return 1; }
    echo "NETOK ping 3/3 avg $rtt ms; 3 MiB up $((t1 - t0)) s, down $((t2 - t1)) s; queues $q"
}
# Reconnects: xen-netfront can rebind (its probe writes Initialising and waits for the
# backend to leave Closed), so the domU unbinds the vif (Closing, Closed; the backend
# follows), binds it again (Initialising; the backend goes InitWait, then Connected) and
# pings through the new connection, twice.
vif_reconnect() {
    local k n got
    for k in 1 2; do
        echo vif-0 > /sys/bus/xen/drivers/vif/unbind || { echo "reconnect $k: unbind failed"; return 1; }
        wait_for 300 sh -c '! test -e /sys/class/net/eth0' || { echo "reconnect $k: eth0 stayed after the unbind"; return 1; }
        echo vif-0 > /sys/bus/xen/drivers/vif/bind || { echo "reconnect $k: bind failed"; return 1; }
        wait_for 600 test -e /sys/class/net/eth0 || { echo "reconnect $k: no eth0 within 60 s of the bind"; return 1; }
        ip addr add 10.99.0.3/24 dev eth0 && ip link set eth0 up || { echo "reconnect $k: cannot configure eth0"; return 1; }
        n=0
        while ! ping -c 1 -W 2 10.99.0.1 >/dev/null 2>&1; do
            n=$((n + 1))
            [ "$n" -lt 15 ] || { echo "reconnect $k: no echo reply in 15 tries"; return 1; }
        done
        ping -c 3 -s 1400 -W 10 10.99.0.1 > /tmp/ping$k.out 2>&1
        got=$(grep -o '[0-9]* packets received' /tmp/ping$k.out | cut -d' ' -f1)
        [ "$got" = 3 ] || { echo "reconnect $k: ${got:-0} of 3 echo replies (1400 B)"; return 1; }
        echo "reconnect $k: $(tail -n 1 /tmp/ping$k.out)"
    done
    echo "RECONNOK 2 unbind/bind, ping 3/3 of 1400 B after each"
}
# A second vif (after the reconnects): dom0 attaches handle 1 while the domU runs (it asks
# with NET2 WANT on the console); it becomes eth1 (eth0 exists), gets 10.99.1.3/24 (dom0's xenbr0 has 10.99.1.1),
# and both vifs carry pings at the same time. arp_ignore=1: each interface answers ARP only
# for its own address, so dom0 sends each subnet's replies to its own vif.
net_second() {
    local r0 r1 t1 got0 got1
    echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore
    echo "NET2 WANT" > /dev/hvc0
    wait_for 1200 test -e /sys/class/net/eth1 || { echo "second vif: no eth1 within 120 s"; return 1; }
    case "$(readlink /sys/class/net/eth1/device)" in
    *vif-1) ;;
    *) echo "second vif: eth1 is $(readlink /sys/class/net/eth1/device)"; return 1 ;;
    esac
    ip addr add 10.99.1.3/24 dev eth1 && ip link set eth1 up || { echo "second vif: cannot configure eth1"; return 1; }
    n=0
    while ! ping -c 1 -W 2 10.99.1.1 >/dev/null 2>&1; do
        n=$((n + 1))
        [ "$n" -lt 15 ] || { echo "second vif: no echo reply from 10.99.1.1 in 15 tries"; return 1; }
    done
    r1=$(cat /sys/class/net/eth1/statistics/rx_packets)
    t1=$(cat /sys/class/net/eth1/statistics/tx_packets)
    r0=$(cat /sys/class/net/eth0/statistics/rx_packets)
    ping -c 5 -s 1400 -W 10 10.99.0.1 > /tmp/p0.out 2>&1 &
    ping -c 5 -s 1400 -W 10 10.99.1.1 > /tmp/p1.out 2>&1
    wait
    got0=$(grep -o '[0-9]* packets received' /tmp/p0.out | cut -d' ' -f1)
    got1=$(grep -o '[0-9]* packets received' /tmp/p1.out | cut -d' ' -f1)
    [ "$got0" = 5 ] && [ "$got1" = 5 ] || { echo "second vif: ${got0:-0}/5 replies on eth0, ${got1:-0}/5 on eth1"; return 1; }
    r1=$(($(cat /sys/class/net/eth1/statistics/rx_packets) - r1))
    t1=$(($(cat /sys/class/net/eth1/statistics/tx_packets) - t1))
    r0=$(($(cat /sys/class/net/eth0/statistics/rx_packets) - r0))
    [ "$r1" -ge 5 ] && [ "$t1" -ge 5 ] && [ "$r0" -ge 5 ] || { echo "second vif: eth1 rx $r1 tx $t1, eth0 rx $r0 packets during the pings"; return 1; }
    echo "NET2OK eth1 (vif 1) and eth0 5/5 pings at once; eth1 rx $r1 tx $t1, eth0 rx $r0"
}
net_check > /tmp/net.out 2>&1
cat /tmp/net.out
if grep -q '^NETOK ' /tmp/net.out; then
    vif_reconnect > /tmp/rec.out 2>&1
    cat /tmp/rec.out
    net_second > /tmp/net2.out 2>&1
    cat /tmp/net2.out
    if ! grep -q '^RECONNOK ' /tmp/rec.out; then
        verdict dd-net FAIL "$(tail -n 1 /tmp/rec.out)"
    elif grep -q '^NET2OK ' /tmp/net2.out; then
        verdict dd-net PASS "reconnect 2/2, 2 vifs; $(grep '^NETOK ' /tmp/net.out | cut -c7-)"
    else
        verdict dd-net FAIL "$(tail -n 1 /tmp/net2.out)"
    fi
else
    verdict dd-net FAIL "$(tail -n 1 /tmp/net.out)"
fi
"#;

/// The scripts of the domU image, by name (`script=<name>` on the kernel command line).
pub const SCRIPTS: &[(&str, &str)] = &[("dd-blk", DD_BLK), ("dd-net", DD_NET)];

/// Builds the domU initramfs; `extra` are more files (path in the image, mode, bytes).
///
/// # Errors
/// A host file or module that cannot be read.
pub fn build(assets: &Assets, extra: &[(String, u32, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let mut a = Archive::new();
    for d in [
        "/bin",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/mnt",
        "/root",
        "/lib/modules",
        "/scripts",
    ] {
        a.dir(d);
    }
    let busybox = fs::read("/bin/busybox").map_err(|e| format!("/bin/busybox: {e}"))?;
    a.file("/bin/busybox", 0o755, busybox);
    for m in MODULES {
        let path = find_module(&assets.modules, m)
            .ok_or_else(|| format!("module {m}.ko not in {}", assets.modules.display()))?;
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        a.file(&format!("/lib/modules/{m}.ko"), 0o644, bytes);
    }
    a.file(
        "/init",
        0o755,
        INIT.replace("INSMOD\n", &insmod_lines()).into_bytes(),
    );
    for (name, body) in SCRIPTS {
        a.file(&format!("/scripts/{name}"), 0o644, body.as_bytes().to_vec());
    }
    for (path, mode, bytes) in extra {
        // Parent directories are added by the archive.
        a.file(path, *mode, bytes.clone());
    }
    let mut out = Vec::with_capacity(a.payload_bytes() + (1 << 16));
    a.write_to(&mut out)
        .map_err(|e| format!("domU cpio: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_loads_modules_and_sources_the_script() {
        let init = INIT.replace("INSMOD\n", &insmod_lines());
        assert!(init.contains("insmod /lib/modules/xen-privcmd.ko  ||"));
        assert!(init.contains("xen-blkfront.ko max_ring_page_order=2"));
        assert!(init.contains(". \"/scripts/$script\""));
        assert!(SCRIPTS
            .iter()
            .any(|(n, b)| *n == "dd-blk" && b.contains("verdict dd-blk")));
    }

    #[test]
    fn bzimage_without_header_or_xz_payload_is_refused() {
        assert!(unpack_bzimage(&[0u8; 1024]).is_err());
        let mut fake = vec![0u8; 4096];
        fake[0x202..0x206].copy_from_slice(b"HdrS");
        fake[0x1f1] = 1; // payload at 1024 + 0: 16 bytes of zeroes, not xz
        fake[0x24c] = 16;
        assert_eq!(
            unpack_bzimage(&fake),
            Err("the payload is not xz-compressed".to_string())
        );
    }
}
