//! A registry in the test process that misbehaves on purpose: it serves one repository of a
//! [`Built`] image over plain HTTP/1.1 on 127.0.0.1 (keep-alive, GET and HEAD) and applies the
//! [`Faults`] it was started with. It records every request for assertions.

use super::http::{basic_auth, read_head};
use super::layer::sha256;
use super::layout::Built;
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The authentication a [`HostileRegistry`] demands on `/v2/...`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HostileAuth {
    /// None.
    #[default]
    None,
    /// `Authorization: Basic` with these; else `401` with `WWW-Authenticate: Basic realm=...`.
    Basic {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer TOKEN`; else `401` with a Bearer challenge whose realm is this
    /// server's `/token`, which hands out `{"token":"TOKEN"}` (only for these basic credentials,
    /// when set).
    Bearer {
        /// The token `/token` hands out and `/v2/` accepts.
        token: String,
        /// Credentials `/token` requires, if any.
        basic: Option<(String, String)>,
    },
}

/// What goes wrong. Layer faults hit the first layer of the first manifest.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Serve the layer with one byte changed: its bytes do not match its digest.
    pub bad_digest: bool,
    /// Send half the layer (with the full `Content-Length`), then close the connection.
    pub drop_halfway: bool,
    /// Serve the tag's manifest padded to this many bytes (valid JSON, honest digest).
    pub huge_manifest: Option<usize>,
    /// Send the layer 1 KiB at a time, waiting this long between chunks.
    pub slow_layer: Option<Duration>,
    /// Authentication demanded.
    pub auth: HostileAuth,
}

/// One request the server saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

struct State {
    name: String,
    tag: String,
    built: Built,
    faults: Faults,
    addr: String,
    seen: Mutex<Vec<Seen>>,
    layer_bytes_sent: AtomicU64,
    stop: AtomicBool,
}

/// The server; stops on drop.
pub struct HostileRegistry {
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl HostileRegistry {
    /// Serves `built` as `NAME:TAG` (e.g. `test/img`, `latest`) with `faults`.
    pub fn start(name: &str, tag: &str, built: Built, faults: Faults) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr").to_string();
        let state = Arc::new(State {
            name: name.into(),
            tag: tag.into(),
            built,
            faults,
            addr,
            seen: Mutex::new(Vec::new()),
            layer_bytes_sent: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = state.clone();
        let accept = std::thread::spawn(move || accept_loop(&listener, &s));
        Self {
            state,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.state.addr
    }

    /// `127.0.0.1:PORT/NAME:TAG`, the image reference to pull.
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.state.addr, self.state.name, self.state.tag)
    }

    /// The faulty layer's path: `/v2/NAME/blobs/DIGEST`.
    pub fn layer_path(&self) -> String {
        let digest = &self.state.built.manifests[0].layers[0].digest;
        format!("/v2/{}/blobs/{digest}", self.state.name)
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen").clone()
    }

    /// Bytes of the first layer sent so far (all connections together).
    pub fn layer_bytes_sent(&self) -> u64 {
        self.state.layer_bytes_sent.load(Ordering::SeqCst)
    }

    /// Polls until `cond(self)` holds; false if `timeout` passes first.
    pub fn wait_until(&self, timeout: Duration, cond: impl Fn(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        cond(self)
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect(&self.state.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    for conn in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let s = state.clone();
        std::thread::spawn(move || serve_connection(conn, &s));
    }
}

/// Answers requests on one connection until it closes, a response closes it, or the server
/// stops.
fn serve_connection(conn: TcpStream, state: &State) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = conn;
    while !state.stop.load(Ordering::SeqCst) {
        let Some((line, headers)) = read_head(&mut reader) else {
            return;
        };
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let seen = Seen {
            method: method.clone(),
            path: path.clone(),
            authorization: header("authorization"),
        };
        state.seen.lock().expect("seen").push(seen.clone());
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if !respond(&mut out, state, &seen) || close {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// A response to send: status, extra headers, body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn error(status: u16, code: &str) -> Self {
        let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{code}"}}]}}"#);
        Self::new(status, body).header("Content-Type", "application/json")
    }
}

/// How a body goes out.
enum Send {
    All,
    Half,
    Slow(Duration),
}

/// Routes one request and writes the reply; false when the connection must close.
fn respond(out: &mut TcpStream, state: &State, seen: &Seen) -> bool {
    let (reply, send, is_layer) = route(state, seen);
    let head_only = seen.method == "HEAD";
    write_reply(
        out,
        state,
        reply,
        if head_only { None } else { Some(send) },
        is_layer,
    )
}

/// The reply to `seen`, how to send its body, and whether it is the faulty layer.
fn route(state: &State, seen: &Seen) -> (Reply, Send, bool) {
    let path = seen.path.split('?').next().unwrap_or("");
    if path == "/token" {
        return (token_reply(state, seen), Send::All, false);
    }
    if !path.starts_with("/v2/") {
        return (Reply::error(404, "NOT_FOUND"), Send::All, false);
    }
    if let Some(challenge) = auth_challenge(state, seen) {
        let reply = Reply::error(401, "UNAUTHORIZED").header("WWW-Authenticate", challenge);
        return (reply, Send::All, false);
    }
    if seen.method != "GET" && seen.method != "HEAD" {
        return (Reply::error(405, "UNSUPPORTED"), Send::All, false);
    }
    if path == "/v2/" {
        return (Reply::new(200, "{}"), Send::All, false);
    }
    let repo = format!("/v2/{}/", state.name);
    let Some(rest) = path.strip_prefix(&repo) else {
        return (Reply::error(404, "NAME_UNKNOWN"), Send::All, false);
    };
    if let Some(reference) = rest.strip_prefix("manifests/") {
        return (manifest_reply(state, reference), Send::All, false);
    }
    match rest.strip_prefix("blobs/") {
        Some(digest) => blob_reply(state, digest),
        None => (Reply::error(404, "NOT_FOUND"), Send::All, false),
    }
}

/// The challenge to answer with when `seen` lacks the required authorization.
fn auth_challenge(state: &State, seen: &Seen) -> Option<String> {
    let given = seen.authorization.as_deref();
    match &state.faults.auth {
        HostileAuth::None => None,
        HostileAuth::Basic { user, password } => (given != Some(&basic_auth(user, password)))
            .then(|| r#"Basic realm="moat-hostile""#.to_string()),
        HostileAuth::Bearer { token, .. } => {
            (given != Some(&format!("Bearer {token}"))).then(|| {
                format!(
                    r#"Bearer realm="http://{}/token",service="test",scope="repository:{}:pull""#,
                    state.addr, state.name
                )
            })
        }
    }
}

/// `/token`: the Bearer token, when the basic credentials it needs (if any) are given.
fn token_reply(state: &State, seen: &Seen) -> Reply {
    let HostileAuth::Bearer { token, basic } = &state.faults.auth else {
        return Reply::error(404, "NOT_FOUND");
    };
    if let Some((user, password)) = basic {
        if seen.authorization.as_deref() != Some(&basic_auth(user, password)) {
            return Reply::error(401, "UNAUTHORIZED")
                .header("WWW-Authenticate", r#"Basic realm="moat-hostile-token""#);
        }
    }
    Reply::new(200, format!(r#"{{"token":"{token}"}}"#)).header("Content-Type", "application/json")
}

/// A manifest or index by tag or digest.
fn manifest_reply(state: &State, reference: &str) -> Reply {
    let built = &state.built;
    let (body, media_type) = if reference == state.tag || reference == built.top_digest {
        let top = built.top().to_vec();
        match state.faults.huge_manifest {
            Some(size) => (pad_json(&top, size), built.top_media_type),
            None => (top, built.top_media_type),
        }
    } else if let Some(m) = built.manifests.iter().find(|m| m.digest == reference) {
        (m.json.clone(), super::layout::MANIFEST_TYPE)
    } else {
        return Reply::error(404, "MANIFEST_UNKNOWN");
    };
    let digest = sha256(&body);
    Reply::new(200, body)
        .header("Content-Type", media_type)
        .header("Docker-Content-Digest", digest)
}

/// `json` (an object) with an annotation that pads it to `size` bytes.
fn pad_json(json: &[u8], size: usize) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(json).expect("manifest json");
    let base = serde_json::to_vec(&value).expect("json").len();
    let overhead = r#","annotations":{"pad":""}"#.len();
    let pad = "x".repeat(size.saturating_sub(base + overhead));
    value["annotations"] = serde_json::json!({ "pad": pad });
    serde_json::to_vec(&value).expect("json")
}

/// A blob by digest, with the layer faults applied to the first layer.
fn blob_reply(state: &State, digest: &str) -> (Reply, Send, bool) {
    let Some(data) = state.built.blobs.get(digest) else {
        return (Reply::error(404, "BLOB_UNKNOWN"), Send::All, false);
    };
    let is_layer = digest == state.built.manifests[0].layers[0].digest;
    let mut body = data.clone();
    let faults = &state.faults;
    if is_layer && faults.bad_digest && !body.is_empty() {
        let mid = body.len() / 2;
        body[mid] ^= 0xff;
    }
    let send = match (is_layer, faults.drop_halfway, faults.slow_layer) {
        (true, true, _) => Send::Half,
        (true, false, Some(delay)) => Send::Slow(delay),
        _ => Send::All,
    };
    let reply = Reply::new(200, body)
        .header("Content-Type", "application/octet-stream")
        .header("Docker-Content-Digest", digest);
    (reply, send, is_layer)
}

/// Writes the head and (unless `send` is `None`) the body as told; false when the connection
/// must close (cut on purpose, or a write failed).
fn write_reply(
    out: &mut TcpStream,
    state: &State,
    reply: Reply,
    send: Option<Send>,
    is_layer: bool,
) -> bool {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nDocker-Distribution-API-Version: registry/2.0\r\n",
        reply.status,
        reason(reply.status),
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        head += &format!("{k}: {v}\r\n");
    }
    if out.write_all((head + "\r\n").as_bytes()).is_err() {
        return false;
    }
    let count = |n: usize| {
        if is_layer {
            state.layer_bytes_sent.fetch_add(n as u64, Ordering::SeqCst);
        }
    };
    match send {
        None => true,
        Some(Send::All) => {
            count(reply.body.len());
            out.write_all(&reply.body).is_ok()
        }
        Some(Send::Half) => {
            let half = &reply.body[..reply.body.len() / 2];
            let _ = out.write_all(half).and_then(|()| out.flush());
            count(half.len());
            false
        }
        Some(Send::Slow(delay)) => trickle(out, state, &reply.body, delay, &count),
    }
}

/// Sends `body` 1 KiB at a time with `delay` between chunks; stops when the server does.
fn trickle(
    out: &mut TcpStream,
    state: &State,
    body: &[u8],
    delay: Duration,
    count: &dyn Fn(usize),
) -> bool {
    for chunk in body.chunks(1024) {
        if state.stop.load(Ordering::SeqCst) || out.write_all(chunk).is_err() {
            return false;
        }
        count(chunk.len());
        std::thread::sleep(delay);
    }
    true
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Status",
    }
}
