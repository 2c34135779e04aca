//! `hostile-frontend`: a blkif or netif frontend with bad intentions, for a Linux domU.
//!
//! It attaches to the backend of one of its domain's `vbd` (`blk`) or `vif` (`net`) devices
//! the way a real frontend does (grants through `/dev/xen/gntalloc`, an event channel through
//! `/dev/xen/evtchn`, xenstore through `/dev/xen/xenbus`, then `Connected`) and misbehaves,
//! one phase per connection (see [`blk::Phase`], [`net::Phase`]): garbage slots, unknown
//! operations, bad segment counts and sector ranges, zero-length and oversize packets,
//! unknown and read-only grants, indirect pages of junk, bogus and endless extra-info slots,
//! runaway ring indexes, RX buffers with bad references and duplicate ids, event floods,
//! missing and garbage keys and xenstore games. Each phase is logged with what the backend
//! did and whether that is what a correct backend does.
//!
//! ```text
//! hostile-frontend blk|net [--class CLASS] [--device ID] [--phase NAME]... [--seed N] [--go KEY] [--report KEY]
//! hostile-frontend list
//! ```
//!
//! `--class` is the directory under our `device/` holding the device (default `vbd` / `vif`). The
//! real-Xen scenario uses another name, so that the domU's own xen-blkfront (loaded for other
//! scenarios) does not claim the device first: a backend only follows its `frontend` node,
//! whatever class directory that names. `--go KEY`: after the `START` line, wait (at most 600 s)
//! until our domain's `data/KEY` exists before the first phase, so that dom0 can start the
//! well-behaved frontend first and the attacks overlap its I/O.
//!
//! Output: `HOSTILE <blk|net> <phase> PASS|FAIL|SKIP <detail>` per phase, then `HOSTILE
//! <blk|net> SUMMARY <ok>/<n> as expected`. With `--report KEY`, the summary is also written to our domain's
//! `data/KEY` node, where dom0 reads it. Exit status 0 when every phase went as expected.
//!
//! Built statically (`-C target-feature=+crt-static`) so it runs in a busybox initramfs.

use hostile_frontend::{blk, dev, net, os};

use std::io::Write as _;
use std::process::ExitCode;

use xen_xenbus::client::Config;
use xen_xenbus::{Store, Xs};

const USAGE: &str =
    "usage: hostile-frontend blk|net [--class CLASS] [--device ID] [--phase NAME]... \
                     [--seed N|0xHEX] [--go KEY] [--report KEY] | list";

/// Which protocol is attacked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Kind {
    /// blkif, a `vbd`.
    #[default]
    Blk,
    /// netif, a `vif`.
    Net,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Blk => "blk",
            Kind::Net => "net",
        }
    }

    /// Every phase name, in run order.
    fn all(self) -> Vec<&'static str> {
        match self {
            Kind::Blk => blk::Phase::ALL.iter().map(|p| p.name()).collect(),
            Kind::Net => net::Phase::ALL.iter().map(|p| p.name()).collect(),
        }
    }

    fn known(self, name: &str) -> bool {
        match self {
            Kind::Blk => blk::Phase::parse(name).is_some(),
            Kind::Net => net::Phase::parse(name).is_some(),
        }
    }
}

#[derive(Debug, Default)]
struct Options {
    kind: Kind,
    class: String,
    device: Option<String>,
    phases: Vec<String>,
    seed: u64,
    go: Option<String>,
    report: Option<String>,
}

fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut it = args.iter();
    let kind = match it.next().map(String::as_str) {
        Some("blk") => Kind::Blk,
        Some("net") => Kind::Net,
        Some("list") => return Ok(None),
        _ => return Err(USAGE.into()),
    };
    let mut o = Options {
        kind,
        class: if kind == Kind::Net { "vif" } else { "vbd" }.into(),
        seed: 0x5eed,
        ..Options::default()
    };
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--class" => o.class.clone_from(value()?),
            "--device" => o.device = Some(value()?.clone()),
            "--phase" => {
                let v = value()?;
                if !kind.known(v) {
                    return Err(format!("unknown {} phase {v}", kind.name()));
                }
                o.phases.push(v.clone());
            }
            "--seed" => o.seed = parse_seed(value()?).ok_or("--seed needs a number")?,
            "--go" => o.go = Some(value()?.clone()),
            "--report" => o.report = Some(value()?.clone()),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    if o.phases.is_empty() {
        o.phases = kind.all().into_iter().map(String::from).collect();
    }
    Ok(Some(o))
}

/// A decimal number, or hexadecimal after `0x`.
fn parse_seed(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "HOSTILE {line}");
    let _ = out.flush();
}

