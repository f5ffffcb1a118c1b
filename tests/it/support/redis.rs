//! Real `redis-server` processes for the tests: a standalone server or a three-master cluster,
//! each on free loopback ports (at most 55535, since a cluster node also listens on port +
//! 10000), killed on drop. Also a small client for what back-ends do: publish, and ask Redis
//! what is subscribed.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value as RedisValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::support::WAIT;

/// Ports are handed out from here upward, so parallel tests never race for one.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A free port ≤ 55535 whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    if NEXT_PORT.load(Ordering::Relaxed) == 0 {
        // Spread concurrent test binaries apart.
        let start = 20_000 + (std::process::id() % 300) as u16 * 100;
        let _ = NEXT_PORT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    loop {
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        assert!(port <= 55_535, "ran out of test ports");
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// A `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    directory: PathBuf,
    cluster: bool,
    /// `requirepass`, if any.
    password: Option<String>,
    /// The CA certificate, when the server speaks only TLS.
    pub tls_ca: Option<PathBuf>,
    /// More `redis-server` arguments (`--replicaof …`).
    extra_args: Vec<String>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_on(free_port(), false).await
    }

    /// A server that requires `password` (`requirepass`).
    pub async fn start_with_password(password: &str) -> Self {
        let mut server = Self::new(free_port(), false);
        server.password = Some(password.to_owned());
        server.spawn().await;
        server
    }

    /// A server that writes every command to its append-only file before answering
    /// (`appendfsync always`), so a restart after a kill keeps everything it acknowledged.
    pub async fn start_persistent() -> Self {
        let mut server = Self::new(free_port(), false);
        server.extra_args = ["--appendonly", "yes", "--appendfsync", "always"]
            .map(String::from)
            .to_vec();
        server.spawn().await;
        server
    }

    /// A server that speaks only TLS, with a certificate for 127.0.0.1 issued by a CA made for
    /// the test (its PEM file is `tls_ca`).
    pub async fn start_tls() -> Self {
        let mut server = Self::new(free_port(), false);
        let tls = crate::support::credentials::loopback_tls("switchboard test CA");
        let write = |name: &str, pem: String| {
            let path = server.directory.join(name);
            std::fs::write(&path, pem).expect("write pem");
            path
        };
        let ca_path = write("ca.pem", tls.ca_pem);
        write("server.pem", tls.certificate_pem);
        write("server.key", tls.key_pem);
        server.tls_ca = Some(ca_path);
        server.spawn().await;
        server
    }

    /// A replica of the server on `primary_port`.
    pub async fn start_replica_of(primary_port: u16) -> Self {
        let mut server = Self::new(free_port(), false);
        server.extra_args = vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary_port.to_string(),
        ];
        server.spawn().await;
        server
    }

    /// Starts on `port` (e.g. to restart where a killed server was).
    pub async fn start_on(port: u16, cluster: bool) -> Self {
        let mut server = Self::new(port, cluster);
        server.spawn().await;
        server
    }

    fn new(port: u16, cluster: bool) -> Self {
        let directory = std::env::temp_dir().join(format!(
            "switchboard-it-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&directory).expect("redis directory");
        Self {
            child: None,
            port,
            directory,
            cluster,
            password: None,
            tls_ca: None,
            extra_args: Vec::new(),
        }
    }

    async fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        match &self.tls_ca {
            Some(ca) => {
                let directory = &self.directory;
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-ca-cert-file")
                    .arg(ca)
                    .arg("--tls-cert-file")
                    .arg(directory.join("server.pem"))
                    .arg("--tls-key-file")
                    .arg(directory.join("server.key"))
                    .args(["--tls-auth-clients", "no"]);
            }
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
        }
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.directory)
            .arg("--logfile")
            .arg(self.directory.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if self.cluster {
            command.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]);
        }
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        command.args(&self.extra_args);
        self.child = Some(command.spawn().expect(
            "cannot run redis-server: `make test` installs it (apt-get install redis-server)",
        ));
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.answers_ping().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on port {} did not start:\n{}",
                self.port,
                std::fs::read_to_string(self.directory.join("redis.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn answers_ping(&self) -> bool {
        if self.tls_ca.is_some() {
            return Command::new("redis-cli")
                .args(self.cli_connection())
                .arg("PING")
                .output()
                .await
                .is_ok_and(|output| output.stdout.starts_with(b"PONG"));
        }
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if stream.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        // Without the password the answer is `-NOAUTH …`, which still says the server is up.
        let mut answer = [0u8; 7];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut answer)).await,
            Ok(Ok(_)) if &answer == b"+PONG\r\n" || answer.starts_with(b"-NOAUTH")
        )
    }

    /// The URL a node or back end uses, with the password when there is one.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(password) => format!("{scheme}://:{password}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// `redis-cli` arguments to reach this server.
    fn cli_connection(&self) -> Vec<String> {
        let mut args = vec!["-p".to_owned(), self.port.to_string()];
        if let Some(password) = &self.password {
            args.extend(["--no-auth-warning".into(), "-a".into(), password.clone()]);
        }
        if let Some(ca) = &self.tls_ca {
            args.extend(["--tls".into(), "--cacert".into(), ca.display().to_string()]);
        }
        args
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }

    /// Starts the server again on the same port, empty (as after a crash without persistence).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// A client, as a back-end would hold one.
    pub async fn client(&self) -> RedisClient {
        RedisClient::connect(&self.url(), false).await
    }

    /// Runs `redis-cli -p PORT ARGS…` and returns its standard output.
    pub async fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(self.cli_connection())
            .args(args)
            .output()
            .await
            .expect("run redis-cli");
        assert!(output.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// A Redis Cluster of three masters (no replicas) on loopback.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_on(free_port(), true).await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self { nodes };
        let deadline = tokio::time::Instant::now() + WAIT;
        for node in &cluster.nodes {
            while !node
                .cli(&["CLUSTER", "INFO"])
                .await
                .contains("cluster_state:ok")
            {
                assert!(tokio::time::Instant::now() < deadline, "cluster not ok");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        cluster
    }

    pub fn url(&self) -> String {
        self.nodes[0].url()
    }
}

/// A primary, a replica, and one Sentinel monitoring them as `mymaster` (quorum 1, a primary
/// is down after 1 s), for failover tests.
pub struct RedisSentinel {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinel: Child,
    pub port: u16,
    directory: PathBuf,
}

impl RedisSentinel {
    pub async fn start() -> Self {
        let primary = RedisServer::start().await;
        let replica = RedisServer::start_replica_of(primary.port).await;
        let port = free_port();
        let directory = std::env::temp_dir().join(format!(
            "switchboard-it-sentinel-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&directory).expect("sentinel directory");
        let config = directory.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n",
                directory.display(),
                primary.port
            ),
        )
        .expect("sentinel.conf");
        let sentinel = Command::new("redis-server")
            .arg(&config)
            .args(["--sentinel", "--logfile"])
            .arg(directory.join("sentinel.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run redis-server --sentinel");
        let setup = Self {
            primary,
            replica,
            sentinel,
            port,
            directory,
        };
        // Failover needs the sentinel to know the replica.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let replicas = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "SENTINEL", "REPLICAS", "mymaster"])
                .output()
                .await
                .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
                .unwrap_or_default();
            if replicas.contains(&setup.replica.port.to_string()) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sentinel never saw the replica: {replicas}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        setup
    }

    /// The URL a node uses to find the primary through the sentinel.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=mymaster",
            self.port
        )
    }

    /// Whether the sentinel has promoted the replica.
    pub async fn failed_over(&self) -> bool {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"])
            .output()
            .await
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).contains(&self.replica.port.to_string())
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.sentinel.start_kill();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// A back end's client of Redis (what a Django process would hold): publish, inspect subscriptions,
/// run commands.
pub struct RedisClient {
    pub client: Client,
}

impl RedisClient {
    pub async fn connect(url: &str, cluster: bool) -> Self {
        let mut config = Config::from_url(url).expect("redis url");
        if cluster {
            if let fred::types::config::ServerConfig::Centralized { server } = config.server {
                config.server = fred::types::config::ServerConfig::Clustered {
                    hosts: vec![server],
                    policy: Default::default(),
                };
            }
        }
        let client = Builder::from_config(config).build().expect("build client");
        tokio::time::timeout(WAIT, client.init())
            .await
            .expect("redis connect timed out")
            .expect("redis connect");
        Self { client }
    }

    /// `PUBLISH channel payload`; returns how many subscribers Redis reached.
    pub async fn publish(&self, channel: &str, payload: impl Into<Vec<u8>>) -> i64 {
        let payload = RedisValue::Bytes(payload.into().into());
        self.client
            .publish(channel, payload)
            .await
            .expect("PUBLISH")
    }

    /// `SPUBLISH` (sharded pub/sub, for Redis Cluster).
    pub async fn spublish(&self, channel: &str, payload: impl Into<Vec<u8>>) -> i64 {
        let payload = RedisValue::Bytes(payload.into().into());
        self.client
            .spublish(channel, payload)
            .await
            .expect("SPUBLISH")
    }

    /// `PUBSUB NUMSUB channel`: how many connections subscribe to `channel`.
    pub async fn numsub(&self, channel: &str) -> i64 {
        let answer: Vec<RedisValue> = self
            .command("PUBSUB", vec!["NUMSUB", channel])
            .await
            .convert()
            .expect("NUMSUB answer");
        answer.get(1).and_then(RedisValue::as_i64).unwrap_or(-1)
    }

    /// `PUBSUB CHANNELS pattern`.
    pub async fn channels(&self, pattern: &str) -> Vec<String> {
        self.command("PUBSUB", vec!["CHANNELS", pattern])
            .await
            .convert()
            .expect("CHANNELS answer")
    }

    /// How many times Redis has run `command` (from `INFO commandstats`).
    pub async fn calls(&self, command: &str) -> u64 {
        let info: String = self
            .command("INFO", vec!["commandstats"])
            .await
            .convert()
            .expect("INFO answer");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    }

    /// `FCALL function 1 key payload`: the offset it returns (`None` for nil).
    pub async fn fcall(
        &self,
        function: &str,
        key: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Option<u64> {
        self.try_fcall(function, key, payload)
            .await
            .unwrap_or_else(|err| panic!("FCALL {function}: {err}"))
    }

    /// `FCALL`, with Redis's error if it refused.
    pub async fn try_fcall(
        &self,
        function: &str,
        key: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<Option<u64>, fred::error::Error> {
        let payload = RedisValue::Bytes(payload.into().into());
        let answer: RedisValue = self.client.fcall(function, key, vec![payload]).await?;
        Ok(answer.as_u64())
    }

    pub async fn command(&self, name: &'static str, args: Vec<&str>) -> RedisValue {
        self.client
            .custom(
                CustomCommand::new_static(name, ClusterHash::Random, false),
                args.clone(),
            )
            .await
            .unwrap_or_else(|err| panic!("{name} {args:?}: {err}"))
    }
}

/// The config of a node using the Redis broker at `url`.
pub fn node_config(url: &str, extra: &str) -> String {
    format!("[broker]\ntype = \"redis\"\nurl = \"{url}\"\n{extra}")
}
