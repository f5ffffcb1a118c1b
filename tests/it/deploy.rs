//! The files in `deploy/`, checked as far as a machine without a container engine or a cluster
//! allows: every YAML file parses; the Dockerfile's runtime contract (its command, environment,
//! config file and health check) runs against the real binary; the Kubernetes manifests validate
//! against the API's schemas (kubernetes-validate), agree with each other, and their config runs
//! a node that drains within the grace; the alert rules pass promtool's checks and unit tests;
//! and every metric the dashboard and the alerts name is really exported by a node. The compose
//! topology itself runs from local processes in `topology.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use crate::support::credentials::{KeyPair, now};
use crate::support::redis::{RedisServer, free_port, node_config};
use crate::support::{Client, SilentSocket, TestServer, binary, temp_file};

/// How long one external checker (promtool, kubernetes-validate) may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The oldest Kubernetes the manifests support (the preStop `sleep` action is on by default
/// from 1.30).
const KUBERNETES_VERSION: &str = "1.30.0";

pub fn deploy_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(relative)
}

pub fn read(relative: &str) -> String {
    let path = deploy_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// A YAML file as JSON, merge keys (`<<: *anchor`) applied.
pub fn yaml(relative: &str) -> Value {
    let mut value: serde_norway::Value = serde_norway::from_str(&read(relative))
        .unwrap_or_else(|err| panic!("deploy/{relative} is not YAML: {err}"));
    value
        .apply_merge()
        .unwrap_or_else(|err| panic!("deploy/{relative}: merge keys: {err}"));
    serde_json::to_value(value).unwrap_or_else(|err| panic!("deploy/{relative}: {err}"))
}

/// Runs an installed checker; `make test-deps` installs every one of them.
pub async fn run_tool(program: &str, args: &[&str]) -> (bool, String) {
    let output = tokio::time::timeout(
        TOOL_TIMEOUT,
        tokio::process::Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} {args:?} took over {TOOL_TIMEOUT:?}"))
    .unwrap_or_else(|err| panic!("cannot run {program} ({err}); `make test-deps` installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Seconds of a duration string from the config or a manifest (`"20s"`, `"2m"`).
fn seconds(duration: &str) -> u64 {
    let duration: switchboard::human_duration::HumanDuration =
        serde_json::from_value(json!(duration)).expect("a duration");
    duration.0.as_secs()
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let mut found = Vec::new();
    let mut folders = vec![deploy_path("")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("read deploy/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if matches!(
                path.extension().and_then(|ext| ext.to_str()),
                Some("yaml" | "yml")
            ) {
                let relative = path
                    .strip_prefix(deploy_path(""))
                    .expect("under deploy/")
                    .to_str()
                    .expect("utf-8")
                    .to_owned();
                assert!(yaml(&relative).is_object(), "deploy/{relative}");
                found.push(relative);
            }
        }
    }
    found.sort();
    for expected in [
        "compose.yaml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yaml",
        "prometheus/alerts.test.yaml",
        "grafana/provisioning/datasources/prometheus.yaml",
        "grafana/provisioning/dashboards/switchboard.yaml",
        "k8s/deployment.yaml",
        "k8s/kustomization.yaml",
    ] {
        assert!(found.iter().any(|file| file == expected), "{found:?}");
    }
    let dashboard: Value =
        serde_json::from_str(&read("grafana/switchboard.json")).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "switchboard");
}

/// A Dockerfile instruction: its keyword and the rest of its (continued) line.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    joined
        .into_iter()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (keyword, rest) = line.split_once(' ').unwrap_or((&line, ""));
            (keyword.to_uppercase(), rest.trim().to_owned())
        })
        .collect()
}

