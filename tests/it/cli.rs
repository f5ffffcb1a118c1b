//! The command line: `--version`, `check-config`, `serve` with defaults, and the README tour.

use std::process::Command;

use crate::support::{TestServer, binary, temp_file};

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run switchboard");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn version_is_printed() {
    let (code, stdout, _) = run(&["--version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!("switchboard {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_prints_the_effective_config_with_env_overrides() {
    let path = temp_file("ok.toml", "[server]\nmax_frame_bytes = 4096\n");
    let path = path.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = run(
        &["check-config", "--config", path],
        &[("SWITCHBOARD_BROKER__PREFIX", "myapp")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("max_frame_bytes = 4096"), "{stdout}");
    assert!(stdout.contains("prefix = \"myapp\""), "{stdout}");
    assert!(stdout.contains("heartbeat_interval = \"15s\""), "{stdout}");
    assert!(stdout.contains("pattern = \"*\""), "{stdout}");
}

#[test]
fn check_config_names_every_bad_key_and_exits_2() {
    let path = temp_file(
        "bad.toml",
        "[server]\nbindd = \"x\"\n[auth]\nrevalidate_interval = \"often\"\n[[channels]]\npattern = \"x\"\njoin = \"everyone\"\n",
    );
    let (code, _, stderr) = run(
        &["check-config", "--config", path.to_str().expect("path")],
        &[],
    );
    assert_eq!(code, 2);
    for key in [
        "server.bindd",
        "auth.revalidate_interval",
        "channels[0].join",
    ] {
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
}

#[test]
fn check_config_checks_the_channels_redis_bridge_and_hides_its_keys() {
    let good = temp_file(
        "bridge.toml",
        "[bridge.channels_redis]\nhosts = [\"redis://:hunter2@127.0.0.1:6379/0\"]\n\
         symmetric_encryption_keys = [\"fernet-secret\"]\n\
         [[bridge.channels_redis.groups]]\ngroup = \"chat_*\"\nchannel = \"room:{1}\"\n",
    );
    let (code, stdout, stderr) = run(
        &["check-config", "--config", good.to_str().expect("path")],
        &[("SWITCHBOARD_BRIDGE__CHANNELS_REDIS__LAYER", "pubsub")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("[bridge.channels_redis]"), "{stdout}");
    assert!(stdout.contains("layer = \"pubsub\""), "{stdout}");
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("fernet-secret"),
        "{stdout}"
    );
    let bad = temp_file(
        "bad-bridge.toml",
        "[bridge.channels_redis]\nhosts = [\"http://x\"]\nlayer = \"classic\"\n",
    );
    let (code, _, stderr) = run(
        &["check-config", "--config", bad.to_str().expect("path")],
        &[],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("bridge.channels_redis.layer"), "{stderr}");
    let unmapped = temp_file(
        "rules.toml",
        "[bridge.channels_redis]\n[[bridge.channels_redis.groups]]\ngroup = \"chat:*\"\nchannel = \"room:{1}\"\n",
    );
    let (code, _, stderr) = run(
        &["check-config", "--config", unmapped.to_str().expect("path")],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("bridge.channels_redis.groups[0]"),
        "{stderr}"
    );
}

#[test]
fn check_config_reports_unreadable_and_unparsable_files() {
    let (code, _, stderr) = run(
        &["check-config", "--config", "/nonexistent/switchboard.toml"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read"), "{stderr}");
    let path = temp_file("syntax.toml", "[server\n");
    let (code, _, stderr) = run(
        &["check-config", "--config", path.to_str().expect("path")],
        &[],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("not valid TOML"), "{stderr}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/switchboard.example.toml"
    );
    let (code, _, stderr) = run(&["check-config", "--config", example], &[]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn serve_refuses_a_bad_config_naming_the_key() {
    let (code, _, stderr) = run(&["serve"], &[("SWITCHBOARD_SERVER__OUTBOUND_QUEUE", "0")]);
    assert_ne!(code, 0);
    assert!(stderr.contains("server.outbound_queue"), "{stderr}");
}

/// What `make run` does: `switchboard serve` with no config file at all.
#[tokio::test]
async fn serve_without_a_config_file_runs_on_the_defaults() {
    let mut child = tokio::process::Command::new(binary())
        .arg("serve")
        .env("SWITCHBOARD_SERVER__BIND", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let address = crate::support::listening_address(&mut child).await;
    let body = reqwest::get(format!("http://{address}/healthz"))
        .await
        .expect("healthz")
        .text()
        .await
        .expect("body");
    assert_eq!(body, r#"{"status":"ok"}"#);
}

/// Runs the README's tour script with `urls` (Bob's, then optionally Alice's) and checks that
/// Bob received Alice's message.
pub async fn run_the_tour(urls: &[String]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tour.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .args(urls)
        .output();
    let output = tokio::time::timeout(crate::support::WAIT, output)
        .await
        .expect("tour finished")
        .expect("python3 runs (make test installs the `websockets` package)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(r#"bob got: {"type": "message", "channel": "room:1", "data": {"text": "hello from alice"}}"#), "{stdout}");
}

/// The README's five-minute tour, run as written.
#[tokio::test]
async fn the_readme_tour_script_works() {
    let server = TestServer::start("").await;
    run_the_tour(&[server.ws_url("/ws")]).await;
}

#[tokio::test]
async fn json_log_format_writes_one_json_object_per_line() {
    let mut child = tokio::process::Command::new(binary())
        .args(["--log-format", "json", "serve"])
        .env("SWITCHBOARD_SERVER__BIND", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let address = crate::support::listening_address(&mut child).await;
    let _ = reqwest::get(format!("http://{address}/healthz")).await;
    crate::support::send_sigterm(child.id().expect("pid"));
    let output = tokio::time::timeout(crate::support::WAIT, child.wait_with_output())
        .await
        .expect("exited")
        .expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "expected log lines:\n{stderr}");
    for line in &lines {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        assert!(
            record["level"].is_string() && record["fields"].is_object(),
            "{line}"
        );
    }
    assert!(stderr.contains("\"message\":\"listening\""), "{stderr}");
}

/// `switchboard health`, the container's HEALTHCHECK: exit 0 on a 2xx answer, 1 with the reason
/// otherwise; without `--url` it asks the configured bind address (on loopback for a wildcard
/// address), the config coming from `SWITCHBOARD_CONFIG` as in the image.
#[tokio::test]
async fn health_exits_0_when_the_node_answers_and_1_when_it_does_not() {
    let server = TestServer::start("").await;
    let port = server.address.port().to_string();
    let (code, stdout, stderr) = run(&["health", "--url", &server.url("/healthz")], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"ok\""), "{stdout}");

    let image_config = temp_file(
        "image.toml",
        &format!("[server]\nbind = \"0.0.0.0:{port}\"\n"),
    );
    let image_config = image_config.to_str().expect("utf-8 path");
    let (code, _, stderr) = run(&["health"], &[("SWITCHBOARD_CONFIG", image_config)]);
    assert_eq!(code, 0, "{stderr}");
    let bind = format!("127.0.0.1:{port}");
    let (code, stdout, stderr) = run(
        &["health", "--path", "/readyz"],
        &[("SWITCHBOARD_SERVER__BIND", &bind)],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"ready\""), "{stdout}");

    let (code, _, stderr) = run(
        &["health", "--path", "/nowhere"],
        &[("SWITCHBOARD_SERVER__BIND", &bind)],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("unhealthy") && stderr.contains("404"),
        "{stderr}"
    );
    let closed = format!(
        "http://127.0.0.1:{}/healthz",
        crate::support::redis::free_port()
    );
    let (code, _, stderr) = run(&["health", "--url", &closed], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot reach"), "{stderr}");
}
