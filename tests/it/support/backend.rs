//! Real HTTP back ends playing Django, each an actix-web server on a free loopback port in its
//! own thread:
//! - [`DjangoView`], the introspection view: answers `GET /introspect` from a table of sessions
//!   (keyed by the `sessionid` cookie) that the test edits while sockets are open;
//! - [`DjangoRoutes`], the views behind `[routes]`: an echo route, a route answering with
//!   instructions, a slow one, a failing one, and the connect and disconnect hooks.
//!
//! Both record every call and can be told to fail (500) or to be slow.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

/// How the view behaves right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Normal,
    /// Answers 500 Internal Server Error.
    Failing,
    /// Waits this long before answering normally.
    Slow(Duration),
}

#[derive(Default)]
struct State {
    /// sessionid → the 200 body.
    sessions: HashMap<String, Value>,
    mode: Option<Mode>,
    /// Every call: when, and the session it asked about.
    calls: Vec<(Instant, String)>,
}

/// The running view; stopped on drop.
pub struct DjangoView {
    pub url: String,
    state: Arc<Mutex<State>>,
    server: actix_web::dev::ServerHandle,
}

impl DjangoView {
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let (address, server) = serve(move |config| {
            config
                .app_data(web::Data::new(shared.clone()))
                .route("/introspect", web::get().to(introspect));
        });
        Self {
            url: format!("http://{address}/introspect"),
            state,
            server,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("view state")
    }

    /// Logs `user` in under session cookie `sessionid`, with extra fields for the 200 body.
    pub fn log_in(&self, sessionid: &str, user: &str, extra: Value) {
        let mut body = json!({"user": user, "session": format!("django-{sessionid}")});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        self.state().sessions.insert(sessionid.to_owned(), body);
    }

    pub fn log_out(&self, sessionid: &str) {
        self.state().sessions.remove(sessionid);
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state().mode = Some(mode);
    }

    /// Calls so far.
    pub fn calls(&self) -> usize {
        self.state().calls.len()
    }

    /// When each call about `sessionid` came.
    pub fn calls_about(&self, sessionid: &str) -> Vec<Instant> {
        self.state()
            .calls
            .iter()
            .filter(|(_, session)| session == sessionid)
            .map(|(at, _)| *at)
            .collect()
    }
}

impl Drop for DjangoView {
    fn drop(&mut self) {
        drop(self.server.stop(false));
    }
}

async fn introspect(request: HttpRequest, state: web::Data<Arc<Mutex<State>>>) -> HttpResponse {
    let sessionid = request
        .headers()
        .get("cookie")
        .and_then(|value| value.to_str().ok())
        .into_iter()
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "sessionid")
        .map(|(_, value)| value.to_owned())
        .unwrap_or_default();
    let (mode, answer) = {
        let mut state = state.lock().expect("view state");
        state.calls.push((Instant::now(), sessionid.clone()));
        (
            state.mode.unwrap_or(Mode::Normal),
            state.sessions.get(&sessionid).cloned(),
        )
    };
    match mode {
        Mode::Failing => return HttpResponse::InternalServerError().body("database is down"),
        Mode::Slow(delay) => actix_web::rt::time::sleep(delay).await,
        Mode::Normal => {}
    }
    match answer {
        Some(body) => HttpResponse::Ok().json(body),
        None => HttpResponse::Unauthorized().json(json!({"detail": "not logged in"})),
    }
}

/// Serves the routes `configure` registers on a free loopback port, in a thread of its own.
fn serve<F>(configure: F) -> (SocketAddr, actix_web::dev::ServerHandle)
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let (handle_sender, handle_receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || App::new().configure(configure.clone()))
                .workers(1)
                .disable_signals()
                .listen(listener)
                .expect("listen")
                .run();
            handle_sender.send(server.handle()).expect("hand over");
            let _ = server.await;
        });
    });
    let server = handle_receiver
        .recv_timeout(Duration::from_secs(10))
        .expect("back end started");
    (address, server)
}

