//! End-to-end tests: a real tonic server on 127.0.0.1:0 inside the test, real tonic clients.
//! One binary with a module per area (link time on 2 cores).

mod bad_input;
mod bench_tool;
mod client;
mod confab_api;
mod connections;
mod crash;
mod deadlines;
mod jwt;
mod lifecycle;
mod limits;
mod line_chat;
mod names;
mod operations;
mod quotas;
mod security;
mod seed_api;
mod shutdown;
mod sim_cli;
mod slow_consumers;
mod store;
mod websocket;

use std::net::SocketAddr;
use std::time::Duration;

use confab::grpc::proto::{chat::chat_service_client::ChatServiceClient, confab_v1::chat_client::ChatClient};
use confab::grpc::server::{ServeError, ServerOptions, serve_with};
use confab_actors::{Engine, EngineConfig};
use confab_engine::Limits;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Every wait in these tests is bounded by this, so a bug fails a test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(20);

/// A server running inside the test.
struct TestServer {
    address: SocketAddr,
    engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(Limits::default()).await
    }

    async fn start_with(limits: Limits) -> Self {
        Self::start_with_options(limits, ServerOptions::default()).await
    }

    async fn start_with_options(limits: Limits, options: ServerOptions) -> Self {
        Self::start_with_engine(EngineConfig::default().with_limits(limits), options).await
    }

    async fn start_with_engine(config: EngineConfig, options: ServerOptions) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let address = listener.local_addr().expect("address");
        let engine = Engine::start(config).expect("engine");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(listener, engine.clone(), options, async {
            let _ = stopped.await;
        }));
        Self { address, engine, stop: Some(stop), task }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address)).expect("uri").connect().await.expect("connect")
    }

    async fn confab(&self) -> ChatClient<Channel> {
        ChatClient::new(self.channel().await)
    }

    async fn seed(&self) -> ChatServiceClient<Channel> {
        ChatServiceClient::new(self.channel().await)
    }

    /// Triggers shutdown and waits (bounded) for the server to finish.
    async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, &mut self.task).await.expect("server stops in time").expect("server task")
    }
}

/// A request with metadata `key: value`.
fn with_metadata<T>(message: T, key: &'static str, value: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(key, value.parse().expect("ascii metadata"));
    request
}

/// Starts the `confab serve` binary with `args`, stdout and stderr piped (killed when dropped),
/// and returns it with the gRPC address its start-up line gives.
async fn serve_child<I, S>(args: I) -> (tokio::process::Child, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .arg("serve")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start confab serve");
    let stdout = child.stdout.take().expect("stdout");
    let line =
        bounded(tokio::io::BufReader::new(stdout).lines().next_line()).await.expect("read").expect("start-up line");
    let address = line
        .strip_prefix("confab listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected start-up line: {line}"))
        .to_owned();
    (child, address)
}

/// Runs `confab chat` with `args` and `env`, types `input`, closes its stdin, and returns what
/// it printed once it ended (it must end successfully: after stdin closes, once its own lines
/// came back).
async fn confab_chat(args: &[&std::ffi::OsStr], env: &[(&str, &str)], input: &[u8]) -> String {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .arg("chat")
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start confab chat");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).await.expect("type");
    drop(stdin);
    let output = bounded(child.wait_with_output()).await.expect("chat ends after stdin closes");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Awaits `future` for at most [`PATIENCE`].
async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future).await.expect("finished within the test's patience")
}