/// `KEY=value KEY2=value2` of an `ENV` instruction.
fn env_pairs(rest: &str) -> Vec<(String, String)> {
    rest.split_whitespace()
        .map(|pair| {
            let (key, value) = pair.split_once('=').expect("ENV KEY=value");
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

fn exec_form(rest: &str) -> Vec<String> {
    serde_json::from_str(rest).unwrap_or_else(|err| panic!("not an exec-form array: {rest}: {err}"))
}

/// The image as the Dockerfile describes it, run with the real binary: the runtime stage's
/// ENTRYPOINT + CMD with its ENV and its config file (the repository's copy) serve, and its
/// HEALTHCHECK command exits 0 against them and 1 once the node is gone. Only the bind address
/// differs (loopback and a free port: tests stay on 127.0.0.1).
#[tokio::test]
async fn the_dockerfile_runs_as_its_image_would() {
    let all = instructions(&read("Dockerfile"));
    let stages: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (keyword, _))| keyword == "FROM")
        .map(|(at, _)| at)
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    let build_stage = &all[stages[0]..stages[stages.len() - 1]];
    let runtime = &all[stages[stages.len() - 1]..];
    let last = |keyword: &str| {
        runtime
            .iter()
            .rev()
            .find(|(found, _)| found == keyword)
            .map(|(_, rest)| rest.clone())
            .unwrap_or_else(|| panic!("no {keyword} in the runtime stage"))
    };

    // Built from this crate's binary, with a toolchain it accepts.
    assert!(
        build_stage.iter().any(|(keyword, rest)| keyword == "RUN"
            && rest.contains("cargo build --release --locked --bin switchboard")),
        "{build_stage:?}"
    );
    let rust_version = all
        .iter()
        .find_map(|(keyword, rest)| {
            (keyword == "ARG")
                .then(|| rest.strip_prefix("RUST_VERSION="))
                .flatten()
        })
        .expect("ARG RUST_VERSION");
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("Cargo.toml");
    let minimum = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .expect("rust-version")
        .trim_matches('"');
    let version = |text: &str| -> Vec<u32> {
        text.split('.')
            .map(|part| part.parse().expect("number"))
            .collect()
    };
    assert!(
        version(rust_version) >= version(minimum),
        "{rust_version} < {minimum}"
    );
    let ignored =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .expect(".dockerignore");
    assert!(
        ignored.lines().any(|line| line.trim() == "target/"),
        "the build context skips target/"
    );

    // The runtime has the glibc the binary was linked against: the same Debian release.
    let base = |at: usize| all[at].1.clone();
    let (builder, runner) = (base(stages[0]), base(stages[stages.len() - 1]));
    let same_release = [("bookworm", "debian12"), ("trixie", "debian13")]
        .iter()
        .any(|(codename, distroless)| builder.contains(codename) && runner.contains(distroless));
    assert!(
        same_release,
        "{builder} and {runner} are different Debian releases"
    );

    // A non-root user.
    let user = last("USER");
    let uid = user.split(':').next().expect("uid");
    assert!(uid != "root" && uid != "0", "USER {user}");
    // The config file it carries, where SWITCHBOARD_CONFIG says.
    let env: BTreeMap<String, String> = runtime
        .iter()
        .filter(|(keyword, _)| keyword == "ENV")
        .flat_map(|(_, rest)| env_pairs(rest))
        .collect();
    let config_in_image = env
        .get("SWITCHBOARD_CONFIG")
        .expect("ENV SWITCHBOARD_CONFIG");
    let copied = runtime
        .iter()
        .filter(|(keyword, _)| keyword == "COPY")
        .find_map(|(_, rest)| {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            (parts.last() == Some(&config_in_image.as_str())).then(|| parts[parts.len() - 2])
        })
        .expect("the runtime stage copies the config to SWITCHBOARD_CONFIG");
    let config_file = Path::new(env!("CARGO_MANIFEST_DIR")).join(copied);
    let config = switchboard::config::Config::load(Some(&config_file)).expect("the image's config");
    let exposed: u16 = last("EXPOSE").parse().expect("EXPOSE PORT");
    assert_eq!(
        config.server.bind.port(),
        exposed,
        "the config listens on the EXPOSEd port"
    );
    assert!(
        config.server.bind.ip().is_unspecified(),
        "reachable from outside the container"
    );

    // ENTRYPOINT + CMD, with the image's environment.
    let mut command = exec_form(&last("ENTRYPOINT"));
    command.extend(exec_form(&last("CMD")));
    let installed = command[0].clone();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let image_env = |process: &mut tokio::process::Command| {
        for (key, value) in &env {
            process.env(key, value);
        }
        process
            .env("SWITCHBOARD_CONFIG", &config_file)
            .env("SWITCHBOARD_SERVER__BIND", &bind)
            .env("RUST_LOG", "warn");
    };
    let mut serve = tokio::process::Command::new(binary());
    serve
        .args(&command[1..])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    image_env(&mut serve);
    let mut node = serve.spawn().expect("start the image's command");
    let address = crate::support::listening_address(&mut node).await;
    assert_eq!(address.port(), port);

    let healthcheck = last("HEALTHCHECK");
    let check = exec_form(
        healthcheck
            .split_once("CMD ")
            .map(|(_, rest)| rest)
            .expect("HEALTHCHECK … CMD [...]"),
    );
    assert_eq!(
        check[0], installed,
        "the health check runs the installed binary"
    );
    let health = || {
        let mut process = tokio::process::Command::new(binary());
        process.args(&check[1..]).kill_on_drop(true);
        image_env(&mut process);
        async move {
            tokio::time::timeout(Duration::from_secs(10), process.output())
                .await
                .expect("the health check is bounded")
                .expect("run the health check")
        }
    };
    let healthy = health().await;
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    assert!(String::from_utf8_lossy(&healthy.stdout).contains("\"ok\""));
    node.kill().await.expect("stop the node");
    let _ = node.wait().await;
    let unhealthy = health().await;
    assert_eq!(unhealthy.status.code(), Some(1));
}

/// The compose file: the services of the topology, files that exist, node environment the
/// server accepts, and a stop grace longer than the drain.
#[test]
fn the_compose_file_describes_a_working_topology() {
    let compose = yaml("compose.yaml");
    let services = compose["services"].as_object().expect("services");
    for service in [
        "redis",
        "switchboard-1",
        "switchboard-2",
        "nginx",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(service), "no {service} service");
    }
    for node in ["switchboard-1", "switchboard-2"] {
        let node = &services[node];
        let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(node["build"]["context"].as_str().expect("build context"))
            .join(node["build"]["dockerfile"].as_str().expect("dockerfile"));
        assert!(dockerfile.is_file(), "{}", dockerfile.display());
        let environment = compose_environment(node);
        let grace = environment
            .get("SWITCHBOARD_SERVER__SHUTDOWN_GRACE")
            .map_or(10, |grace| seconds(grace));
        assert!(
            seconds(
                node["stop_grace_period"]
                    .as_str()
                    .expect("stop_grace_period")
            ) > grace,
            "docker stop must wait longer than the drain"
        );
        let check = std::process::Command::new(binary())
            .args(["check-config", "--config"])
            .arg(deploy_path("switchboard.toml"))
            .envs(&environment)
            .output()
            .expect("check-config");
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let effective = String::from_utf8_lossy(&check.stdout);
        assert!(effective.contains("type = \"redis\""), "{effective}");
    }
    // Every mounted file or folder is in the repository.
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume
                .as_str()
                .expect("short volume syntax")
                .split(':')
                .next()
                .expect("source");
            let path = deploy_path(source.trim_start_matches("./"));
            assert!(path.exists(), "{name} mounts {source}, which is missing");
        }
    }
    // Grafana's provisioning loads the mounted dashboard.
    let provider = yaml("grafana/provisioning/dashboards/switchboard.yaml");
    let folder = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("dashboards path");
    assert!(
        services["grafana"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|volume| volume
                .as_str()
                .is_some_and(|volume| volume.starts_with("./grafana/switchboard.json:")
                    && volume.contains(folder))),
        "the dashboard is mounted where the provider reads"
    );
    let datasource = yaml("grafana/provisioning/datasources/prometheus.yaml");
    assert_eq!(datasource["datasources"][0]["type"], "prometheus");
    // Prometheus scrapes both nodes and loads the alert rules it is given.
    let prometheus = yaml("prometheus/prometheus.yml");
    let targets = &prometheus["scrape_configs"][0]["static_configs"][0]["targets"];
    assert_eq!(
        targets,
        &json!(["switchboard-1:8080", "switchboard-2:8080"])
    );
    assert!(
        services["prometheus"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|volume| volume
                .as_str()
                .is_some_and(|volume| volume.ends_with(&format!(
                    ":{}:ro",
                    prometheus["rule_files"][0].as_str().expect("rule file")
                )))),
        "the rule file Prometheus loads is mounted"
    );
}

