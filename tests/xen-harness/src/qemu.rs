//! Running QEMU: its own process group (killed as a whole on every exit path, including a
//! panic of the harness and SIGINT/SIGTERM), under `timeout` as a last-resort bound should
//! the harness itself be killed, with the serial console streamed line by line.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

/// What the reader thread reports.
#[derive(Debug)]
pub enum Output {
    /// One line of the serial console (carriage returns and other control bytes removed).
    Line(Instant, String),
    /// QEMU closed its output (it exited).
    Closed,
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// The uncompressed Xen image.
    pub xen: PathBuf,
    /// Xen's command line.
    pub xen_args: String,
    /// dom0's kernel.
    pub kernel: PathBuf,
    /// dom0's command line (no commas: QEMU separates multiboot modules with them).
    pub kernel_args: String,
    /// dom0's initramfs.
    pub initrd: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Hard upper bound on QEMU's life, enforced by `timeout(1)` even if the harness dies.
    pub hard_limit: Duration,
}

/// A running QEMU. Dropping it kills the whole process group.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    /// Kept open so QEMU never sees EOF on its serial input.
    _stdin: Option<ChildStdin>,
    killed: bool,
}

impl Qemu {
    /// The command line (for the log).
    fn command(spec: &BootSpec) -> Result<Command, String> {
        if spec.kernel_args.contains(',') {
            return Err("dom0 kernel arguments must not contain commas".into());
        }
        let mut cmd = Command::new("timeout");
        cmd.arg("--kill-after=5")
            .arg(format!("{}", spec.hard_limit.as_secs().max(1)))
            .arg("qemu-system-x86_64")
            .args(["-accel", "tcg,thread=multi"])
            // `max` gives Xen SVM (HVM/PVH guests); without -smap,-smep the PV dom0 crashes
            // under TCG. Without -fsgsbase, dom0 processes now and then run with another's FS
            // base (TLS) under TCG: static busybox and xl segfaulted on %fs-relative loads.
            .args(["-cpu", "max,-smap,-smep,-fsgsbase"])
            .args(["-m", &spec.memory_mib.to_string()])
            .args(["-smp", &spec.cpus.to_string()])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .args(["-serial", "stdio", "-monitor", "none"])
            .arg("-kernel")
            .arg(&spec.xen)
            .args(["-append", &spec.xen_args])
            .arg("-initrd")
            .arg(format!(
                "{} {},{}",
                spec.kernel.display(),
                spec.kernel_args,
                spec.initrd.display()
            ));
        Ok(cmd)
    }

    /// Starts QEMU in a new process group; the serial console is copied raw to `serial_log`
    /// and sent line by line on the returned channel.
    ///
    /// # Errors
    /// QEMU (or `timeout`) cannot be started, or the log cannot be created.
    pub fn spawn(spec: &BootSpec, serial_log: &Path) -> Result<(Qemu, Receiver<Output>), String> {
        let mut cmd = Qemu::command(spec)?;
        println!("xen-harness: {cmd:?}");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start qemu: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("qemu has no stdout pipe")?;
        let log = File::create(serial_log).map_err(|e| format!("{}: {e}", serial_log.display()))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || pump(stdout, BufWriter::new(log), &tx));
        Ok((
            Qemu {
                child,
                _stdin: stdin,
                killed: false,
            },
            rx,
        ))
    }

    /// Whether QEMU has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Kills the process group (QEMU, `timeout`) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        let pgid = self.child.id();
        // The group id is the leader's pid (`process_group(0)`); `kill -KILL -PGID` signals every
        // process in it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies QEMU's output to the log and splits it into lines.
fn pump(mut from: impl Read, mut log: BufWriter<File>, tx: &Sender<Output>) {
    let mut buf = [0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let _ = log.write_all(&buf[..n]);
        let _ = log.flush();
        for &b in &buf[..n] {
            match b {
                b'\n' => {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    line.clear();
                    if tx.send(Output::Line(Instant::now(), text)).is_err() {
                        return;
                    }
                }
                b'\t' => line.push(b' '),
                b if b < 0x20 || b == 0x7f => {}
                b => line.push(b),
            }
        }
    }
    if !line.is_empty() {
        let _ = tx.send(Output::Line(
            Instant::now(),
            String::from_utf8_lossy(&line).into_owned(),
        ));
    }
    let _ = tx.send(Output::Closed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BootSpec {
        BootSpec {
            xen: "/x/xen".into(),
            xen_args: "console=com1 dom0_mem=512M,max:512M".into(),
            kernel: "/x/vmlinuz".into(),
            kernel_args: "console=hvc0".into(),
            initrd: "/x/d0.cpio".into(),
            memory_mib: 2048,
            cpus: 2,
            hard_limit: Duration::from_secs(600),
        }
    }

    #[test]
    fn command_line_is_the_verified_recipe() {
        let cmd = Qemu::command(&spec()).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.starts_with("--kill-after=5 600 qemu-system-x86_64"));
        assert!(joined.contains("-accel tcg,thread=multi -cpu max,-smap,-smep,-fsgsbase"));
        assert!(joined.contains("-append console=com1 dom0_mem=512M,max:512M"));
        assert!(args.contains(&"/x/vmlinuz console=hvc0,/x/d0.cpio".to_string()));
        let mut bad = spec();
        bad.kernel_args = "a,b".into();
        assert!(Qemu::command(&bad).is_err());
    }

    #[test]
    fn pump_splits_lines_and_strips_control_bytes() {
        let dir = std::env::temp_dir().join(format!("xen-harness-pump-{}", std::process::id()));
        let log = File::create(&dir).unwrap();
        let (tx, rx) = mpsc::channel();
        pump(
            &b"(XEN) a\r\n(d1) b\x1b[0m\r\nlast"[..],
            BufWriter::new(log),
            &tx,
        );
        drop(tx);
        let lines: Vec<String> = rx
            .iter()
            .filter_map(|o| match o {
                Output::Line(_, l) => Some(l),
                Output::Closed => None,
            })
            .collect();
        assert_eq!(lines, ["(XEN) a", "(d1) b[0m", "last"]);
        assert_eq!(std::fs::read(&dir).unwrap().len(), 25);
        let _ = std::fs::remove_file(&dir);
    }
}
