//! Runs the real `purser` binary as a child process on a data directory.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub mod ledger;
pub mod stripe;
pub mod stripe_standin;

/// The first admin key of every test server.
pub const ADMIN_KEY: &str = "sk_test_admin_crash_0123456789";

/// How long a server gets to answer `/healthz` (or to stop).
const START_DEADLINE: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The `purser` binary cargo built for these tests.
pub fn purser() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_purser"));
    command
        .env_remove("PURSER_URL")
        .env_remove("PURSER_API_KEY")
        .env_remove("PURSER_ADMIN_KEY")
        .env("PURSER_LOG", "warn")
        .stdin(Stdio::null());
    command
}

/// `purser serve` running as a child process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The server's stdout and stderr.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `purser serve` on `data_dir` and waits until `/healthz` answers;
    /// panics with the server's log if it does not within 10 s. The log goes
    /// to `<data_dir>/../<log_name>.log`.
    pub fn start(data_dir: &Path, log_name: &str) -> ServerProcess {
        ServerProcess::start_with(data_dir, log_name, &[])
    }

    /// [`ServerProcess::start`] with `extra_args` after the `serve` arguments
    /// (e.g. `&["--payment-provider", "instant"]`).
    pub fn start_with(data_dir: &Path, log_name: &str, extra_args: &[&str]) -> ServerProcess {
        let work_dir = data_dir.parent().expect("the data directory has a parent");
        let mut args = vec![std::ffi::OsStr::new("--data-dir"), data_dir.as_os_str()];
        args.extend(extra_args.iter().map(std::ffi::OsStr::new));
        ServerProcess::spawn(work_dir, log_name, &args, "warn", &[])
    }

    /// [`ServerProcess::start_with`] with environment variables set for it.
    pub fn start_with_env(
        data_dir: &Path,
        log_name: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let work_dir = data_dir.parent().expect("the data directory has a parent");
        let mut args = vec![std::ffi::OsStr::new("--data-dir"), data_dir.as_os_str()];
        args.extend(extra_args.iter().map(std::ffi::OsStr::new));
        ServerProcess::spawn(work_dir, log_name, &args, "warn", env)
    }

    /// Runs `purser serve --listen 127.0.0.1:0 <args>` in `work_dir`, logging
    /// at `log_level` to `<work_dir>/<log_name>.log`, learns the port the
    /// server bound from its `purser: serving on` line, and waits until
    /// `/healthz` answers. (A port picked by the test and handed over would
    /// race every other test and outgoing connection for it.)
    fn spawn(
        work_dir: &Path,
        log_name: &str,
        args: &[&std::ffi::OsStr],
        log_level: &str,
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let log = work_dir.join(format!("{log_name}.log"));
        let out = File::create(&log).expect("create the server log");
        let err = out.try_clone().expect("clone the log handle");
        let child = purser()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("PURSER_ADMIN_KEY", ADMIN_KEY)
            .env("PURSER_LOG", log_level)
            .envs(env.iter().copied())
            .current_dir(work_dir)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn purser serve");
        let mut server = ServerProcess {
            child,
            base: String::new(),
            log,
        };
        let port = server.wait_healthy();
        server.base = format!("http://127.0.0.1:{port}");
        server
    }

    /// Waits for the `purser: serving on http://127.0.0.1:<port>` line, then
    /// for `/healthz` on that port; returns the port.
    fn wait_healthy(&mut self) -> u16 {
        let deadline = Instant::now() + START_DEADLINE;
        let mut port = None;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                panic!(
                    "the server exited ({status}) before answering:\n{}",
                    self.log_text()
                );
            }
            if port.is_none() {
                port = serving_port(&self.log_text());
            }
            if let Some(port) = port.filter(|&port| healthz(port)) {
                return port;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the server did not answer /healthz within {START_DEADLINE:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, then reaps the process.
    pub fn kill(mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server")
    }

    /// SIGINT (the server's graceful shutdown); waits up to 10 s for it to exit.
    pub fn stop(self) -> ExitStatus {
        self.signal_and_wait("INT")
    }

    /// SIGTERM (what a service manager sends): drains like SIGINT.
    pub fn terminate(self) -> ExitStatus {
        self.signal_and_wait("TERM")
    }

    fn signal_and_wait(mut self, signal: &str) -> ExitStatus {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the server did not stop within {START_DEADLINE:?} of SIG{signal}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|error| format!("(no log: {error})"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // A panicking test must not leave a server behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The port of the `purser: serving on http://127.0.0.1:<port>` line in a
/// server's output, once it is there.
pub fn serving_port(output: &str) -> Option<u16> {
    output.lines().find_map(|line| {
        line.strip_prefix("purser: serving on http://127.0.0.1:")?
            .trim()
            .parse()
            .ok()
    })
}

/// `GET /healthz` answered 200, over a bare connection with short timeouts.
fn healthz(port: u16) -> bool {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let request =
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.take(4096).read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}

/// `purser verify --data-dir <dir>`, run from the data directory's parent.
pub fn verify(data_dir: &Path) -> Output {
    purser()
        .arg("verify")
        .arg("--data-dir")
        .arg(data_dir)
        .current_dir(data_dir.parent().expect("the data directory has a parent"))
        .output()
        .expect("run purser verify")
}

/// A small seeded generator (SplitMix64): tests print the seed and replay it.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The seed from `variable` if set, else a fresh one from the clock.
    pub fn seed_from_env(variable: &str) -> u64 {
        match std::env::var(variable) {
            Ok(text) => text
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{variable} must be an unsigned integer, got {text:?}")),
            Err(_) => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_nanos();
                (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
            }
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high);
        low + self.next_u64() % (high - low + 1)
    }
}

impl ServerProcess {
    /// Starts `purser serve --database-url <database_url>` and waits until
    /// `/healthz` answers (a writer or a standby); panics with the server's
    /// log if it does not within 10 s. It runs in `work_dir` (so no stray
    /// `purser.toml` is picked up) and logs to `<work_dir>/<log_name>.log`.
    pub fn start_on_database(database_url: &str, work_dir: &Path, log_name: &str) -> ServerProcess {
        let args = [
            std::ffi::OsStr::new("--database-url"),
            std::ffi::OsStr::new(database_url),
        ];
        ServerProcess::spawn(work_dir, log_name, &args, "info", &[])
    }

    /// Sends `signal` (a `kill` name such as `STOP` or `CONT`) to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }
}
