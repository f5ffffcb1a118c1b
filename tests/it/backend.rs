//! A real HTTP back end playing the Django introspection view: an actix-web server on a free
//! loopback port, in its own thread, answering `GET /introspect` from a table of sessions
//! (keyed by the `sessionid` cookie) that the test edits while sockets are open. It records
//! every call, and can be told to fail (500) or to be slow.

use std::collections::HashMap;
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
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let (handle_sender, handle_receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(shared.clone()))
                        .route("/introspect", web::get().to(introspect))
                })
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
            .expect("view started");
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