/// A compose service's environment, `${NAME:-default}` resolved to the default.
pub fn compose_environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .expect("environment as a map")
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let value = match value
                .strip_prefix("${")
                .and_then(|rest| rest.strip_suffix('}'))
            {
                Some(expression) => expression
                    .split_once(":-")
                    .map(|(_, default)| default.to_owned())
                    .unwrap_or_default(),
                None => value,
            };
            (key.clone(), value)
        })
        .collect()
}

#[tokio::test]
async fn the_alert_rules_pass_promtool_checks_and_unit_tests() {
    let (ok, output) = run_tool(
        "promtool",
        &[
            "check",
            "rules",
            deploy_path("prometheus/alerts.yaml")
                .to_str()
                .expect("path"),
        ],
    )
    .await;
    assert!(ok, "{output}");
    assert!(output.contains("SUCCESS"), "{output}");
    let (ok, output) = run_tool(
        "promtool",
        &[
            "test",
            "rules",
            deploy_path("prometheus/alerts.test.yaml")
                .to_str()
                .expect("path"),
        ],
    )
    .await;
    assert!(ok, "{output}");
    // Every alert has a unit test.
    let tests = read("prometheus/alerts.test.yaml");
    for rule in yaml("prometheus/alerts.yaml")["groups"][0]["rules"]
        .as_array()
        .expect("rules")
    {
        let alert = rule["alert"].as_str().expect("alert name");
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test"
        );
    }
    for alert in [
        "SwitchboardRedisDown",
        "SwitchboardSlowConsumerClosesRising",
        "SwitchboardHandshakeRefusalsRising",
        "SwitchboardDeliveryLatencyHigh",
    ] {
        assert!(tests.contains(alert), "{alert}");
    }
    // The Prometheus config is valid once its rule file is where it says.
    let config = read("prometheus/prometheus.yml").replace(
        "/etc/prometheus/alerts.yaml",
        deploy_path("prometheus/alerts.yaml")
            .to_str()
            .expect("path"),
    );
    let config = temp_file("prometheus.yml", &config);
    let (ok, output) = run_tool(
        "promtool",
        &["check", "config", config.to_str().expect("path")],
    )
    .await;
    assert!(ok, "{output}");
}

