//! Test harness: a real kdbusd in a temporary runtime directory.
#![allow(dead_code)]

use kdbus::{abi, Connection, HelloOptions};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Broker {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub control: PathBuf,
    pub bus: PathBuf,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kdbusd"))
            .arg("--runtime-dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn kdbusd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        assert!(
            line.starts_with("kdbusd ready:"),
            "unexpected first line: {line:?}"
        );
        let uid = rustix::process::getuid().as_raw();
        let bus = dir.path().join(format!("{uid}-user")).join("bus");
        let control = dir.path().join("control");
        Broker {
            child,
            dir,
            control,
            bus,
        }
    }

    /// An ordinary connection as the kdbus selftests make them: ACCEPT_FD, all
    /// metadata, 16 MiB pool, a description.
    pub fn conn(&self) -> Connection {
        Connection::hello(&self.bus, &test_hello()).expect("hello")
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

pub fn test_hello() -> HelloOptions {
    HelloOptions::new()
        .flags(abi::hello_flags::ACCEPT_FD)
        .attach_recv(abi::attach::ALL)
        .attach_send(abi::attach::ANY)
        .description("this-is-my-name")
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let _ = self.child.wait();
    }
}

pub fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}
