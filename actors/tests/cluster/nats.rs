//! A 3-server NATS JetStream cluster on loopback for the cluster tests.
//!
//! Each server is a real nats-server process (the pinned one from `scripts/nats-server.sh`) with
//! file storage under a temporary directory, routes to the others on 127.0.0.1 and a monitoring
//! port that [`NatsCluster::wait_for_meta_leader`] polls. Servers can be killed with SIGKILL and
//! restarted on the same ports and storage; dropping the cluster kills every process it started
//! (by its own `Child` handles) and removes the directory unless the test failed.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Servers in a test cluster: the smallest that survives losing one (R3).
pub(crate) const SERVERS: usize = 3;
/// The longest wait for a meta leader after start or restart.
pub(crate) const META_LEADER_WAIT_MAX: Duration = Duration::from_secs(30);

/// How to run the servers.
#[derive(Clone, Debug)]
pub(crate) struct ClusterOptions {
    /// `jetstream { sync_interval: always }`: fsync every write before acknowledging it.
    pub(crate) sync_always: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { sync_always: true }
    }
}

struct Server {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    log: PathBuf,
    /// `None` while killed.
    child: Option<Child>,
}

/// A running 3-server JetStream cluster; killed on drop.
pub(crate) struct NatsCluster {
    binary: PathBuf,
    dir: PathBuf,
    servers: Vec<Server>,
}

/// The nats-server binary: `$CONFAB_NATS_SERVER`, else the workspace's
/// `target/nats-server/nats-server`. Fails the test (never skips it) when neither exists.
pub(crate) fn nats_server_binary() -> PathBuf {
    // This harness is compiled into the actors crate's tests and the root crate's: the
    // workspace's target directory is beside one manifest and inside the other.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fallback =
        [manifest.join("../target/nats-server/nats-server"), manifest.join("target/nats-server/nats-server")]
            .into_iter()
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| manifest.join("target/nats-server/nats-server"));
    let binary = std::env::var_os("CONFAB_NATS_SERVER").map(PathBuf::from).unwrap_or(fallback);
    assert!(
        binary.is_file(),
        "no nats-server at {}: run `bash scripts/nats-server.sh` first (it installs the pinned 2.14.6 into target/nats-server/), \
         or set CONFAB_NATS_SERVER",
        binary.display()
    );
    binary
}

/// `count` distinct free loopback ports (all bound at once, then released).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..count).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port")).collect();
    listeners.iter().map(|listener| listener.local_addr().expect("a bound address").port()).collect()
}

impl NatsCluster {
    /// Starts 3 servers and waits (at most [`META_LEADER_WAIT_MAX`]) for a meta leader.
    pub(crate) fn start(options: ClusterOptions) -> NatsCluster {
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        let binary = nats_server_binary();
        let dir = std::env::temp_dir().join(format!(
            "confab-nats-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the cluster's directory");
        let ports = free_ports(SERVERS * 3);
        let route_ports = &ports[SERVERS..SERVERS * 2];
        let routes: Vec<String> = route_ports.iter().map(|port| format!("nats-route://127.0.0.1:{port}")).collect();
        let sync = if options.sync_always { "sync_interval: always" } else { "" };
        let servers = (0..SERVERS)
            .map(|index| {
                let name = format!("n{}", index + 1);
                let store = dir.join(&name);
                let config = dir.join(format!("{name}.conf"));
                let text = format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                     jetstream {{ store_dir: \"{store}\", {sync} }}\n\
                     cluster {{ name: confab-test, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n",
                    client = ports[index],
                    monitor = ports[SERVERS * 2 + index],
                    store = store.display(),
                    route = route_ports[index],
                    routes = routes.join(", "),
                );
                fs::write(&config, text).expect("write a server config");
                Server {
                    log: dir.join(format!("{name}.log")),
                    name,
                    client_port: ports[index],
                    monitor_port: ports[SERVERS * 2 + index],
                    config,
                    child: None,
                }
            })
            .collect();
        let mut cluster = NatsCluster { binary, dir, servers };
        for index in 0..SERVERS {
            cluster.spawn(index);
        }
        cluster.wait_for_meta_leader();
        cluster
    }

    fn spawn(&mut self, index: usize) {
        let server = &mut self.servers[index];
        assert!(server.child.is_none(), "{} is already running", server.name);
        let log = fs::OpenOptions::new().create(true).append(true).open(&server.log).expect("open a server log");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&server.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone a log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", self.binary.display()));
        server.child = Some(child);
    }

    /// Every server's client URL, comma-separated (what `JetStreamLog::connect` takes).
    pub(crate) fn urls(&self) -> String {
        (0..SERVERS).map(|index| self.url(index)).collect::<Vec<_>>().join(",")
    }

    /// Server `index`'s client URL.
    pub(crate) fn url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[index].client_port)
    }

    /// The index of the server called `name` (`n1`…).
    pub(crate) fn index_of(&self, name: &str) -> usize {
        self.servers.iter().position(|server| server.name == name).unwrap_or_else(|| panic!("no server called {name}"))
    }

    /// Kills server `index` with SIGKILL (no shutdown, no flush) and reaps it.
    pub(crate) fn kill(&mut self, index: usize) {
        let server = &mut self.servers[index];
        let mut child = server.child.take().unwrap_or_else(|| panic!("{} is not running", server.name));
        // std's `Child::kill` sends SIGKILL on Unix, to this child's pid only.
        child.kill().expect("SIGKILL a server");
        child.wait().expect("reap a killed server");
    }

    /// Restarts server `index` on its ports and storage, and waits for a meta leader.
    pub(crate) fn restart(&mut self, index: usize) {
        self.spawn(index);
        self.wait_for_meta_leader();
    }

    /// Waits until a running server reports a JetStream meta leader and every running server
    /// reports itself healthy (`/healthz`: JetStream current with the meta leader, so an R3
    /// stream can be placed); returns the leader's name. Fails the test after
    /// [`META_LEADER_WAIT_MAX`].
    pub(crate) fn wait_for_meta_leader(&self) -> String {
        let deadline = Instant::now() + META_LEADER_WAIT_MAX;
        loop {
            let running = || self.servers.iter().filter(|server| server.child.is_some());
            let leader = running().find_map(|server| meta_leader(server.monitor_port));
            let healthy = running().all(|server| {
                http_get(server.monitor_port, "/healthz").is_some_and(|response| {
                    response.lines().next().is_some_and(|status| status.split(' ').nth(1) == Some("200"))
                })
            });
            if let Some(leader) = leader
                && healthy
            {
                return leader;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no JetStream meta leader after {META_LEADER_WAIT_MAX:?}; server logs in {}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The meta leader's name as the server on `monitor_port` reports it in `/jsz`.
fn meta_leader(monitor_port: u16) -> Option<String> {
    let body = http_get(monitor_port, "/jsz")?;
    // `"meta_cluster": { "name": …, "leader": "n2", … }`: no JSON parser in this test crate,
    // and the field is flat text inside that object.
    let meta = &body[body.find("\"meta_cluster\"")?..];
    let meta = &meta[..meta.find('}')?];
    let after = &meta[meta.find("\"leader\"")? + "\"leader\"".len()..];
    let value = after.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let leader = &value[..value.find('"')?];
    (!leader.is_empty()).then(|| leader.to_owned())
}

/// A bounded HTTP/1.0 GET on loopback; `None` on any failure (the server may be starting).
fn http_get(port: u16, path: &str) -> Option<String> {
    let timeout = Duration::from_secs(2);
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut response = String::new();
    stream.take(1 << 20).read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.").then_some(response)
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("nats-server logs kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