/// Every `switchboard_…` metric the dashboard and the alert rules name (histogram series mapped
/// to their histogram), and every PromQL expression in them (with Grafana's variables replaced).
pub fn dashboard_and_alert_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for text in [
        read("grafana/switchboard.json"),
        read("prometheus/alerts.yaml"),
    ] {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("switchboard_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|char| char.is_ascii_alphanumeric() || *char == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| switchboard::metrics::ALL.contains(base))
                .unwrap_or(&name);
            names.insert(base.to_owned());
        }
    }
    names
}

pub fn dashboard_and_alert_expressions() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(&read("grafana/switchboard.json")).expect("JSON");
    let mut expressions: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| {
            target["expr"]
                .as_str()
                .expect("every target has an expr")
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
        })
        .collect();
    expressions.extend(
        yaml("prometheus/alerts.yaml")["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .map(|rule| rule["expr"].as_str().expect("expr").to_owned()),
    );
    expressions
}

#[test]
fn the_dashboard_shows_what_operators_need_and_only_known_metrics() {
    let names = dashboard_and_alert_metrics();
    for name in &names {
        assert!(
            switchboard::metrics::ALL.contains(&name.as_str()),
            "{name} is not a metric the server defines (src/metrics.rs)"
        );
    }
    // The operating guide's metrics reference and docs/metrics.md name every metric the server
    // has.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("docs/operating.md")).expect("operating guide");
    let reference = std::fs::read_to_string(root.join("docs/metrics.md")).expect("metrics.md");
    for name in switchboard::metrics::ALL {
        let short = name.strip_prefix("switchboard_").expect("prefix");
        assert!(
            readme.contains(&format!("`{short}")),
            "docs/operating.md lacks {name}"
        );
        assert!(
            reference.contains(&format!("`{name}`")),
            "docs/metrics.md lacks {name}"
        );
    }
    let dashboard: Value = serde_json::from_str(&read("grafana/switchboard.json")).expect("JSON");
    let text = dashboard.to_string();
    for needed in [
        "switchboard_connections",
        "action=~\\\"join|leave\\\"",
        "switchboard_messages_delivered_total",
        "switchboard_publish_to_deliver_seconds_bucket",
        "switchboard_closes_total",
        "switchboard_revalidations_total",
        "switchboard_broker_up",
    ] {
        assert!(text.contains(needed), "the dashboard lacks {needed}");
    }
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(panel["id"].as_u64().expect("id")),
            "duplicate panel id"
        );
        let grid = &panel["gridPos"];
        let right = grid["x"].as_u64().expect("x") + grid["w"].as_u64().expect("w");
        assert!(right <= 24, "{} is wider than the grid", panel["title"]);
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
            assert!(!panel["targets"].as_array().expect("targets").is_empty());
        }
    }
}

