//! `deploy/compose.yaml`'s topology from local processes (this machine has no container
//! engine): a real `redis-server`, two nodes with the compose file's environment and the image's
//! config file, nginx from Debian with `deploy/nginx/nginx.conf`, and Prometheus with
//! `deploy/prometheus/prometheus.yml` and the alert rules. Only addresses are rewritten: every
//! process listens on 127.0.0.1 and a free port.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::deploy::{
    compose_environment, dashboard_and_alert_expressions, deploy_path, read, yaml,
};
use crate::support::redis::{RedisServer, free_port};
use crate::support::{Client, SilentSocket, TestServer, WAIT};

/// Redis, the two nodes and nginx, as compose.yaml starts them.
struct Topology {
    redis: RedisServer,
    nodes: Vec<TestServer>,
    balancer: Nginx,
    api_key: String,
}

impl Topology {
    async fn start() -> Self {
        let redis = RedisServer::start().await;
        let compose = yaml("compose.yaml");
        let image_config = read("switchboard.toml");
        let mut nodes = Vec::new();
        let mut api_key = String::new();
        for service in ["switchboard-1", "switchboard-2"] {
            let environment = compose_environment(&compose["services"][service]);
            let environment: Vec<(String, String)> = environment
                .into_iter()
                .map(|(key, value)| (key, value.replace("redis://redis:6379", &redis.url())))
                .collect();
            api_key = environment
                .iter()
                .find(|(key, _)| key == "SWITCHBOARD_API__KEY")
                .map(|(_, value)| value.clone())
                .expect("the compose file sets an API key");
            let pairs: Vec<(&str, &str)> = environment
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str()))
                .collect();
            nodes.push(TestServer::start_with_env(&image_config, &pairs).await);
        }
        for node in &nodes {
            node.wait_for_readiness(200).await;
        }
        let balancer = Nginx::start(&nodes).await;
        Self {
            redis,
            nodes,
            balancer,
            api_key,
        }
    }

    async fn publish_through_balancer(&self, channel: &str, data: Value) {
        let answer = reqwest::Client::new()
            .post(self.balancer.url("/api/publish"))
            .bearer_auth(&self.api_key)
            .json(&json!({"channel": channel, "data": data}))
            .send()
            .await
            .expect("publish through nginx");
        assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    }
}

/// A fresh directory for one process's files (config, pid, data), removed by its owner's `Drop`.
fn scratch_directory(process: &str, port: u16) -> PathBuf {
    let directory = std::env::temp_dir().join(format!(
        "switchboard-it-{process}-{}-{port}",
        std::process::id()
    ));
    std::fs::create_dir_all(&directory).expect("scratch directory");
    directory
}

/// nginx from Debian's package, running `deploy/nginx/nginx.conf` in the foreground.
struct Nginx {
    child: tokio::process::Child,
    port: u16,
    directory: PathBuf,
}

