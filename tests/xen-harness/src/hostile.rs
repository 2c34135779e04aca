//! Scenario `dd-hostile` (issue 8, item 4): a Linux PVH domU runs `tests/hostile-frontend`
//! against the driver domain's blkback while our PVH guest's blkfront uses the same driver
//! domain for a disk of its own, then against its netback while our PVH guest's netfront
//! (`run=net`) reaches dom0 through the same driver domain's bridge.
//!
//! * The hostile program is built here with the host cargo, statically linked
//!   (`-C target-feature=+crt-static`, target `x86_64-unknown-linux-gnu`), and goes into the
//!   domU image with its script ([`domu_files`]) through `domu::build`'s extra files.
//! * The hostile device's frontend directory is `device/hostile-vbd/<id>`, not `device/vbd`:
//!   the domU image loads xen-blkfront (for `dd-blk`), which would claim a `vbd` before the
//!   program starts. A backend only follows its `frontend` node, so nothing else changes.
//! * dom0's step ([`DOM0_FUNCTIONS`], called from `run_dd`) starts the hostile domU, waits
//!   until the program is connected to xenstore (its `START` line), creates the good frontend
//!   and lets both go at once (`data/hostile-go`, then `xl unpause`), so the attacks overlap
//!   the good guest's I/O; then it waits for the good guest's verdict and the hostile
//!   program's summary, asks the driver domain for its report on the hostile device
//!   (its `RESULT dd-hostile` line: failures seen, with the last reason) and prints
//!   `CHECK dd-hostile`: PASS when every attack got the reaction a correct backend gives,
//!   the good guest's I/O was verified, and the driver domain still answers.
//! * The network half: the program's second run (`net`, device `device/hostile-vif/0`)
//!   waits for `data/hostile-net-go`, written once the good network guest (a vif of the
//!   driver domain, `dd_attach_vif`) has done its ARP, 3 pings and UDP echo with dom0
//!   ("before"); dom0 pings it while the attacks run ("during"), then detaches and attaches
//!   its vif again, and the guest does the exchange once more on a fresh connection
//!   ("after"). The driver domain's report on the hostile vif (`RESULT dd-hostile-net`)
//!   passes when it failed connections, each with a reason in `error`, and none is left.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the program lands in the domU image.
pub const DOMU_BINARY: &str = "/bin/hostile-frontend";

/// The domU script (sourced by the domU's `/init` with `$nonce`, `verdict` and `wait_for`).
const DOMU_SCRIPT: &str = r#"
# dd-hostile: tests/hostile-frontend against the driver domain's blkback.
wait_for 300 test -c /dev/xen/gntalloc || echo "NOTE no /dev/xen/gntalloc"
seed=$(printf '%d' "0x$(echo "$nonce" | cut -c9-16)")
{ /bin/hostile-frontend blk --class hostile-vbd --seed "$seed" --go hostile-go --report hostile; echo "HOSTILE rc=$?"; } 2>&1 | tee /tmp/hostile.out
{ /bin/hostile-frontend net --class hostile-vif --seed "$seed" --go hostile-net-go --report hostile-net; echo "HOSTILE net rc=$?"; } 2>&1 | tee /tmp/hostile-net.out
s=$(grep '^HOSTILE blk SUMMARY ' /tmp/hostile.out | tail -n 1 | cut -c21-)
n=$(grep '^HOSTILE net SUMMARY ' /tmp/hostile-net.out | tail -n 1 | cut -c21-)
if grep -q '^HOSTILE rc=0$' /tmp/hostile.out && grep -q '^HOSTILE net rc=0$' /tmp/hostile-net.out; then
    verdict dd-hostile PASS "blk $s; net $n"
else
    verdict dd-hostile FAIL "blk ${s:-$(grep -v '^HOSTILE rc=' /tmp/hostile.out | tail -n 1)}; net ${n:-$(grep -v '^HOSTILE net rc=' /tmp/hostile-net.out | tail -n 1)}"
fi
"#;

