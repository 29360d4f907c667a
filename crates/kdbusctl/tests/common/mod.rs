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
    let mut child = Command::new(kdbusd_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}
