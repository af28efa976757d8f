//! A person with a browser: headless Chromium, driven through chromedriver's WebDriver protocol
//! (plain JSON over HTTP), loads the waterfall and a build page, logs in through a web-login URL,
//! clicks Stop Build, and sees the build interrupted. The screenshot is saved as
//! `target/browser-stop-build.png` (a test artifact, not committed).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::harness::{
    MasterSetup, PATIENCE, TestMaster, current_user, output_with_deadline, reap, text, wait_until,
};
use crate::repo::Checkout;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub(crate) struct Driver {
    process: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

impl Driver {
    pub(crate) fn start() -> Driver {
        let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .expect("chromedriver is missing: run `bash scripts/test.sh`, which installs chromium and chromium-driver");
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let process = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        wait_until("chromedriver to listen", || {
            http.get(format!("{base}/status")).send().is_ok()
        });
        let profile = tempfile::tempdir().expect("profile dir");
        // The flags keep Chromium off the network: this machine's only peers are on loopback.
        let capabilities = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1200,900",
                     format!("--user-data-dir={}", profile.path().display())]
        }}}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .and_then(|r| r.json())
            .expect("a WebDriver session");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Driver {
            process,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    pub(crate) fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = self.http.request(method, &url);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let value: Value = request
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|err| panic!("{path}: {err}"));
        assert!(value["value"]["error"].is_null(), "{path}: {value}");
        value["value"].clone()
    }

    pub(crate) fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})));
    }

    pub(crate) fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub(crate) fn element(&self, css: &str) -> String {
        let found = self.call(
            reqwest::Method::POST,
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    pub(crate) fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        );
    }

    /// How many elements match `css`.
    pub(crate) fn count(&self, css: &str) -> usize {
        let found = self.call(
            reqwest::Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_array()
            .unwrap_or_else(|| panic!("elements {css}: {found}"))
            .len()
    }

    /// The rendered text of the first element matching `css`.
    pub(crate) fn text(&self, css: &str) -> String {
        let element = self.element(css);
        let value = self.call(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            None,
        );
        value
            .as_str()
            .unwrap_or_else(|| panic!("text of {css}: {value}"))
            .to_string()
    }

    pub(crate) fn click(&self, css: &str) {
        let element = self.element(css);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    /// Runs `script` in the page and returns its value.
    pub(crate) fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Makes the viewport `width` CSS pixels wide (as a phone would), checked in the page.
    pub(crate) fn set_viewport_width(&self, width: u64, height: u64) {
        // Device-metrics emulation gives an exact viewport; resizing the window would
        // include the browser's frame and a minimum window width.
        self.call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(
                json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}}),
            ),
        );
        let inner = self.script("return window.innerWidth;");
        assert_eq!(inner.as_u64(), Some(width), "the viewport is {inner}");
    }

    pub(crate) fn title(&self) -> String {
        self.call(reqwest::Method::GET, "/title", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub(crate) fn screenshot(&self, path: &Path) {
        let encoded = self.call(reqwest::Method::GET, "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .expect("base64 PNG");
        std::fs::write(path, png).expect("screenshot written");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send();
        reap(&mut self.process);
    }
}

#[test]
fn a_person_logs_in_and_stops_a_build_in_chromium() {
    let checkout = Checkout::new();
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "sleep", command = "echo working; sleep 600" },"#,
    ));
    let _slave = master.start_slave("s1");
    let waiting = master
        .try_command(&checkout.work, "linux", true)
        .spawn()
        .expect("try runs");
    let web = format!("http://127.0.0.1:{}", master.http_port);
    wait_until("the build to run", || {
        reqwest::blocking::get(format!("{web}/api/builds?builder=linux"))
            .and_then(|r| r.text())
            .is_ok_and(|body| body.contains("\"name\":\"sleep\""))
    });

    let driver = Driver::start();
    driver.goto(&format!("{web}/"));
    assert_eq!(driver.text("#waterfall a[href='/builders/linux']"), "linux");
    assert_eq!(
        driver.text("#waterfall a[href='/builders/linux/builds/1']"),
        "#1"
    );
    driver.goto(&format!("{web}/builders/linux/builds/1"));
    assert_eq!(driver.text("#result"), "running");
    assert_eq!(
        driver.count("#stop-button"),
        0,
        "read-only before logging in"
    );
    assert!(
        driver.source().contains("Log in"),
        "read-only before logging in"
    );

    let login = text(
        &master
            .ssh(&master.user_key, &current_user(), "web-login")
            .stdout,
    );
    driver.goto(login.lines().next().expect("login URL").trim());
    let who = driver.text("header .who");
    assert!(
        who.starts_with(&format!("logged in as {}", current_user())),
        "{who}"
    );
    driver.goto(&format!("{web}/builders/linux/builds/1"));
    assert_eq!(driver.count("#stop-reason"), 1, "{}", driver.source());
    driver.type_into("#stop-reason", "stopped in a browser");
    driver.click("#stop-button");
    let deadline = Instant::now() + PATIENCE;
    let mut page = driver.source();
    while !page.contains("stopped in a browser") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        driver.goto(&format!("{web}/builders/linux/builds/1"));
        page = driver.source();
    }
    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-stop-build.png");
    driver.screenshot(&screenshot);
    println!("screenshot: {}", screenshot.display());
    assert!(page.contains("id=\"result\">interrupted<"), "{page}");
    assert!(
        page.contains(&format!(
            "stopped by {}: stopped in a browser",
            current_user()
        )),
        "{page}"
    );
    let output = output_with_deadline(waiting, "try --wait", PATIENCE);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
}