/// dom0's functions for the scenario; `run_dd` calls `dd_hostile ARCH DD NONCE`.
pub const DOM0_FUNCTIONS: &str = r#"
# ---- dd-hostile (tests/xen-harness/src/hostile.rs) ----------------------------------------
# dd_attach_hostile FE DD DEVID PARAMS: dd_attach_vbd's nodes with the frontend directory in
# device/hostile-vbd (no Linux driver claims that class; the backend follows `frontend`).
dd_attach_hostile() {
    local fe=$1 dd=$2 id=$3
    local fp=/local/domain/$1/device/hostile-vbd/$3 bp=/local/domain/$2/backend/vbd/$1/$3
    xenstore-write "$fp" "" && xenstore-chmod "$fp" "n$fe" "r$dd" &&
        xenstore-write "$fp/backend" "$bp" "$fp/backend-id" "$dd" "$fp/virtual-device" "$id" \
            "$fp/device-type" disk "$fp/state" 1 &&
        xenstore-write "$bp" "" && xenstore-chmod "$bp" "n$dd" "r$fe" &&
        xenstore-write "$bp/frontend" "$fp" "$bp/frontend-id" "$fe" "$bp/params" "$4" \
            "$bp/mode" w "$bp/type" ram "$bp/device-type" disk "$bp/online" 1 \
            "$bp/removable" 0 "$bp/bootable" 1 "$bp/dev" xvdh "$bp/state" 1
}
hostile_started() { domu_log "$1" | grep -q '^HOSTILE blk START'; }
# dd_attach_hostile_vif FE DD DEVID MAC: dd_attach_vif's nodes with the frontend directory in
# device/hostile-vif (the domU's xen-netfront claims only `vif`).
dd_attach_hostile_vif() {
    local fe=$1 dd=$2 id=$3
    local fp=/local/domain/$1/device/hostile-vif/$3 bp=/local/domain/$2/backend/vif/$1/$3
    xenstore-write "$fp" "" && xenstore-chmod "$fp" "n$fe" "r$dd" &&
        xenstore-write "$fp/backend" "$bp" "$fp/backend-id" "$dd" "$fp/handle" "$id" \
            "$fp/mac" "$4" "$fp/state" 1 &&
        xenstore-write "$bp" "" && xenstore-chmod "$bp" "n$dd" "r$fe" &&
        xenstore-write "$bp/frontend" "$fp" "$bp/frontend-id" "$fe" "$bp/handle" "$id" \
            "$bp/mac" "$4" "$bp/type" vif "$bp/online" 1 "$bp/state" 1
}
# hostile_done NAME: the domU printed DOMU DONE. Not "or the domain is gone": dom0's tools
# crash now and then under TCG, and a crashed check must mean "wait on", not "done".
hostile_done() { domu_log "$1" | grep -q '^DOMU DONE'; }
hostile_line() { domu_log "$1" | grep '^DOMU dd-hostile ' | tail -n 1; }
hostile_net_started() { domu_log "$1" | grep -q '^HOSTILE net START'; }
hostile_net_done() { domu_log "$1" | grep -q '^HOSTILE net \(SUMMARY\|ERROR\)'; }