fn run(o: &Options) -> Result<bool, String> {
    let k = o.kind.name();
    let gnt = os::Gntalloc::open().map_err(|e| e.to_string())?;
    let mut ev = os::Evtchn::open().map_err(|e| e.to_string())?;
    let mut xs = Xs::new(
        os::XenbusDev::open().map_err(|e| e.to_string())?,
        Config::default(),
    );
    // 100 ms per wait: 10 s per xenstore request at most.
    xs.set_max_waits(100);
    let mut dev = dev::Dev::find(xs, &o.class, o.device.as_deref())?;
    say(&format!(
        "{k} START frontend {} backend {} (domain {}), {} phases, seed {}",
        dev.fe,
        dev.be,
        dev.be_id,
        o.phases.len(),
        o.seed
    ));
    if let Some(key) = &o.go {
        let path = format!("data/{key}");
        let start = std::time::Instant::now();
        while dev.xs.read(&path).is_err() {
            if start.elapsed() >= std::time::Duration::from_secs(600) {
                return Err(format!("{path} did not appear within 600 s"));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        say(&format!("{k} GO after {} ms", start.elapsed().as_millis()));
    }
    let mac = dev
        .xs
        .read_string(&format!("{}/mac", dev.fe))
        .ok()
        .and_then(|m| net::parse_mac(&m))
        .unwrap_or(net::DEFAULT_MAC);
    let mut ok = 0;
    let mut failed = Vec::new();
    for name in &o.phases {
        // (verdict, as expected, detail)
        let (verdict, as_expected, detail) = match o.kind {
            Kind::Blk => {
                let mut env = blk::Env {
                    dev: &mut dev,
                    gnt: &gnt,
                    ev: &mut ev,
                    seed: o.seed,
                };
                let p = blk::Phase::parse(name).ok_or("phase")?;
                let r = blk::run(&mut env, p);
                let v = match (r.skipped, r.as_expected) {
                    (true, _) => "SKIP",
                    (false, true) => "PASS",
                    (false, false) => "FAIL",
                };
                (v, r.as_expected, r.detail)
            }
            Kind::Net => {
                let mut env = net::Env {
                    dev: &mut dev,
                    gnt: &gnt,
                    ev: &mut ev,
                    seed: o.seed,
                    mac,
                };
                let p = net::Phase::parse(name).ok_or("phase")?;
                let r = net::run(&mut env, p);
                let v = if r.as_expected { "PASS" } else { "FAIL" };
                (v, r.as_expected, r.detail)
            }
        };
        say(&format!("{k} {name} {verdict} {detail}"));
        if as_expected {
            ok += 1;
        } else {
            failed.push(name.as_str());
        }
    }
    let summary = format!(
        "{ok}/{} as expected{}",
        o.phases.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (not: {})", failed.join(" "))
        }
    );
    say(&format!("{k} SUMMARY {summary}"));
    if let Some(key) = &o.report {
        let path = format!("data/{key}");
        if let Err(e) = dev.xs.write_str(&path, &summary) {
            say(&format!("{k} cannot write {path}: {e}"));
        }
    }
    Ok(failed.is_empty())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            for p in blk::Phase::ALL {
                println!("blk {:<18} {:?}", p.name(), p.expect());
            }
            for p in net::Phase::ALL {
                println!("net {:<18} {:?}", p.name(), p.expect());
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            say(&format!("{} ERROR {e}", o.kind.name()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let o = parse(&args(
            "blk --phase runaway --phase bad-op --seed 9 --go g --report h",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(o.phases, ["runaway", "bad-op"]);
        assert_eq!(o.kind, Kind::Blk);
        assert_eq!(o.seed, 9);
        assert_eq!(o.report.as_deref(), Some("h"));
        assert_eq!(o.go.as_deref(), Some("g"));
        let o = parse(&args("blk")).unwrap().unwrap();
        assert_eq!(o.phases.len(), blk::Phase::ALL.len());
        assert_eq!(o.class, "vbd");
        let o = parse(&args("net --phase runaway-rx")).unwrap().unwrap();
        assert_eq!((o.kind, o.class.as_str()), (Kind::Net, "vif"));
        assert_eq!(o.phases, ["runaway-rx"]);
        let o = parse(&args("net")).unwrap().unwrap();
        assert_eq!(o.phases.len(), net::Phase::ALL.len());
        // A phase of the other protocol is refused.
        assert!(parse(&args("net --phase bad-op")).is_err());
        assert!(parse(&args("blk --phase runaway-rx")).is_err());
        let o = parse(&args("blk --class hostile-vbd --seed 0xfF01"))
            .unwrap()
            .unwrap();
        assert_eq!((o.class.as_str(), o.seed), ("hostile-vbd", 0xff01));
        assert!(parse(&args("blk --seed 0xzz")).is_err());
        assert!(parse(&args("list")).unwrap().is_none());
        assert!(parse(&args("blk --phase nope")).is_err());
        assert!(parse(&args("blk --seed")).is_err());
        assert!(parse(&args("")).is_err());
    }
}
