//! Harness for end-to-end tests: starts real `strata-broker` processes on
//! free loopback ports (reading the ports from the broker's ready line),
//! kills them with SIGKILL or stops them with SIGTERM, runs the `strata`
//! CLI, speaks raw HTTP and raw gRPC for bad-input tests, polls
//! conditions with deadlines (tests never sleep to wait for state), and
//! builds network namespaces for partition tests without root (a private
//! user namespace, see [`enter_lab_namespaces`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of a workspace binary, building the binaries once if missing.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let path = dir.join(name);
    // Build once per test process so the binaries are never stale (a no-op
    // when they are up to date).
    BUILT.get_or_init(|| {
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "strata-broker",
            "-p",
            "strata-cli",
            "-p",
            "strata-ml",
            "--bins",
        ]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for the binaries");
        assert!(status.success(), "building the binaries failed");
    });
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// Logs the test process's own tracing (the client library's) to stderr
/// when `STRATA_TEST_LOG` holds a filter, e.g. `strata_client=debug`.
pub fn init_test_logging() {
    if let Ok(filter) = std::env::var("STRATA_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// A temporary directory for a test's data, deleted at the end unless
/// `STRATA_TEST_KEEP` is set (then its path is printed, for diagnosing a
/// failure). Keep the guard alive for the test's duration.
pub fn test_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    let tmp = tempfile::tempdir().unwrap();
    if std::env::var_os("STRATA_TEST_KEEP").is_some() {
        let path = tmp.keep();
        println!("keeping the test's data in {}", path.display());
        (path, None)
    } else {
        (tmp.path().to_path_buf(), Some(tmp))
    }
}

/// Polls `cond` until it holds or `timeout` passes (then panics with `what`).
pub fn poll_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_millis(1);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(wait); // backoff between polls of a condition, not a wait for state
        wait = (wait * 2).min(Duration::from_millis(50));
    }
}

/// Async variant of [`poll_until`].
pub async fn poll_until_async<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_millis(1);
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(50));
    }
}

/// A running `strata-broker` process.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    /// gRPC address.
    pub grpc: String,
    /// HTTP address.
    pub http: String,
    /// Kafka protocol address (a free port unless the caller fixed one).
    pub kafka: String,
    /// Data directory.
    pub data_dir: PathBuf,
    args: Vec<String>,
    starts: u32,
    netns: Option<String>,
}

impl BrokerProcess {
    /// Starts a broker on `data_dir` with free ports and extra `args`.
    pub fn start(data_dir: &Path, args: &[&str]) -> Self {
        Self::spawn(None, data_dir, args)
    }

    /// Starts a broker inside network namespace `netns` (see [`NetLab`]).
    pub fn start_in(netns: &str, data_dir: &Path, args: &[&str]) -> Self {
        Self::spawn(Some(netns), data_dir, args)
    }

    fn spawn(netns: Option<&str>, data_dir: &Path, args: &[&str]) -> Self {
        let mut b = BrokerProcess {
            child: None,
            grpc: String::new(),
            http: String::new(),
            kafka: String::new(),
            data_dir: data_dir.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            starts: 0,
            netns: netns.map(str::to_owned),
        };
        b.launch();
        b
    }