# dd_hostile_net ARCH DD NONCE HOSTILE-NAME HOSTILE-DOMID: the network half of dd-hostile.
# Sets good_net (the good guest's before/during/after verdict) and net_detail. dom0's UDP echo
# is socat's PIPE (no shell or busybox child: those segfault now and then under TCG); the
# guest itself compares the echoed payload.
dd_hostile_net() {
    local a=$1 dd=$2 h=$4 g=pvh-ddgoodnet-$1 ge v v2 sp m=1 acked=no tries=0 answered=0 t0 now
    local p
    [ "$a" = x86_64 ] || m=2
    good_net=no
    net_detail="no good network guest"
    cat > "/tmp/$g.cfg" <<EOC
name = "$g"
type = "pvh"
kernel = "/guests/pvh-guest-$a"
cmdline = "run=net name=$g nonce=$3"
memory = 64
vcpus = 1
tsc_mode = "native"
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "preserve"
EOC
    # Created (paused) while the blk attacks may still run: xl create is slow under TCG.
    if ! create_paused "$g"; then
        dump_file xl.log "/var/log/xen/xl-$g.log"
        xenstore-write "/local/domain/$5/data/hostile-net-go" 1
        return
    fi
    ge=$(xl domid "$g")
    p=/local/domain/$ge/data
    dd_attach_vif "$ge" "$dd" 0 "00:16:3e:5a:03:0$m" || echo "NOTE dd-hostile $a writing the good vif failed"
    # Started up to three times: socat itself has segfaulted in ld.so at start under TCG.
    for sp in 1 2 3; do
        socat -T 300 UDP4-RECVFROM:5555,bind=10.99.0.1,reuseaddr,fork PIPE &
        sp=$!
        wait_for 100 udp_listening && break
        echo "NOTE dd-hostile $a socat is not listening on UDP 5555"
        kill "$sp" 2>/dev/null
    done
    ip neigh flush dev xenbr0 2>/dev/null
    wait_secs 300 hostile_net_started "$h" || echo "NOTE dd-hostile $a no HOSTILE net START within 300 s; $(domu_said "$h")"
    xl unpause "$ge"
    ack_xenstore "$a" "$ge" "$3" | sed 's/^CHECK xenstore/NOTE xenstore/'
    # Before: ARP, 3 pings and the UDP echo through the driver domain.
    if wait_secs 120 reported "$p/pvh-net" "$g" && v=$(xenstore-read "$p/pvh-net"); then :; else v="FAIL: no data/pvh-net"; fi
    xenstore-write "/local/domain/$5/data/hostile-net-go" 1
    case "$v" in
    FAIL*)
        xenstore-write "$p/pvh-net-ack" 1
        net_detail="before: $(echo "$v" | head -c 60)"
        ;;
    *)
        # During: dom0 pings the good guest until the attacks end (at most 120 s). The
        # guest waits 60 s for the ack of its first result, then 90 s for the detach,
        # answering pings all along: the ack goes out after 45 s, or at the end.
        up_secs
        t0=$up_now
        now=$t0
        while ! hostile_net_done "$h" && [ "$tries" -lt 120 ] && [ $((now - t0)) -lt 120 ]; do
            tries=$((tries + 1))
            ping -c 1 -W 2 10.99.0.2 > /dev/null 2>&1 && answered=$((answered + 1))
            up_secs
            now=$up_now
            if [ "$acked" = no ] && [ $((now - t0)) -ge 45 ]; then
                xenstore-write "$p/pvh-net-ack" 1
                acked=yes
            fi
        done
        [ "$acked" = yes ] || xenstore-write "$p/pvh-net-ack" 1
        echo "NOTE dd-hostile $a good guest d$ge answered $answered of $tries pings during the attacks"
        # After: a fresh connection to the driver domain, the exchange again.
        dd_detach_vif "$ge" "$dd" 0
        wait_secs 5 sh -c "! xenstore-read /local/domain/$dd/backend/vif/$ge/0/state"
        # The guest's netfront tears down on the removal and may write its state once more
        # (which creates the node again): wait until the frontend node stays gone, then
        # remove both directories again before the new attach.
        wait_secs 10 sh -c "! xenstore-read /local/domain/$ge/device/vif/0/state"
        dd_detach_vif "$ge" "$dd" 0
        # Retried: once xenstore-chmod found the directory just written gone (ENOENT).
        for v2 in 1 2 3; do
            dd_attach_vif "$ge" "$dd" 0 "00:16:3e:5a:03:0$m" && break
            echo "NOTE dd-hostile $a writing the good vif again failed ($v2)"
            xenstore-rm "/local/domain/$ge/device/vif/0" 2>/dev/null
            xenstore-rm "/local/domain/$dd/backend/vif/$ge/0" 2>/dev/null
            sleep 1
        done
        v2=
        if wait_secs 150 reported "$p/pvh-net2" "$g" && v2=$(xenstore-read "$p/pvh-net2"); then
            xenstore-write "$p/pvh-net2-ack" 1
        else
            v2="FAIL: no data/pvh-net2"
        fi
        case "$v2" in
        ok:*)
            if [ "$answered" -gt 0 ]; then
                good_net=yes
                net_detail="good net d$ge: before ok, $answered/$tries pings during, after reattach ok"
            else
                net_detail="no ping answered during the attacks ($tries sent)"
            fi
            ;;
        *) net_detail="after: $(echo "$v2" | head -c 60)" ;;
        esac
        ;;
    esac
    echo "NOTE dd-hostile $a good network guest: $net_detail"
    kill "$sp" 2>/dev/null
    wait "$sp" 2>/dev/null
    domu_finish "$g"
    dd_detach_vif "$ge" "$dd" 0
}