/// Screenshots of the waterfall and the builder page at desktop and phone widths, for a
/// person to look at (`target/screenshots/`); at 390 px nothing may scroll sideways.
#[test]
fn the_glanceable_pages_fit_a_phone_and_show_progress_in_chromium() {
    let checkout = Checkout::new();
    // `../fail` makes the build fail; `../hold` keeps it running until `../go` appears.
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "test", command = "echo testing; if [ -e ../hold ]; then while [ ! -e ../go ]; do sleep 0.1; done; fi; [ ! -e ../fail ]" },"#,
    ));
    let slave = master.start_slave("s1");
    let build_dir = slave.dir.join("build");
    let try_build = |expected_exit: i32| {
        let child = master
            .try_command(&checkout.work, "linux", true)
            .spawn()
            .expect("try runs");
        let output = output_with_deadline(child, "try --wait", PATIENCE);
        assert_eq!(
            output.status.code(),
            Some(expected_exit),
            "{}",
            text(&output.stdout)
        );
    };
    try_build(0);
    std::fs::write(build_dir.join("fail"), "").expect("make the next build fail");
    try_build(1);
    std::fs::remove_file(build_dir.join("fail")).expect("let builds pass again");
    std::fs::write(build_dir.join("hold"), "").expect("hold the next build");
    let waiting = master
        .try_command(&checkout.work, "linux", true)
        .spawn()
        .expect("try runs");
    let web = format!("http://127.0.0.1:{}", master.http_port);
    wait_until("build #3 to run its step", || {
        reqwest::blocking::get(format!("{web}/builders/linux/builds/3"))
            .and_then(|r| r.text())
            .is_ok_and(|body| body.contains("step 2/2 (test)"))
    });

    let driver = Driver::start();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    for width in [1280, 390] {
        driver.set_viewport_width(width, 900);
        for (page, path) in [
            ("waterfall", "/"),
            ("builder", "/builders/linux"),
            ("summary", "/summary"),
            ("build", "/builders/linux/builds/3"),
        ] {
            driver.goto(&format!("{web}{path}"));
            if page == "waterfall" || page == "builder" {
                driver.screenshot(&shots.join(format!("{page}-{width}.png")));
            }
            let scroll_width = driver.script("return document.documentElement.scrollWidth;");
            assert!(
                scroll_width.as_u64().is_some_and(|scroll| scroll <= width),
                "{page} at {width} px is {scroll_width} px wide"
            );
        }
    }
    println!("screenshots: {}", shots.display());

    driver.goto(&format!("{web}/builders/linux"));
    let title = driver.title();
    assert!(title.starts_with("✘ 1 failing · "), "{title}");
    assert_eq!(driver.count("#trend svg circle.pt.success"), 1);
    assert_eq!(driver.count("#trend svg circle.pt.failure"), 1);
    assert_eq!(driver.count(".progress progress"), 1, "{}", driver.source());
    driver.goto(&format!("{web}/"));
    assert_eq!(
        driver.count("td.wf-lane[data-builder='linux'] .wf-build"),
        3
    );
    assert_eq!(
        driver.text("#waterfall a[href='/builders/linux/builds/3']"),
        "#3"
    );

    std::fs::write(build_dir.join("go"), "").expect("release build #3");
    let output = output_with_deadline(waiting, "try --wait", PATIENCE);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    driver.goto(&format!("{web}/builders/linux"));
    let title = driver.title();
    assert!(
        title.starts_with("✔ "),
        "the last result is good again: {title}"
    );
}
