//! `examples/line_chat.rs`, the smol frontend: the test builds it, runs it on 127.0.0.1:0 and
//! chats through two TCP clients, as two people with `nc` would.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};

use super::bounded;

/// Lines a client reads before giving up on an expected one (bounds every loop).
const LINES_MAX: usize = 200;

/// Builds the example with the cargo and target directory that built this test, and returns
/// its path. `cargo test` only builds examples when it runs every target, so a filtered run
/// (`cargo test --test e2e line_chat`) needs this.
fn example_binary() -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/e2e-<hash>
    let profile_dir = test_binary.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("the target directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build.args(["build", "--quiet", "--locked", "--example", "line_chat", "--target-dir"]).arg(target_dir);
    if profile_dir.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    let status = build.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("run cargo build");
    assert!(status.success(), "cargo build --example line_chat failed");
    profile_dir.join("examples").join(format!("line_chat{}", std::env::consts::EXE_SUFFIX))
}

struct Client {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Client {
    async fn connect(address: &str, name: &str) -> Self {
        let stream = bounded(TcpStream::connect(address)).await.expect("connect");
        let (reader, writer) = stream.into_split();
        let mut client = Self { lines: BufReader::new(reader).lines(), writer };
        client.expect("name?").await;
        client.say(name).await;
        client.expect(&format!("* you are {name} in #lobby")).await;
        client
    }

    async fn say(&mut self, line: &str) {
        self.writer.write_all(format!("{line}\n").as_bytes()).await.expect("write");
    }

    /// Reads lines until one starts with `prefix`; returns the lines read before it and it.
    async fn expect(&mut self, prefix: &str) -> Vec<String> {
        let mut seen = Vec::new();
        for _ in 0..LINES_MAX {
            let line = bounded(self.lines.next_line()).await.expect("read").unwrap_or_else(|| {
                panic!("connection ended while waiting for {prefix:?}; saw {seen:?}");
            });
            let found = line.starts_with(prefix);
            seen.push(line);
            if found {
                return seen;
            }
        }
        panic!("no line starting with {prefix:?} in {seen:?}");
    }
}

/// The example, running; killed when dropped.
struct LineChat {
    child: Child,
    address: String,
}

impl LineChat {
    async fn start() -> Self {
        let mut child = Command::new(example_binary())
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start line_chat");
        let stdout = child.stdout.take().expect("stdout");
        let line = bounded(BufReader::new(stdout).lines().next_line()).await.expect("read").expect("a first line");
        let address = line
            .strip_prefix("line_chat listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        Self { child, address }
    }
}

#[tokio::test]
async fn two_tcp_clients_chat_through_the_smol_example() {
    let mut server = LineChat::start().await;
    let mut ann = Client::connect(&server.address, "ann").await;
    let mut bob = Client::connect(&server.address, "bob").await;
    ann.expect("* bob joined #lobby").await;

    for i in 1..=3 {
        ann.say(&format!("hello {i}")).await;
    }
    bob.say("hi ann").await;
    // Both see the same four messages, numbered in the room's order; ann's in her order.
    let mut transcripts = Vec::new();
    for client in [&mut ann, &mut bob] {
        let mut messages = Vec::new();
        while messages.len() < 4 {
            let line = client.expect("[").await.pop().expect("the line");
            messages.push(line);
        }
        transcripts.push(messages);
    }
    assert_eq!(transcripts[0], transcripts[1], "everyone sees one order");
    // Numbered 1..4 with no gap (bob's message may come anywhere among ann's).
    let seqs: Vec<_> =
        transcripts[0].iter().map(|line| line.strip_prefix('[').and_then(|rest| rest.split(' ').next())).collect();
    assert_eq!(seqs, [Some("1"), Some("2"), Some("3"), Some("4")]);
    let ann_says: Vec<_> =
        transcripts[0].iter().filter_map(|line| line.split_once("] ann: ").map(|(_, body)| body)).collect();
    assert_eq!(ann_says, ["hello 1", "hello 2", "hello 3"], "ann's messages in the order she sent them");
    assert!(transcripts[0].iter().any(|line| line.ends_with("] bob: hi ann")));

    // Rooms are separate: bob moves, ann's next message does not reach him, his does not reach her.
    bob.say("/join den").await;
    bob.expect("* you are bob in #den").await;
    ann.expect("* bob left #lobby").await;
    ann.say("still here").await;
    ann.expect("[5 #lobby] ann: still here").await;
    bob.say("alone").await;
    let seen = bob.expect("[1 #den] bob: alone").await;
    assert!(seen.iter().all(|line| !line.contains("still here")), "{seen:?}");

    // A line over the limit is refused with a message, and the others carry on.
    bob.say(&"x".repeat(5_000)).await;
    bob.expect("! line over 4096 bytes").await;
    ann.say("/quit").await;
    let end = bounded(ann.lines.next_line()).await.expect("read");
    assert!(end.is_none() || end.as_deref().is_some_and(|line| !line.starts_with('[')), "{end:?}");

    server.child.kill().await.expect("kill line_chat");
}