# dd_hostile ARCH DD NONCE: scenario dd-hostile.
dd_hostile() {
    local a=$1 dd=$2 h=pvh-ddhost-$1 g=pvh-ddgood-$1 he ge v hl good=no alive=no m
    local good_net=no net_detail= alive_net=no
    if ! domu_start "$h" dd-hostile "$3" 160; then
        echo "CHECK dd-hostile $a FAIL xl create -p of the hostile Linux domU failed"
        return
    fi
    he=$d
    watch_domu=$h watch_domid=$d
    echo "NOTE dd-hostile $a hostile Linux domU d$he, driver domain d$dd"
    dd_attach_hostile "$he" "$dd" 51712 ram:1M || echo "NOTE dd-hostile $a writing the nodes failed"
    m=1
    [ "$a" = x86_64 ] || m=2
    dd_attach_hostile_vif "$he" "$dd" 0 "00:16:3e:5a:04:0$m" || echo "NOTE dd-hostile $a writing the vif nodes failed"
    xl unpause "$he"
    wait_secs 150 hostile_started "$h" || echo "NOTE dd-hostile $a no HOSTILE START within 150 s; $(domu_said "$h")"
    # The well-behaved frontend, while the attacks go on: our PVH guest's blkfront. The
    # hostile program waits for data/hostile-go, written as the good guest is unpaused.
    cat > "/tmp/$g.cfg" <<EOC
name = "$g"
type = "pvh"
kernel = "/guests/pvh-guest-$a"
cmdline = "run=blk name=$g nonce=$3 blk=once"
memory = 64
vcpus = 1
tsc_mode = "native"
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "preserve"
EOC
    if create_paused "$g"; then
        ge=$(xl domid "$g")
        dd_attach_vbd "$ge" "$dd" 51712 ram:1M || echo "NOTE dd-hostile $a writing the good vbd failed"
        xenstore-write "/local/domain/$he/data/hostile-go" 1
        xl unpause "$ge"
        ack_xenstore "$a" "$ge" "$3" | sed 's/^CHECK xenstore/NOTE xenstore/'
        if wait_secs 90 reported "/local/domain/$ge/data/pvh-blk" "$g" &&
            v=$(xenstore-read "/local/domain/$ge/data/pvh-blk"); then
            xenstore-write "/local/domain/$ge/data/pvh-blk-ack" 1
            case "$v" in FAIL*) ;; *) good=yes ;; esac
        fi
        echo "NOTE dd-hostile $a good frontend d$ge: $(echo "$v" | head -c 80)"
        domu_finish "$g"
        dd_detach_vbd "$ge" "$dd" 51712
    else
        xenstore-write "/local/domain/$he/data/hostile-go" 1
        dump_file xl.log "/var/log/xen/xl-$g.log"
    fi
    dd_hostile_net "$a" "$dd" "$3" "$h" "$he"
    wait_secs 240 hostile_done "$h" || echo "NOTE dd-hostile $a no DOMU DONE within 240 s; $(domu_said "$h")"
    hl=$(hostile_line "$h")
    [ -n "$hl" ] || hl=$(hostile_line "$h")
    domu_finish "$h"
    xenstore-rm "/local/domain/$dd/backend/vbd/$he/51712" 2>/dev/null
    xenstore-rm "/local/domain/$he/device/hostile-vbd" 2>/dev/null
    xenstore-rm "/local/domain/$dd/backend/vif/$he/0" 2>/dev/null
    xenstore-rm "/local/domain/$he/device/hostile-vif" 2>/dev/null
    dd_report "$dd" dd-hostile vbd "$he" 51712 hostile
    is_value "/local/domain/$dd/data/dd-report-done" "dd-hostile vbd $he 51712 hostile" && alive=yes
    dd_report "$dd" dd-hostile-net vif "$he" 0 hostile
    is_value "/local/domain/$dd/data/dd-report-done" "dd-hostile-net vif $he 0 hostile" && alive_net=yes
    case "$hl/$good/$good_net/$alive/$alive_net" in
    "DOMU dd-hostile PASS "*/yes/yes/yes/yes)
        echo "CHECK dd-hostile $a PASS attacks: $(echo "${hl#DOMU dd-hostile PASS }" | head -c 60); good blk d$ge, $net_detail; d$dd answers" ;;
    *) echo "CHECK dd-hostile $a FAIL hostile '$(echo "${hl#DOMU dd-hostile }" | head -c 60)' good $good net '$(echo "$net_detail" | head -c 60)' dd alive $alive/$alive_net" ;;
    esac
    dump_file dd-hostile-domu.log "/tmp/xc/guest-$h.log"
}
"#;

