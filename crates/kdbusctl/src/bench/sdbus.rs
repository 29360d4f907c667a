//! The second client library of `kdbusctl bench --dbus-compare --client sd-bus`:
//! systemd's sd-bus, through a small C program (`sdbus_client.c`) that runs the same
//! workloads as the bench's own client.
//!
//! A broker that is only fast with our client would prove little: sd-bus is what most
//! C services on a systemd machine link, and it batches, allocates and waits in its
//! own ways. The program is compiled when the bench runs (`cc ... -lsystemd`, which
//! needs a C compiler and libsystemd's headers: `libsystemd-dev`), so that building
//! kdbusctl never depends on them. One process serves one broker for the whole run: it
//! starts an echo service of its own (a forked child with its own connection), then
//! answers one command per line on stdin (`rr N`, `pipe N`, `large N`, `setup N TURN`,
//! `broadcast N SUBSCRIBERS`) with `ok ELAPSED_NS COUNT` on stdout. The turns stay
//! ours, so the brokers alternate exactly as with the bench's own client.

use super::BenchResult;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

const SOURCE: &str = include_str!("sdbus_client.c");

/// Compile the client into `dir`; the error says what is missing.
pub(crate) fn build(dir: &Path) -> BenchResult<PathBuf> {
    let src = dir.join("sdbus_client.c");
    let bin = dir.join("sdbus-bench");
    std::fs::write(&src, SOURCE)?;
    let out = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .args(["-lsystemd", "-lpthread"])
        .output()
        .map_err(|e| format!("cc: {e} (the sd-bus client needs a C compiler)"))?;
    if !out.status.success() {
        return Err(format!(
            "compiling the sd-bus client failed (it needs libsystemd's headers: \
             libsystemd-dev): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(bin)
}

/// One sd-bus client process serving one broker.
pub(crate) struct SdBus {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl SdBus {
    /// Start `bin` on `address` with `size`-byte calls; returns once its echo
    /// service answers.
    pub(crate) fn start(bin: &Path, address: &str, size: usize) -> BenchResult<SdBus> {
        let mut child = Command::new(bin)
            .arg(address)
            .arg(size.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let to = child.stdin.take().ok_or("no stdin")?;
        let from = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut s = SdBus { child, to, from };
        let line = s.line()?;
        if line != "ready" {
            return Err(format!("sd-bus client: {line}").into());
        }
        Ok(s)
    }

    fn line(&mut self) -> BenchResult<String> {
        let mut line = String::new();
        if self.from.read_line(&mut line)? == 0 {
            return Err("the sd-bus client exited".into());
        }
        Ok(line.trim().to_string())
    }

    /// Run one command: how long it took and what it counted.
    pub(crate) fn command(&mut self, cmd: &str) -> BenchResult<(Duration, u64)> {
        writeln!(self.to, "{cmd}")?;
        self.to.flush()?;
        let line = self.line()?;
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("ok"), Some(ns), Some(n)) => Ok((Duration::from_nanos(ns.parse()?), n.parse()?)),
            _ => Err(format!("sd-bus client, on {cmd:?}: {line}").into()),
        }
    }
}

impl Drop for SdBus {
    fn drop(&mut self) {
        // Its stdin closing ends it (and its service); a kill covers a stuck one.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