/// The dashboard's and alerts' metrics, scraped from a real node that did what makes each
/// appear: Redis broker (and an outage), Django sessions re-validated, an introspection view
/// that is down, a route that is down, the server API, a slow consumer, a client close.
#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_name_is_exported() {
    let mut redis = RedisServer::start().await;
    redis
        .cli(&["SET", "session:abc", r#"{"_auth_user_id": 42}"#])
        .await;
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let server = TestServer::start(&node_config(
        &redis.url(),
        &format!(
            "[server]\noutbound_queue = 4\nrate_limit_burst = 1000\n\
             [auth]\nrevalidate_interval = \"300ms\"\norder = [\"redis_session\", \"introspect\"]\n\
             [auth.redis_session]\n\
             [auth.introspect]\nurl = \"{nowhere}/whoami/\"\ntimeout = \"500ms\"\nforward_headers = [\"authorization\"]\n\
             [api]\nkey = \"k\"\n[routes]\ndefault = \"{nowhere}/route/\"\n"
        ),
    ))
    .await;
    server.wait_for_readiness(200).await;

    let _session = Client::connect(&server.ws_url("/ws"), &[("Cookie", "sessionid=abc")])
        .await
        .expect("a Django session is accepted");
    let refused = Client::connect(&server.ws_url("/ws"), &[("Authorization", "Bearer x")])
        .await
        .err()
        .expect("the introspection view is down");
    assert_eq!(refused.status, 503);

    let mut member = server.client_in(&["feed"]).await;
    let reply = member
        .request(json!({"action": "whatever", "body": 1}), 1)
        .await;
    assert_eq!(reply["code"], "backend_error", "{reply}");
    let api = reqwest::Client::new();
    let published = api
        .post(server.url("/api/publish"))
        .bearer_auth("k")
        .json(&json!({"channel": "feed", "data": "hello"}))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), 200);
    assert_eq!(member.recv().await["data"], "hello");

    drop(member);
    server.wait_for_metric("switchboard_channels", 0.0).await;

    // A member that reads nothing falls behind: 4010, and its frames are dropped. The publisher
    // is not a member, so only the silent one falls behind.
    let _stuck = SilentSocket::connect(server.address, "/ws?channel=feed").await;
    server.wait_for_metric("switchboard_channels", 1.0).await;
    let mut publisher = server.client().await;
    let data = "x".repeat(50_000);
    let mut closed = false;
    for id in 0..400u64 {
        publisher
            .send(json!({"action": "publish", "channel": "feed", "data": data, "id": id}))
            .await;
        if server
            .metric("switchboard_closes_total{code=\"4010\",reason=\"slow_consumer\",initiator=\"server\"}")
            .await
            .is_some()
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the silent member was never closed as a slow consumer"
    );

    // Redis goes away: a publish fails; it comes back: the node reconnects.
    redis.kill().await;
    server.wait_for_readiness(503).await;
    let failed = api
        .post(server.url("/api/publish"))
        .bearer_auth("k")
        .json(&json!({"channel": "feed", "data": 1}))
        .send()
        .await
        .expect("publish");
    assert_eq!(failed.status(), 503);
    redis.restart().await;
    server.wait_for_readiness(200).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.metrics().await;
        let missing: Vec<String> = dashboard_and_alert_metrics()
            .into_iter()
            .filter(|name| !exported(&text, name))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "named in deploy/ but not exported: {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the exposition has a sample of `name` (a histogram's samples are `name_bucket` …).