/// Builds the hostile program for the domU (static, release) under `root/target/hostile-frontend`.
///
/// # Errors
/// Cargo could not be run or the build failed.
pub fn build(root: &Path) -> Result<PathBuf, String> {
    let target_dir = root.join("target/hostile-frontend");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(&cargo);
    for v in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "hostile-frontend",
            "--target",
            "x86_64-unknown-linux-gnu",
        ]);
    println!("xen-harness: building the hostile frontend ({cargo}, static)");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("building hostile-frontend failed ({status})"));
    }
    let bin = target_dir.join("x86_64-unknown-linux-gnu/release/hostile-frontend");
    if !bin.exists() {
        return Err(format!("the build left no {}", bin.display()));
    }
    Ok(bin)
}

/// The files the scenario adds to the domU image: the program and its script.
///
/// # Errors
/// The build failed or the binary cannot be read.
pub fn domu_files(root: &Path) -> Result<Vec<(String, u32, Vec<u8>)>, String> {
    let bin = build(root)?;
    let bytes = std::fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    Ok(vec![
        (DOMU_BINARY.to_string(), 0o755, bytes),
        (
            "/scripts/dd-hostile".to_string(),
            0o644,
            DOMU_SCRIPT.as_bytes().to_vec(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_agree_on_names() {
        assert!(DOMU_SCRIPT.contains("--class hostile-vbd"));
        // Every helper dd_hostile calls is defined here (a lost definition only shows on
        // real Xen, as "not found" from dom0's shell).
        for f in [
            "hostile_started",
            "hostile_done",
            "hostile_line",
            "hostile_net_started",
            "hostile_net_done",
            "dd_attach_hostile",
            "dd_attach_hostile_vif",
            "dd_hostile_net",
        ] {
            assert!(DOM0_FUNCTIONS.contains(&format!("\n{f}() {{")), "{f}");
        }
        assert!(DOMU_SCRIPT.contains("net --class hostile-vif"));
        assert!(DOM0_FUNCTIONS.contains("device/hostile-vif/$3"));
        assert!(DOM0_FUNCTIONS.contains("dd_hostile_net \"$a\""));
        assert!(DOM0_FUNCTIONS.contains("dd_report \"$dd\" dd-hostile-net vif"));
        // The go key the program waits for is the one dom0 writes.
        assert!(DOMU_SCRIPT.contains("--go hostile-net-go"));
        assert!(DOM0_FUNCTIONS.contains("data/hostile-net-go"));
        assert!(DOMU_SCRIPT.contains("verdict dd-hostile PASS"));
        assert!(DOM0_FUNCTIONS.contains("device/hostile-vbd/$3"));
        assert!(DOM0_FUNCTIONS.contains("dd_hostile() {"));
        // The end of the attacks is the domU's own line, never a tool's failure.
        assert!(DOM0_FUNCTIONS.contains("wait_secs 240 hostile_done"));
        assert!(!DOM0_FUNCTIONS.contains("domu_wait"));
        // The domU's summary line is cut after "HOSTILE blk SUMMARY ".
        assert_eq!("HOSTILE blk SUMMARY ".len(), 20);
    }
}