    fn launch(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(
            self.data_dir
                .with_extension(format!("stderr.{}", self.starts)),
        )
        .unwrap();
        // `ip netns exec` execs the broker, so the child's pid is the
        // broker's and kill -9 reaches it.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("strata-broker"));
                c
            }
            None => Command::new(bin("strata-broker")),
        };
        let mut child = cmd
            .arg("--data-dir")
            .arg(&self.data_dir)
            // Free ports, unless the caller fixed the addresses (a cluster
            // node keeps its addresses across restarts, as in production).
            .args(if self.args.iter().any(|a| a == "--grpc-addr") {
                &[][..]
            } else {
                &["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"][..]
            })
            .args(if self.args.iter().any(|a| a == "--kafka-addr") {
                &[][..]
            } else {
                &["--kafka-addr", "127.0.0.1:0"][..]
            })
            .args(&self.args)
            // STRATA_BROKER_LOG turns up the brokers' logging when a test
            // needs diagnosing (their stderr goes to <data_dir>.stderr.N).
            .env(
                "RUST_LOG",
                std::env::var("STRATA_BROKER_LOG")
                    .unwrap_or_else(|_| strata_broker::DEFAULT_LOG_FILTER.into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning strata-broker");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("strata-broker ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "strata-broker did not become ready; see {}",
                    self.data_dir.with_extension("stderr.N").display()
                );
            }
        };
        for part in line.split_whitespace() {
            if let Some(a) = part.strip_prefix("grpc=") {
                self.grpc = a.to_owned();
            }
            if let Some(a) = part.strip_prefix("http=") {
                self.http = a.to_owned();
            }
            if let Some(a) = part.strip_prefix("kafka=") {
                self.kafka = a.to_owned();
            }
        }
        self.child = Some(child);
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, and wait for a clean exit; returns the exit status's success.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "sending SIGTERM failed");
        c.wait().unwrap().success()
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the running broker.
    pub fn signal(&self, signal: &str) {
        let c = self.child.as_ref().expect("a running broker");
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &c.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "sending SIG{signal} failed");
    }

    /// Starts the broker again on the same data directory (new ports).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running broker");
        self.launch();
    }

    /// The file the current run's stderr (its log) goes to.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir
            .with_extension(format!("stderr.{}", self.starts))
    }

    /// The value of `--flag` among the broker's arguments.
    pub fn arg(&self, flag: &str) -> Option<&str> {
        self.args
            .iter()
            .position(|a| a == flag)
            .and_then(|i| self.args.get(i + 1))
            .map(String::as_str)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the `strata` CLI against `broker`.
pub fn cli(broker: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(bin("strata"))
        .args(["--broker", broker])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning strata");
    if let Some(input) = stdin {
        let mut s = child.stdin.take().unwrap();
        s.write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// A minimal HTTP/1.1 request; returns (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, dechunk(&body))
}

fn dechunk(body: &str) -> String {
    // axum answers with Content-Length for JSON; chunked bodies are joined.
    if !body.contains("\r\n") {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A gRPC codec that sends and receives raw bytes, to send garbage.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let v = bytes::Buf::chunk(src).to_vec();
        bytes::Buf::advance(src, v.len());
        Ok(Some(v))
    }
}

/// Sends `body` as the raw request message of gRPC `method` (e.g.
/// `/strata.v1.Strata/Produce`).
pub async fn raw_grpc(
    addr: &str,
    method: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(method),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

/// Free `ip:port` addresses, distinct (all held open until all are chosen).
pub fn free_addrs(ip: &str, n: usize) -> Vec<String> {
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind((ip, 0)).unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

/// Three nodes started with `--peers` (they form the cluster themselves);
/// node `i` (1-based) is `nodes[i - 1]`, all its addresses on 127.0.0.i
/// (fixed, so they survive restarts), data in `dir/n<i>`.
pub fn start_cluster(dir: &Path) -> Vec<BrokerProcess> {
    start_cluster_with(dir, true, &[])
}

/// Like [`start_cluster`]; without `peers` the nodes wait for `strata
/// cluster init`. `extra` goes to every node.
pub fn start_cluster_with(dir: &Path, peers_flag: bool, extra: &[&str]) -> Vec<BrokerProcess> {
    // Per node: raft, grpc, http, kafka.
    let node_addrs: Vec<Vec<String>> = (1..=3)
        .map(|i| free_addrs(&format!("127.0.0.{i}"), 4))
        .collect();
    let addrs: Vec<String> = node_addrs.iter().map(|a| a[0].clone()).collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    (1..=3)
        .map(|i| {
            let id = i.to_string();
            let (grpc, http) = (&node_addrs[i - 1][1], &node_addrs[i - 1][2]);
            let kafka = &node_addrs[i - 1][3];
            let mut args = vec![
                "--grpc-addr",
                grpc,
                "--http-addr",
                http,
                "--kafka-addr",
                kafka,
                "--node-id",
                &id,
                "--raft-addr",
                &addrs[i - 1],
            ];
            if peers_flag {
                args.extend(["--peers", &peers]);
            }
            args.extend(extra);
            BrokerProcess::start(&dir.join(format!("n{i}")), &args)
        })
        .collect()
}

/// The partition's leader as the cluster reports it, asked of a running node.
pub async fn leader(nodes: &mut [BrokerProcess], topic: &str) -> Option<u64> {
    for n in nodes.iter_mut() {
        if !n.is_running() {
            continue;
        }
        let Ok(admin) = strata_client::Admin::connect(&n.grpc).await else {
            continue;
        };
        if let Ok(d) = admin.describe_topic(topic).await
            && let Some(l) = d.partition_info.first().and_then(|p| p.leader)
        {
            return Some(l);
        }
    }
    None
}

/// Set in the child that [`enter_lab_namespaces`] starts.
const LAB_INSIDE: &str = "STRATA_NETLAB_INSIDE";

/// Run inside the new namespaces before the test: a private `/run` (so
/// `ip netns add` can create `/run/netns`, which an unprivileged user
/// cannot on the host, and the namespace files never touch the host's),
/// loopback up, then the test binary, its stderr merged into its stdout.
const LAB_SETUP: &str = r#"set -e
mount -t tmpfs strata-netlab /run
ip link set lo up
exec "$@" 2>&1"#;

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Runs the calling test in private network and mount namespaces, so
/// [`NetLab`] needs no root: for a user who is not root, also in a new
/// user namespace where that user is root (`unshare --user
/// --map-root-user --net --mount`; root needs only `--net --mount`). The
/// test binary re-runs itself there with `--exact test`; everything the
/// lab creates lives and dies with those namespaces.
///
/// Returns true in the re-run process (run the test's body there) and
/// false in the original one once the re-run passed (return at once).
/// Panics, with the re-run's output, when it failed or did not run
/// exactly that one test; in particular where user namespaces are not
/// allowed (`user.max_user_namespaces` 0, or
/// `kernel.apparmor_restrict_unprivileged_userns` 1), or `unshare`
/// (util-linux) or `ip` (iproute2) is missing. Never a silent skip.
pub fn enter_lab_namespaces(test: &str) -> bool {
    if std::env::var_os(LAB_INSIDE).is_some() {
        return true;
    }
    // Build the binaries out here, where cargo may reach the network.
    bin("strata-broker");
    let root = effective_uid() == Some(0);
    let mut cmd = Command::new("unshare");
    if !root {
        cmd.args(["--user", "--map-root-user"]);
    }
    let out = cmd
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .args(["sh", "-c", LAB_SETUP, "strata-netlab"])
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(LAB_INSIDE, "1")
        .stdin(Stdio::null())
        .output()
        .expect("running unshare (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    // Shown with the test's output (on failure, or with --nocapture); the
    // setup's own errors (unshare, mount, ip) are on stderr.
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    let ran_one = text
        .lines()
        .any(|l| l.starts_with("test result: ok. 1 passed;"));
    assert!(
        out.status.success() && ran_one,
        "{test} did not pass in its own {}network and mount namespaces \
         (exit {:?}; output above). Partition tests need iproute2, util-linux's \
         unshare and, unless run as root, unprivileged user namespaces \
         (sysctl user.max_user_namespaces > 0; on Ubuntu also \
         kernel.apparmor_restrict_unprivileged_userns = 0).",
        if root { "" } else { "user, " },
        out.status.code()
    );
    false
}

/// Network namespaces for partition tests: `n` namespaces,
/// each with one veth into a bridge in the test's namespace, addresses
/// 10.213.S.i/24 (i = 1..n; the bridge, where the test's clients live, is
/// .254). Partitions are blackhole routes inside the namespaces, so the
/// test can still reach every node. Everything is deleted on drop.
#[derive(Debug)]
pub struct NetLab {
    tag: String,
    subnet: u8,
    n: usize,
    blackholes: Vec<(usize, usize)>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetLab {
    /// Creates the namespaces and the bridge. Call it in a test that
    /// began with [`enter_lab_namespaces`] (which gives it the privileges,
    /// any user). Panics (with the reason) when an `ip` command fails:
    /// partition tests never skip.
    pub fn new(n: usize) -> Self {
        // Unique per lab, also between the tests of one process.
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let lab = NetLab {
            tag: format!("st{}{}", pid % 100_000, (b'a' + (k % 26) as u8) as char),
            subnet: ((pid + k) % 250) as u8,
            n,
            blackholes: Vec::new(),
        };
        let br = lab.bridge();
        ip(&["link", "add", &br, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}/24", lab.addr(254)), "dev", &br]);
        ip(&["link", "set", &br, "up"]);
        for i in 1..=n {
            let (ns, host, inner) = (
                lab.ns(i),
                format!("{}h{i}", lab.tag),
                format!("{}v{i}", lab.tag),
            );
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["link", "set", &host, "master", &br]);
            ip(&["link", "set", &host, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lab.addr(i)),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    /// Namespace of node `i` (1-based).
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Address of node `i` (254: the test's side).
    pub fn addr(&self, i: usize) -> String {
        format!("10.213.{}.{i}", self.subnet)
    }

    /// Cuts node `i` off from every other node (both directions); the
    /// test's side still reaches it.
    pub fn isolate(&mut self, i: usize) {
        for j in (1..=self.n).filter(|j| *j != i) {
            for (from, to) in [(i, j), (j, i)] {
                ip(&[
                    "-n",
                    &self.ns(from),
                    "route",
                    "add",
                    "blackhole",
                    &format!("{}/32", self.addr(to)),
                ]);
                self.blackholes.push((from, to));
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.blackholes) {
            ip(&[
                "-n",
                &self.ns(from),
                "route",
                "del",
                "blackhole",
                &format!("{}/32", self.addr(to)),
            ]);
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for i in 1..=self.n {
            // Deleting one end of a veth deletes both.
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}h{i}", self.tag)])
                .output();
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
    }
}

/// Polls until the cluster's metadata lists `n` brokers.
pub async fn wait_for_brokers(admin: &strata_client::Admin, n: usize) {
    poll_until_async("nodes registered", Duration::from_secs(30), || async move {
        admin
            .metadata(&[])
            .await
            .is_ok_and(|m| m.brokers.len() == n)
    })
    .await;
}

/// Polls until every replica of the cluster's first partition has caught
/// up with its leader and, if given, the leader's high watermark is `hw`.
pub async fn wait_caught_up(admin: &strata_client::Admin, hw: Option<u64>, timeout: Duration) {
    poll_until_async("replicas caught up", timeout, || async move {
        admin.cluster_status().await.is_ok_and(|st| {
            let p = &st.partitions[0];
            hw.is_none_or(|h| p.high_watermark == Some(h))
                && p.lag
                    .values()
                    .all(|l| *l == strata_client::ReplicaLag::Records(0))
        })
    })
    .await;
}

/// A consumer of partition 0 of `topic` from its earliest offset (it
/// follows the partition's leader from `bootstrap`).
pub async fn reader(bootstrap: &str, topic: &str) -> strata_client::Consumer {
    strata_client::Consumer::connect(
        bootstrap,
        topic,
        Some(vec![0]),
        strata_client::ConsumerConfig {
            reset: strata_client::ResetPolicy::Earliest,
            ..strata_client::ConsumerConfig::default()
        },
    )
    .await
    .unwrap()
}