fn exported(exposition: &str, name: &str) -> bool {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .any(|line| {
            let series = line.split(['{', ' ']).next().unwrap_or_default();
            series == name || series == format!("{name}_bucket")
        })
}

/// The Kubernetes manifests: valid for the API (kubernetes-validate, strict), and agreeing with
/// each other and with the server (the probes' paths and port, the grace, the Secret's keys).
#[tokio::test]
async fn the_kubernetes_manifests_validate_and_agree() {
    let kustomization = yaml("k8s/kustomization.yaml");
    let resources: Vec<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|file| format!("k8s/{}", file.as_str().expect("file")))
        .collect();
    let files: Vec<String> = resources
        .iter()
        .map(|file| deploy_path(file).to_str().expect("path").to_owned())
        .collect();
    let mut args = vec![
        "-m",
        "kubernetes_validate",
        "--strict",
        "--kubernetes-version",
        KUBERNETES_VERSION,
    ];
    args.extend(files.iter().map(String::as_str));
    let (ok, output) = run_tool("python3", &args).await;
    assert!(ok, "{output}");
    assert_eq!(
        output.matches(" passed for resource ").count(),
        files.len(),
        "{output}"
    );

    let manifests = by_kind(&resources);
    for kind in [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
    ] {
        assert!(manifests.contains_key(kind), "no {kind}");
    }
    let deployment = &manifests["Deployment"];
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let labels = &pod["metadata"]["labels"];
    let selects = |selector: &Value| {
        selector
            .as_object()
            .expect("selector")
            .iter()
            .all(|(key, value)| &labels[key] == value)
    };
    assert!(selects(&deployment["spec"]["selector"]["matchLabels"]));
    assert!(selects(&manifests["Service"]["spec"]["selector"]));
    assert!(selects(
        &manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    ));
    assert_eq!(
        manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert_eq!(
        manifests["Service"]["spec"]["ports"][0]["targetPort"],
        container["ports"][0]["name"]
    );

    // The config the pod reads is the ConfigMap's, at SWITCHBOARD_CONFIG.
    let (config, secrets_dir) = pod_files(&manifests);
    let config_text = manifests["ConfigMap"]["data"][&config]
        .as_str()
        .expect("the ConfigMap holds the config file");
    let config: toml::Value = toml::from_str(config_text).expect("the ConfigMap's TOML");
    let bind: std::net::SocketAddr = config["server"]["bind"]
        .as_str()
        .expect("bind")
        .parse()
        .expect("address");
    assert_eq!(container["ports"][0]["containerPort"], bind.port());
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    // Kubernetes waits for preStop plus the drain before it kills.
    let grace = seconds(
        config["server"]["shutdown_grace"]
            .as_str()
            .expect("shutdown_grace"),
    );
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("preStop sleep");
    let termination = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > pre_stop + grace,
        "terminationGracePeriodSeconds {termination} must exceed preStop {pre_stop} + shutdown_grace {grace}"
    );
    // Every Secret key the pod uses exists.
    let secret = &manifests["Secret"]["stringData"];
    for variable in container["env"].as_array().expect("env") {
        if let Some(key) = variable["valueFrom"]["secretKeyRef"]["key"].as_str() {
            assert!(secret.get(key).is_some(), "the Secret has no {key}");
        }
    }
    let key_file = config["auth"]["jwt"]["public_key_file"]
        .as_str()
        .expect("public_key_file");
    let key_name = key_file
        .strip_prefix(&format!("{secrets_dir}/"))
        .expect("the JWT key is read from the Secret's mount");
    assert!(
        secret.get(key_name).is_some(),
        "the Secret has no {key_name}"
    );
}

/// Kubernetes manifests (one object per file) by their `kind`.
fn by_kind(files: &[impl AsRef<str>]) -> BTreeMap<String, Value> {
    files
        .iter()
        .map(|file| {
            let manifest = yaml(file.as_ref());
            let kind = manifest["kind"].as_str().expect("kind").to_owned();
            (kind, manifest)
        })
        .collect()
}