/// One call to a route or hook: its path, the JSON it was sent, and the `X-Switchboard-*` and
/// cookie headers.
#[derive(Debug, Clone)]
pub struct RouteCall {
    pub path: String,
    pub body: Value,
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct RoutesState {
    calls: Vec<RouteCall>,
    /// How long `/ws/slow` takes to answer.
    slow: Duration,
}

/// The Django views behind `[routes]`:
/// - `/ws/echo`: replies `{"echo": <the frame>, "user": <X-Switchboard-User>}`;
/// - `/ws/rooms`: answers instructions: join the frame's `room`, publish `{"joined": user}` to
///   it, reply `{"room": …}`;
/// - `/ws/slow`: answers `{}` after the configured delay;
/// - `/ws/fail`: 500 with `{"reason": "database is down"}`;
/// - `/ws/connect`: refuses user `banned` with 403, else adds channel `inbox:<user>`;
/// - `/ws/disconnect`: answers 204.
pub struct DjangoRoutes {
    pub base: String,
    state: Arc<Mutex<RoutesState>>,
    server: actix_web::dev::ServerHandle,
}

impl DjangoRoutes {
    pub fn start(slow: Duration) -> Self {
        let state = Arc::new(Mutex::new(RoutesState {
            slow,
            ..RoutesState::default()
        }));
        let shared = state.clone();
        let (address, server) = serve(move |config| {
            config
                .app_data(web::Data::new(shared.clone()))
                .route("/ws/{route}", web::post().to(route));
        });
        Self {
            base: format!("http://{address}/ws"),
            state,
            server,
        }
    }

    /// The `[routes]` section naming these views (`slow` and `fail` as actions of their own).
    pub fn routes_config(&self) -> String {
        let base = &self.base;
        format!(
            "[routes]\ndefault = \"{base}/echo\"\nrooms = \"{base}/rooms\"\nslow = \"{base}/slow\"\nfail = \"{base}/fail\"\nconnect = \"{base}/connect\"\ndisconnect = \"{base}/disconnect\"\n"
        )
    }

    /// Calls so far to `/ws/<route>`.
    pub fn calls_to(&self, route: &str) -> Vec<RouteCall> {
        let path = format!("/ws/{route}");
        self.state
            .lock()
            .expect("routes state")
            .calls
            .iter()
            .filter(|call| call.path == path)
            .cloned()
            .collect()
    }

    /// Waits (bounded) until `/ws/<route>` has been called `count` times.
    pub async fn wait_for_calls(&self, route: &str, count: usize) -> Vec<RouteCall> {
        let deadline = Instant::now() + crate::support::WAIT;
        loop {
            let calls = self.calls_to(route);
            if calls.len() >= count {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "{route} called {} times, not {count}",
                calls.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for DjangoRoutes {
    fn drop(&mut self) {
        drop(self.server.stop(false));
    }
}

async fn route(
    request: HttpRequest,
    body: web::Json<Value>,
    state: web::Data<Arc<Mutex<RoutesState>>>,
) -> HttpResponse {
    let headers: HashMap<String, String> = request
        .headers()
        .iter()
        .filter(|(name, _)| {
            name.as_str().starts_with("x-switchboard-") || name.as_str() == "cookie"
        })
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let user = headers.get("x-switchboard-user").cloned();
    let slow = {
        let mut state = state.lock().expect("routes state");
        state.calls.push(RouteCall {
            path: request.path().to_owned(),
            body: body.0.clone(),
            headers,
        });
        state.slow
    };
    let frame = &body.0["body"];
    match request.match_info().get("route").unwrap_or_default() {
        "echo" => HttpResponse::Ok().json(json!({"echo": frame, "user": user})),
        "rooms" => {
            let room = frame["room"].as_str().unwrap_or("lobby").to_owned();
            HttpResponse::Ok().json(json!({
                "reply": {"room": room},
                "join": [room],
                "publish": [{"channel": room, "data": {"joined": user}}],
            }))
        }
        "slow" => {
            actix_web::rt::time::sleep(slow).await;
            HttpResponse::Ok().json(json!({}))
        }
        "fail" => HttpResponse::InternalServerError().json(json!({"reason": "database is down"})),
        "connect" if user.as_deref() == Some("banned") => {
            HttpResponse::Forbidden().json(json!({"reason": "banned user"}))
        }
        "connect" => HttpResponse::Ok()
            .json(json!({"join": [format!("inbox:{}", user.unwrap_or_default())]})),
        "disconnect" => HttpResponse::NoContent().finish(),
        _ => HttpResponse::NotFound().finish(),
    }
}