impl Nginx {
    async fn start(nodes: &[TestServer]) -> Self {
        let port = free_port();
        let directory = scratch_directory("nginx", port);
        let mut config = read("nginx/nginx.conf");
        for (name, node) in ["switchboard-1:8080", "switchboard-2:8080"]
            .iter()
            .zip(nodes)
        {
            let rewritten = config.replace(
                &format!("server {name} "),
                &format!("server {} ", node.address),
            );
            assert_ne!(rewritten, config, "nginx.conf has no upstream {name}");
            config = rewritten;
        }
        let rewritten = config.replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
        assert_ne!(rewritten, config, "nginx.conf listens on 80");
        let config_path = directory.join("nginx.conf");
        std::fs::write(&config_path, rewritten).expect("write nginx.conf");
        let error_log = directory.join("error.log");
        let globals = format!(
            "daemon off; pid {}; error_log {} warn;",
            directory.join("nginx.pid").display(),
            error_log.display()
        );
        let child = tokio::process::Command::new("nginx")
            .arg("-p")
            .arg(&directory)
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg(&error_log)
            .arg("-g")
            .arg(globals)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx runs (make test-deps installs it)");
        let nginx = Self {
            child,
            port,
            directory,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(nginx.directory.join("error.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        nginx
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// A client through nginx, joined to `channel` at the handshake, past its welcome.
    async fn member(&self, channel: &str) -> Client {
        let mut client = Client::connect(&self.ws_url(&format!("/ws?channel={channel}")), &[])
            .await
            .expect("a handshake through nginx");
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers (SIGKILL would orphan them).
        if let Some(pid) = self.child.id() {
            crate::support::send_sigterm(pid);
            for _ in 0..100 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Waits for the next `message` frame, skipping replies.
async fn next_message(client: &mut Client) -> Value {
    loop {
        let frame = client.recv().await;
        if frame["type"] == "message" {
            return frame;
        }
    }
}

async fn connections(node: &TestServer) -> f64 {
    node.metric("switchboard_connections").await.unwrap_or(0.0)
}

#[tokio::test]
async fn a_publish_through_the_balancer_reaches_clients_on_both_nodes_and_a_rolling_restart_keeps_them()
 {
    let topology = Topology::start().await;
    let balancer = &topology.balancer;
    let (status, body) = http_get(&balancer.url("/readyz")).await;
    assert_eq!((status, body.contains("ready")), (200, true), "{body}");
    assert_eq!(
        http_get(&balancer.url("/metrics")).await.0,
        404,
        "metrics stay private"
    );

    // No stickiness: six clients through nginx land on both nodes.
    let mut members = Vec::new();
    for _ in 0..6 {
        members.push(balancer.member("room:lb").await);
    }
    let (first, second) = (&topology.nodes[0], &topology.nodes[1]);
    let spread = (connections(first).await, connections(second).await);
    assert!(
        spread.0 >= 1.0 && spread.1 >= 1.0 && spread.0 + spread.1 == 6.0,
        "{spread:?}"
    );

    // A back end publishes through the balancer, a client through the balancer, and a back end
    // with plain Redis: every member hears all three, whichever node it is on.
    topology
        .publish_through_balancer("room:lb", json!("from the api"))
        .await;
    for member in &mut members {
        assert_eq!(next_message(member).await["data"], "from the api");
    }
    let reply = members[0]
        .request(
            json!({"action": "publish", "channel": "room:lb", "data": "from a client"}),
            1,
        )
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    for member in &mut members {
        assert_eq!(next_message(member).await["data"], "from a client");
    }
    topology
        .redis
        .cli(&["PUBLISH", "sb:ch:room:lb", r#"{"data": "from redis"}"#])
        .await;
    for member in &mut members {
        assert_eq!(next_message(member).await["data"], "from redis");
    }

    // A rolling restart of the first node. A socket that cannot take its close frame (it reads
    // nothing, and a back end has published megabytes to it: it overflowed its queue and its
    // 4010 close waits behind full buffers) keeps that node draining while its clients
    // reconnect.
    let _stuck = SilentSocket::connect(first.address, "/ws?channel=flood").await;
    first.wait_for_metric("switchboard_channels", 2.0).await;
    let backend = topology.redis.client().await;
    let payload = json!({"data": "x".repeat(60_000)}).to_string();
    let slow_consumer =
        "switchboard_closes_total{code=\"4010\",reason=\"slow_consumer\",initiator=\"server\"}";
    for _ in 0..400 {
        backend.publish("sb:ch:flood", payload.clone()).await;
    }
    first.wait_for_metric(slow_consumer, 1.0).await;
    first.terminate();
    let closes = futures_util::future::join_all(members.iter_mut().map(|member| async {
        tokio::time::timeout(Duration::from_secs(2), member.expect_close())
            .await
            .ok()
            .map(|(code, _)| code)
    }))
    .await;
    let moved = closes.iter().filter(|code| code.is_some()).count();
    assert!(
        closes.iter().flatten().all(|code| *code == 1012),
        "{closes:?}"
    );
    assert_eq!(
        moved as f64, spread.0,
        "every client of the first node got 1012"
    );
    first.wait_for_readiness(503).await;

    // They reconnect through nginx while the first node still drains: its 503s are retried on
    // the second node, so every handshake succeeds.
    let mut reconnected = Vec::new();
    for _ in 0..moved {
        reconnected.push(balancer.member("room:lb").await);
    }
    assert_eq!(
        first.readiness().await,
        503,
        "the first node is still draining"
    );
    second.wait_for_metric("switchboard_connections", 6.0).await;
    assert!(
        first
            .metric("switchboard_handshakes_refused_total{reason=\"unavailable\"}")
            .await
            .is_some_and(|refused| refused >= 1.0),
        "nginx tried the draining node, and the client never saw its 503"
    );
    topology
        .publish_through_balancer("room:lb", json!("after the restart"))
        .await;
    for member in reconnected.iter_mut() {
        assert_eq!(next_message(member).await["data"], "after the restart");
    }
    for (member, close) in members.iter_mut().zip(&closes) {
        if close.is_none() {
            assert_eq!(next_message(member).await["data"], "after the restart");
        }
    }
}

async fn http_get(url: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(WAIT)
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Prometheus from Debian's package with `deploy/prometheus/prometheus.yml`: its targets the
/// topology's nodes, its rule file the repository's, and one-second intervals.
struct Prometheus {
    _child: tokio::process::Child,
    port: u16,
    directory: PathBuf,
}

impl Prometheus {
    async fn start(nodes: &[TestServer]) -> Self {
        let port = free_port();
        let directory = scratch_directory("prometheus", port);
        let mut config = read("prometheus/prometheus.yml");
        let rewrites = [
            (
                "switchboard-1:8080".to_owned(),
                nodes[0].address.to_string(),
            ),
            (
                "switchboard-2:8080".to_owned(),
                nodes[1].address.to_string(),
            ),
            (
                "scrape_interval: 15s".to_owned(),
                "scrape_interval: 1s".to_owned(),
            ),
            (
                "evaluation_interval: 15s".to_owned(),
                "evaluation_interval: 1s".to_owned(),
            ),
            (
                "/etc/prometheus/alerts.yaml".to_owned(),
                deploy_path("prometheus/alerts.yaml").display().to_string(),
            ),
        ];
        for (from, to) in rewrites {
            assert!(config.contains(&from), "prometheus.yml has no {from}");
            config = config.replace(&from, &to);
        }
        let config_path = directory.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let child = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                directory.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus runs (make test-deps installs it)");
        let prometheus = Self {
            _child: child,
            port,
            directory,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = reqwest::get(prometheus.url("/-/ready")).await {
                if response.status() == 200 {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let answer: Value = reqwest::Client::new()
            .get(self.url(path))
            .query(query)
            .timeout(WAIT)
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("JSON");
        answer
    }

    /// Waits until `check` holds for the answer to `path`.
    async fn wait_for(
        &self,
        path: &str,
        query: &[(&str, &str)],
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let answer = self.api(path, query).await;
            if check(&answer) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {answer}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Prometheus scrapes both nodes; every dashboard panel's query and every alert rule evaluates
/// without error against their real series; the rules are healthy and quiet; and when Redis dies
/// the Redis-down alert becomes pending for both nodes.
#[tokio::test]
async fn prometheus_scrapes_both_nodes_and_evaluates_every_panel_and_alert() {
    let mut topology = Topology::start().await;
    let mut member = topology.balancer.member("room:metrics").await;
    topology
        .publish_through_balancer("room:metrics", json!(1))
        .await;
    assert_eq!(next_message(&mut member).await["data"], 1);
    let prometheus = Prometheus::start(&topology.nodes).await;

    let both_up = |answer: &Value| {
        let result = answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        result.len() == 2 && result.iter().all(|series| series["value"][1] == "1")
    };
    prometheus
        .wait_for(
            "/api/v1/query",
            &[("query", "up{job=\"switchboard\"}")],
            "both nodes scraped",
            both_up,
        )
        .await;
    prometheus
        .wait_for(
            "/api/v1/query",
            &[("query", "switchboard_broker_up")],
            "both nodes report Redis up",
            both_up,
        )
        .await;
    for expression in dashboard_and_alert_expressions() {
        let answer = prometheus
            .api("/api/v1/query", &[("query", expression.as_str())])
            .await;
        assert_eq!(answer["status"], "success", "{expression}: {answer}");
    }
    let connections = prometheus
        .api(
            "/api/v1/query",
            &[("query", "sum(switchboard_connections)")],
        )
        .await;
    assert_eq!(
        connections["data"]["result"][0]["value"][1], "1",
        "{connections}"
    );

    // Every rule evaluated without error, and none is pending or firing in a healthy cluster.
    let rule_count = yaml("prometheus/alerts.yaml")["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    prometheus
        .wait_for(
            "/api/v1/rules",
            &[],
            "every rule evaluated and healthy",
            |answer| {
                let rules = answer["data"]["groups"][0]["rules"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                rules.len() == rule_count && rules.iter().all(|rule| rule["health"] == "ok")
            },
        )
        .await;
    let alerts = prometheus.api("/api/v1/alerts", &[]).await;
    assert_eq!(alerts["data"]["alerts"], json!([]), "{alerts}");

    topology.redis.kill().await;
    prometheus
        .wait_for(
            "/api/v1/alerts",
            &[],
            "SwitchboardRedisDown pending on both nodes",
            |answer| {
                answer["data"]["alerts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|alert| {
                        alert["labels"]["alertname"] == "SwitchboardRedisDown"
                            && alert["state"] == "pending"
                    })
                    .count()
                    == 2
            },
        )
        .await;
}