/// Where the pod finds its config file (SWITCHBOARD_CONFIG, from the ConfigMap volume) and the
/// Secret's files: (the config file's key in the ConfigMap, the Secret's mount path).
fn pod_files(manifests: &BTreeMap<String, Value>) -> (String, String) {
    let spec = &manifests["Deployment"]["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let config_path = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|variable| variable["name"] == "SWITCHBOARD_CONFIG")
        .and_then(|variable| variable["value"].as_str())
        .expect("SWITCHBOARD_CONFIG")
        .to_owned();
    let mount_of = |volume_kind: &str, name: &str| {
        let volume = spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|volume| {
                volume[volume_kind]
                    .as_object()
                    .is_some_and(|source| source.values().any(|value| value == name))
            })
            .unwrap_or_else(|| panic!("no {volume_kind} volume of {name}"));
        container["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|mount| mount["name"] == volume["name"])
            .and_then(|mount| mount["mountPath"].as_str())
            .expect("mounted")
            .to_owned()
    };
    let config_name = manifests["ConfigMap"]["metadata"]["name"]
        .as_str()
        .expect("name");
    let secret_name = manifests["Secret"]["metadata"]["name"]
        .as_str()
        .expect("name");
    let config_dir = mount_of("configMap", config_name);
    let config_key = config_path
        .strip_prefix(&format!("{config_dir}/"))
        .expect("SWITCHBOARD_CONFIG is in the ConfigMap's mount")
        .to_owned();
    (config_key, mount_of("secret", secret_name))
}

/// The pod's configuration runs: the ConfigMap's file (Redis and the JWT key file pointed at
/// this test's), the Secret's API key in the environment the Deployment sets. A token holder
/// connects and joins the rooms its token grants; the probes answer; SIGTERM closes the socket
/// with 1012 and the node exits within `shutdown_grace`.
#[tokio::test]
async fn the_kubernetes_config_runs_a_node_that_drains_within_its_grace() {
    let redis = RedisServer::start().await;
    let key = KeyPair::generate(Algorithm::RS256);
    let manifests = by_kind(&[
        "k8s/configmap.yaml",
        "k8s/secret.yaml",
        "k8s/deployment.yaml",
    ]);
    let (config_key, _) = pod_files(&manifests);
    let config = manifests["ConfigMap"]["data"][&config_key]
        .as_str()
        .expect("config")
        .replace("redis://redis:6379", &redis.url())
        .replace(
            "/etc/switchboard/secrets/jwt.pub.pem",
            key.public_pem_file.to_str().expect("path"),
        );
    let api_key = manifests["Secret"]["stringData"]["api-key"]
        .as_str()
        .expect("api-key");
    let grace = seconds(
        toml::from_str::<toml::Value>(&config).expect("TOML")["server"]["shutdown_grace"]
            .as_str()
            .expect("grace"),
    );
    let mut server =
        TestServer::start_with_env(&config, &[("SWITCHBOARD_API__KEY", api_key)]).await;
    server.wait_for_readiness(200).await;
    assert_eq!(server.get("/healthz").await.0, 200);

    let token = key.sign(
        &json!({"sub": "7", "exp": now() + 600, "channels": ["room:*"]}),
        None,
    );
    let anonymous = Client::connect(&server.ws_url("/ws"), &[]).await.err();
    assert_eq!(anonymous.map(|refused| refused.status), Some(401));
    let mut client = Client::connect(&server.ws_url(&format!("/ws?token={token}")), &[])
        .await
        .expect("a token holder connects");
    assert_eq!(client.recv().await["type"], "welcome");
    let joined = client
        .request(json!({"action": "join", "channel": "room:lobby"}), 1)
        .await;
    assert_eq!(joined["type"], "reply", "{joined}");
    let listed = reqwest::Client::new()
        .get(server.url("/api/connections?user=7"))
        .bearer_auth(api_key)
        .send()
        .await
        .expect("the API answers with the Secret's key");
    assert_eq!(listed.status(), 200);

    let started = std::time::Instant::now();
    server.terminate();
    assert_eq!(client.expect_close().await.0, 1012);
    let exit = tokio::time::timeout(Duration::from_secs(grace + 5), server.child.wait())
        .await
        .expect("exited")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(grace));
}
