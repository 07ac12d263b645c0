//! `confab sim` as a user runs it: determinism across two processes (G8), the JSON and SVG
//! reports, the exit status and replay command on a violation, and flag errors.

use std::path::Path;
use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_confab")).arg("sim").args(args).output().expect("run confab sim")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const SMALL: [&str; 8] = ["--clients", "80", "--rooms", "4", "--duration", "90s", "--send-interval", "10s"];

fn trace_hash(report: &Path) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).expect("report written")).expect("the report is JSON");
    assert_eq!(json["violation_count"], 0, "{json}");
    json["trace_hash"].as_str().expect("a trace hash").to_owned()
}

#[test]
fn two_processes_with_the_same_seed_agree_and_another_seed_differs() {
    let dir = tempfile_dir("sim-determinism");
    let run = |seed: &str, name: &str| {
        let report = dir.join(name);
        let mut args = SMALL.to_vec();
        args.extend(["--seed", seed, "--report", report.to_str().expect("utf-8 path")]);
        let output = sim(&args);
        assert!(output.status.success(), "{}{}", text(&output.stdout), text(&output.stderr));
        assert!(text(&output.stdout).starts_with(&format!("seed={seed}\n")), "seed= comes first");
        trace_hash(&report)
    };
    let first = run("11", "a.json");
    assert_eq!(first, run("11", "b.json"));
    assert_ne!(first, run("12", "c.json"));
}

#[test]
fn check_determinism_and_svg_report() {
    let dir = tempfile_dir("sim-svg");
    let svg = dir.join("report.svg");
    let mut args = SMALL.to_vec();
    args.extend(["--seed", "5", "--check-determinism", "--svg", svg.to_str().expect("utf-8 path")]);
    let output = sim(&args);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains("determinism: a second run in this process gave the same trace"), "{stdout}");
    assert!(stdout.contains("violations: none"), "{stdout}");
    let svg = std::fs::read_to_string(svg).expect("svg written");
    assert!(svg.starts_with("<svg") && svg.contains("Deliveries per") && svg.contains("<rect x="), "{svg}");
}

#[test]
fn an_injected_bug_exits_non_zero_with_the_replay_command() {
    let mut args = SMALL.to_vec();
    args.extend(["--seed", "3", "--inject-bug", "skip-seq:5"]);
    let output = sim(&args);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.contains("G2") && stdout.contains("expected #5, got #6"), "{stdout}");
    assert!(stderr.contains("violation(s) with seed 3; replay: confab sim --seed=3"), "{stderr}");
    assert!(stderr.contains("--inject-bug=skip-seq:5"), "{stderr}");
}

#[test]
fn crashes_over_the_durable_store_agree_across_two_processes() {
    let dir = tempfile_dir("sim-crashes");
    let run = |name: &str| {
        let report = dir.join(name);
        let mut args = SMALL.to_vec();
        args.extend(["--seed", "4", "--durable", "--commit-failures", "0.02", "--crash-interval", "20s"]);
        args.extend(["--report", report.to_str().expect("utf-8 path")]);
        let output = sim(&args);
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
        assert!(stdout.contains("nodes crashed") && stdout.contains("failed commits"), "{stdout}");
        trace_hash(&report)
    };
    assert_eq!(run("a.json"), run("b.json"));
}

#[test]
fn bad_flags_are_named() {
    let output = sim(&["--crash-interval", "30s"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("--crash-interval"), "{}", text(&output.stderr));
    let output = sim(&["--faults", "slow=2"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("--faults"), "{}", text(&output.stderr));
    let output = sim(&["--clients", "5", "--rooms", "9"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("--rooms"), "{}", text(&output.stderr));
}

/// A fresh directory under the target dir for this test's files.
fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}
