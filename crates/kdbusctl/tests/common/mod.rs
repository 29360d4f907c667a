//! What kdbusctl's tests share: the broker they run against.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// kdbusd is built next to kdbusctl by `cargo test --workspace`.
pub fn kdbusd_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_kdbusctl")).with_file_name("kdbusd");
    assert!(
        p.exists(),
        "{} missing: build the workspace (cargo build -p kdbusd)",
        p.display()
    );
    p
}

/// Start kdbusd with `args` and wait for its first line (the ready line, or the
/// address with `--print-address`): the child and that line.
pub fn start_kdbusd<S: AsRef<OsStr>>(args: &[S]) -> (Child, String) {
    let mut cmd = Command::new(kdbusd_bin());
    cmd.args(args).stderr(Stdio::null());
    first_line(cmd)
}

/// Start `cmd` with its stdout piped and wait for the first line it prints: the child
/// and that line.
pub fn first_line(mut cmd: Command) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // The rest is drained, not dropped: a closed pipe would end a child that prints
    // more (kdbusctl exits on EPIPE as C tools do on SIGPIPE).
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, line)
}
