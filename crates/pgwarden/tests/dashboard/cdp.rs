//! A real headless chromium (Debian's package) driven over the DevTools
//! protocol: a small client over a websocket, one page, every call under a
//! deadline. The browser and its profile directory go when it is dropped.
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

const CALL_DEADLINE: Duration = Duration::from_secs(20);

/// What a failed wait reports of the page: the last operation's answer,
/// the members' rows and the history's kinds.
const PAGE_STATE: &str = "JSON.stringify({result: document.getElementById('result')?.textContent, \
    conn: document.getElementById('conn')?.textContent, \
    members: [...document.querySelectorAll('#member-rows tr')].map(r => r.innerText.replace(/\\s+/g, ' ')), \
    history: [...document.querySelectorAll('#history-rows tr')].map(r => r.dataset.kind)})";

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Browser {
    child: Child,
    _profile: testkit::TempDir,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next: AtomicU64,
    session: String,
    /// Console errors and uncaught exceptions of the page, as text.
    pub errors: Arc<Mutex<Vec<String>>>,
}

/// The chromium program, if installed.
pub fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

impl Browser {
    pub async fn launch(program: &str) -> Browser {
        let profile = testkit::TempDir::new("chromium");
        let child = Command::new(program)
            .args([
                "--headless=new",
                "--no-sandbox", // tests run as root
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // chromium writes its port and the browser's websocket path there
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(s) = std::fs::read_to_string(&port_file) {
                let mut l = s.lines();
                if let (Some(port), Some(path)) = (l.next(), l.next()) {
                    break format!("ws://127.0.0.1:{port}{path}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (ws, _) = tokio::time::timeout(CALL_DEADLINE, tokio_tungstenite::connect_async(&url))
            .await
            .expect("DevTools connect in time")
            .expect("DevTools websocket");
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let (p, e) = (pending.clone(), errors.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = p.lock().unwrap().remove(&id) {
                        let _ = tx.send(v);
                    }
                } else if let Some(err) = page_error(&v) {
                    e.lock().unwrap().push(err);
                }
            }
        });
        let mut b = Browser {
            child,
            _profile: profile,
            out,
            pending,
            next: AtomicU64::new(1),
            session: String::new(),
            errors,
        };
        let t = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target = t["targetId"].as_str().expect("targetId").to_owned();
        let s = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        b.session = s["sessionId"].as_str().expect("sessionId").to_owned();
        for m in ["Runtime.enable", "Log.enable", "Page.enable"] {
            b.call(m, json!({})).await;
        }
        b
    }

    /// One DevTools command (on the page once attached); its result.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.out
            .send(Message::Text(msg.to_string()))
            .expect("DevTools connection open");
        let v = tokio::time::timeout(CALL_DEADLINE, rx)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer within {CALL_DEADLINE:?}"))
            .expect("DevTools answer");
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }

    pub async fn goto(&self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(r.get("errorText").is_none(), "navigate {url}: {r}");
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is true, or fails with `what` at the deadline
    /// (and what the page shows then).
    pub async fn wait_for(&self, expr: &str, limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        loop {
            if self.eval(expr).await == json!(true) {
                return;
            }
            if Instant::now() >= deadline {
                let shown = self.eval(PAGE_STATE).await;
                panic!("{what}: not within {limit:?}; the page shows: {shown}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Closes the browser cleanly (it reaps its own processes), then
    /// stops it if it has not exited within 10 s.
    pub async fn close(mut self) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let _ = self.out.send(Message::Text(
            json!({"id": id, "method": "Browser.close", "params": {}}).to_string(),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A key pressed on the focused element, as a keyboard would.
    pub async fn press(&self, key: &str, code: u32) {
        let text = if key == "Enter" { "\r" } else { "" };
        for kind in ["keyDown", "keyUp"] {
            let mut p = json!({"type": kind, "key": key, "code": key,
                "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code});
            if kind == "keyDown" && !text.is_empty() {
                p["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", p).await;
        }
    }

    pub async fn color_scheme(&self, dark: bool) {
        let v = if dark { "dark" } else { "light" };
        self.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": v}]}),
        )
        .await;
    }

    pub async fn screenshot(&self, to: &Path) {
        use base64::Engine;
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64 png");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(to, png).expect("write the screenshot");
        eprintln!("screenshot: {}", to.display());
    }
}

/// An error the page reported: an uncaught exception, console.error, or
/// a browser log entry of level error.
fn page_error(v: &Value) -> Option<String> {
    let p = &v["params"];
    match v["method"].as_str()? {
        "Runtime.exceptionThrown" => Some(format!("exception: {}", p["exceptionDetails"])),
        "Runtime.consoleAPICalled" if p["type"] == "error" || p["type"] == "assert" => {
            Some(format!("console.{}: {}", p["type"], p["args"]))
        }
        "Log.entryAdded" if p["entry"]["level"] == "error" => Some(format!(
            "log ({}): {} {}",
            p["entry"]["source"], p["entry"]["text"], p["entry"]["url"]
        )),
        _ => None,
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
