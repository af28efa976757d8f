//! Artifacts: a step keeps files, the slave streams them to the master, and they come back
//! byte-exact over HTTP (whole and by range), `ssh master fetch` and `buildbot fetch`; what
//! would leave the work tree (symlinks, `..`) is refused.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::Digest as _;

use crate::harness::{
    BIN, MasterSetup, PATIENCE, TestMaster, current_user, http_client, output_with_deadline,
    run_with_timeout, text,
};
use crate::repo::Checkout;

/// 200 MB of random bytes, a small text file, and three ways out of the work tree: a symlink
/// to a file outside, a symlinked directory, and a symlink to a file inside (not followed
/// either).
const STEPS: &str = r#"{ name = "make", command = "mkdir -p dist/sub && head -c 200000000 /dev/urandom > dist/big.bin && echo hello artifact > dist/sub/small.txt && ln -sf /etc/passwd dist/passwd && ln -sfn /etc dist/etc && ln -sf big.bin dist/again.bin", artifacts = ["dist/**/*"] },"#;

fn sha256_file(path: &Path) -> (String, u64) {
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    sha256_reader(&mut file)
}

fn sha256_reader(reader: &mut impl Read) -> (String, u64) {
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let count = reader.read(&mut buffer).expect("read");
        if count == 0 {
            break;
        }
        size += count as u64;
        hasher.update(&buffer[..count]);
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (hex, size)
}

fn url(master: &TestMaster, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", master.http_port)
}

#[test]
fn a_200_mb_artifact_arrives_byte_exact_with_bounded_memory_and_escapes_are_refused() {
    let checkout = Checkout::new();
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        STEPS,
    ));
    let slave = master.start_slave("s1");
    let before_kib = master.peak_rss_kib();
    let forced = master.ssh(
        &master.user_key,
        &current_user(),
        "force linux --reason ship",
    );
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    // 200 MB through a debug build on a loaded machine: more than the usual patience.
    let deadline = std::time::Instant::now() + PATIENCE * 6;
    let build = loop {
        let build = master.newest_build("linux");
        if build["number"] == 1 && build["running"] == false {
            break build;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "linux #1 did not finish: {build}\n{}",
            master.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let steps: Vec<String> = build["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|step| format!("{} {}", step["name"], step["result"]))
        .collect();
    assert_eq!(build["result"], "success", "{build}");
    assert!(
        steps
            .iter()
            .any(|step| step.starts_with("\"make-artifacts\"")),
        "{steps:?}"
    );

    // Exactly the two regular files; every symlink refused, with a line in the step's log.
    let listed = master.api(&format!("/api/builds/{}/artifacts", build["id"]));
    let paths: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|artifact| artifact["path"].as_str().expect("path"))
        .collect();
    let info = std::fs::read_to_string(master.path().join("logs/linux/1/3-make-artifacts.info"))
        .unwrap_or_default();
    assert_eq!(
        paths,
        ["dist/big.bin", "dist/sub/small.txt"],
        "{listed}\n{steps:?}\n{info}"
    );
    for refused in ["dist/passwd", "dist/etc", "dist/again.bin"] {
        assert!(info.contains(refused), "{refused} not reported:\n{info}");
    }
    assert!(
        info.contains("kept dist/big.bin (200000000 bytes"),
        "{info}"
    );

    let original = slave.dir.join("build/linux/dist/big.bin");
    let (expected, size) = sha256_file(&original);
    assert_eq!(size, 200_000_000);
    assert_eq!(listed[0]["sha256"], expected.as_str());
    assert_eq!(listed[0]["size"], 200_000_000);

    // HTTP, whole: streamed, byte-exact.
    let big = "/builders/linux/builds/1/artifacts/dist/big.bin";
    let mut response = http_client()
        .get(url(&master, big))
        .timeout(PATIENCE)
        .send()
        .expect("GET big");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(sha256_reader(&mut response), (expected.clone(), size));

    // HTTP ranges.
    let bytes = std::fs::read(slave.dir.join("build/linux/dist/big.bin")).expect("original");
    for (range, from, to) in [
        ("bytes=100-199", 100usize, 200usize),
        ("bytes=-10", 199_999_990, 200_000_000),
        ("bytes=199999999-", 199_999_999, 200_000_000),
        ("bytes=1048570-1048580", 1_048_570, 1_048_581),
    ] {
        let response = http_client()
            .get(url(&master, big))
            .header("Range", range)
            .send()
            .expect("GET range");
        assert_eq!(response.status().as_u16(), 206, "{range}");
        let content_range = response.headers()["content-range"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert_eq!(
            content_range,
            format!("bytes {from}-{}/200000000", to - 1),
            "{range}"
        );
        assert_eq!(
            response.bytes().expect("body").as_ref(),
            &bytes[from..to],
            "{range}"
        );
    }
    drop(bytes);
    let unsatisfiable = http_client()
        .get(url(&master, big))
        .header("Range", "bytes=300000000-")
        .send()
        .expect("GET range");
    assert_eq!(unsatisfiable.status().as_u16(), 416);
    for missing in [
        "/builders/linux/builds/1/artifacts/dist/passwd",
        "/builders/linux/builds/1/artifacts/dist/../../../etc/passwd",
        "/builders/linux/builds/1/artifacts/%2e%2e/%2e%2e/master.toml",
    ] {
        let status = http_client()
            .get(url(&master, missing))
            .send()
            .expect("GET")
            .status();
        // Not kept (404), or a path axum refuses to match at all (400): never the file.
        assert!(matches!(status.as_u16(), 400 | 404), "{missing}: {status}");
    }
    let page = http_client()
        .get(url(&master, "/builders/linux/builds/1"))
        .send()
        .and_then(|r| r.text())
        .expect("build page");
    assert!(
        page.contains("dist/sub/small.txt") && page.contains(&expected),
        "{page}"
    );

    // ssh master fetch, to a file.
    let fetched = tempfile::tempdir().expect("temp dir");
    let target = fetched.path().join("big.bin");
    let mut ssh = master.ssh_command(&master.user_key, &current_user(), &[]);
    ssh.arg("fetch linux 1 dist/big.bin")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&target).expect("file"))
        .stderr(Stdio::piped());
    let output = output_with_deadline(ssh.spawn().expect("ssh"), "ssh fetch", PATIENCE * 3);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(sha256_file(&target), (expected.clone(), size));

    // buildbot fetch -o FILE, and a refusal in one line.
    let small = fetched.path().join("small.txt");
    let mut client = Command::new(BIN);
    client
        .args(["fetch", "linux", "1", "dist/sub/small.txt", "-o"])
        .arg(&small)
        .args(master.client_args())
        .current_dir(fetched.path());
    let output = run_with_timeout(client, None);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        std::fs::read_to_string(&small).expect("fetched"),
        "hello artifact\n"
    );
    let refused = master.ssh(
        &master.user_key,
        &current_user(),
        "fetch linux 1 dist/passwd",
    );
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        text(&refused.stderr).trim(),
        "buildbot: linux #1 kept no artifact dist/passwd (or it was pruned)"
    );

    // The master never held the artifact in memory: its peak grew by far less than 200 MB.
    let after_kib = master.peak_rss_kib();
    assert!(
        after_kib.saturating_sub(before_kib) < 64 * 1024,
        "master peak RSS grew from {before_kib} KiB to {after_kib} KiB"
    );
}

#[test]
fn an_artifact_pattern_leaving_the_work_tree_is_refused_by_checkconfig() {
    let checkout = Checkout::new();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("m");
    let mut create = Command::new(BIN);
    create.arg("create-master").arg(&dir);
    assert!(run_with_timeout(create, None).status.success());
    let config_path = dir.join("master.toml");
    let mut config = std::fs::read_to_string(&config_path).expect("config");
    let key = crate::harness::TestKey::ed25519(tmp.path(), "s");
    config.push_str(&format!(
        "\n[[slave]]\nname = \"s\"\npublic_key = \"{}\"\n[[builder]]\nname = \"linux\"\nslaves = [\"s\"]\nrepo = \"{}\"\nsteps = [ {{ name = \"make\", command = \"true\", artifacts = [\"../outside\", \"/etc/passwd\", \"ok/*\"] }} ]\n",
        key.public_line,
        checkout.upstream.display()
    ));
    std::fs::write(&config_path, &config).expect("config written");
    let mut check = Command::new(BIN);
    check.arg("checkconfig").arg(&dir);
    let checked = run_with_timeout(check, None);
    assert_eq!(checked.status.code(), Some(1));
    let stderr = text(&checked.stderr);
    assert_eq!(
        stderr
            .lines()
            .filter(|line| line.contains("artifact pattern"))
            .count(),
        2,
        "{stderr}"
    );
    assert!(stderr.contains("\"../outside\""), "{stderr}");
    assert!(stderr.contains("\"/etc/passwd\""), "{stderr}");
}

/// `linux` (on `s1`) keeps `dist/app.bin`; its success starts `deploy` and `escape` (on
/// `slave`, by a dependent scheduler). `deploy` fetches it before a step (and later fetches a file of its own earlier
/// step); `escape` planted a symlink where it would go.
fn fetching_config(checkout: &Checkout, outside: &Path, slave: &str) -> (String, String) {
    let upstream = r#"{ name = "make", command = "mkdir -p dist && head -c 3000000 /dev/urandom > dist/app.bin && sha256sum dist/app.bin", artifacts = ["dist/*.bin"] },"#;
    let deploy = r#"
  { name = "use", command = "sha256sum dist/app.bin", fetch_artifacts = [{ from = "upstream", path = "dist/*.bin" }] },
  { name = "pack", command = "cp dist/app.bin out.bin", artifacts = ["out.bin"] },
  { name = "reuse", command = "rm out.bin dist/app.bin && true", },
  { name = "again", command = "sha256sum out.bin", fetch_artifacts = [{ from = "build", path = "out.bin" }] },
"#;
    let escape = format!(
        r#"
  {{ name = "plant", command = "rm -rf dist && ln -sfn {} dist" }},
  {{ name = "use", command = "true", fetch_artifacts = [{{ from = "upstream", path = "dist/app.bin", builder = "linux" }}] }},
"#,
        outside.display()
    );
    let mut extra = String::new();
    for (name, steps) in [("deploy", deploy.to_string()), ("escape", escape)] {
        extra.push_str(&format!(
            "\n[[builder]]\nname = \"{name}\"\nslaves = [\"{slave}\"]\nrepo = \"{}\"\nbranch = \"main\"\nsteps = [\n{steps}\n]\n",
            checkout.upstream.display()
        ));
    }
    extra.push_str(&crate::changes::branch_scheduler(
        "on-main",
        "\"linux\"",
        "tree_stable_timer = \"1s\"",
    ));
    extra.push_str(
        "\n[[scheduler]]\nkind = \"dependent\"\nname = \"after-main\"\nbuilders = [\"deploy\", \"escape\"]\nupstream = \"on-main\"\n",
    );
    (upstream.to_string(), extra)
}

/// The info log (the master's own lines) of a step.
fn info_log(master: &TestMaster, builder: &str, number: u64, step: &str) -> String {
    std::fs::read_to_string(
        master
            .path()
            .join(format!("logs/{builder}/{number}/{step}.info")),
    )
    .unwrap_or_default()
}

#[test]
fn a_dependent_build_fetches_its_upstreams_artifact_byte_exact_and_an_escape_is_refused() {
    use crate::changes::{finished_build, master_with, sendchange, step_log};
    let checkout = Checkout::new();
    let outside = tempfile::tempdir().expect("temp dir");
    let (steps, extra) = fetching_config(&checkout, outside.path(), "s1");
    let master = master_with(&checkout, &steps, &extra);
    let slave = master.start_slave("s1");
    let sent = sendchange(&master, head_change(&checkout).as_bytes());
    assert!(sent.status.success(), "{}", text(&sent.stderr));

    let linux = finished_build(&master, "linux", 1);
    assert_eq!(linux["result"], "success", "{linux}");
    let kept = master.api(&format!("/api/builds/{}/artifacts", linux["id"]));
    let sha = kept[0]["sha256"]
        .as_str()
        .expect("a kept artifact")
        .to_string();
    let (original, size) = sha256_file(&slave.dir.join("build/linux/dist/app.bin"));
    assert_eq!((sha.as_str(), size), (original.as_str(), 3_000_000));

    // deploy: the upstream's file, byte-exact, before its step ran; later its own earlier
    // step's file, after the step before removed it.
    let deploy = finished_build(&master, "deploy", 1);
    let fetch_info = info_log(&master, "deploy", 1, "2-use-fetch");
    assert_eq!(deploy["result"], "success", "{deploy}\n{fetch_info}");
    assert!(
        fetch_info.contains(&format!(
            "fetching dist/app.bin of linux #1 (3000000 bytes, sha256 {sha})"
        )),
        "{fetch_info}"
    );
    assert_eq!(
        step_log(&master, "deploy", 1, 3),
        format!("{sha}  dist/app.bin\n")
    );
    assert_eq!(
        step_log(&master, "deploy", 1, 8),
        format!("{sha}  out.bin\n"),
        "{}",
        info_log(&master, "deploy", 1, "7-again-fetch")
    );
    let (fetched, _) = sha256_file(&slave.dir.join("build/deploy/out.bin"));
    assert_eq!(fetched, sha);

    // escape: its `dist` is a symlink out of the work tree; the fetch is refused in one line
    // and nothing is written there.
    let escape = finished_build(&master, "escape", 1);
    assert_eq!(escape["result"], "failure", "{escape}");
    let refused = info_log(&master, "escape", 1, "3-use-fetch");
    let refusals: Vec<&str> = refused
        .lines()
        .filter(|line| line.contains("refused"))
        .collect();
    assert_eq!(
        refusals,
        ["refused dist/app.bin: dist is a symlink; not followed"],
        "{refused}"
    );
    let left = std::fs::read_dir(outside.path()).expect("outside").count();
    assert_eq!(left, 0, "something was written outside the work tree");
    let steps: Vec<String> = escape["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|step| step["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        steps,
        ["checkout", "plant", "use-fetch"],
        "the step after a refused fetch does not run"
    );
}

/// A change of the upstream's head, as `sendchange` takes it.
fn head_change(checkout: &Checkout) -> String {
    let revision = crate::repo::git(&checkout.upstream, &["rev-parse", "HEAD"]);
    format!(
        r#"{{"repository": "{}", "branch": "main", "revision": "{}"}}"#,
        checkout.upstream.display(),
        revision.trim()
    )
}

#[test]
fn with_postgresql_a_dependent_build_on_another_master_fetches_from_the_stored_chunks() {
    use crate::changes::{finished_build, sendchange, step_log};
    use crate::multimaster::{database_section, fresh_database, join, masters, named};
    let url = fresh_database();
    let checkout = Checkout::new();
    let outside = tempfile::tempdir().expect("temp dir");
    let (steps, extra) = fetching_config(&checkout, outside.path(), "s2");
    let mut setup = MasterSetup::linux_builder(&["s1"], &checkout.upstream, &steps);
    setup.slaves.push("s2".into());
    setup.extra_config.push_str(&extra);
    setup
        .extra_config
        .push_str("\n[changes]\ngroup = \"root\"\n");
    setup.extra_config.push_str(&database_section(&url));
    setup.edits.push(named("ci-a"));
    let a = TestMaster::start_with(setup);
    let b = join(&a, "ci-b");
    // linux builds on A (s1 knows only A), deploy on B (s2 knows only B): B has no file of
    // linux #1's artifacts, only the database's chunks.
    let _s1 = a.launch_slave("s1", masters(&[&a]));
    a.wait_connected("s1");
    let _s2 = a.launch_slave("s2", masters(&[&b]));
    b.wait_connected("s2");
    let sent = sendchange(&a, head_change(&checkout).as_bytes());
    assert!(sent.status.success(), "{}", text(&sent.stderr));

    let linux = finished_build(&a, "linux", 1);
    assert_eq!(linux["result"], "success", "{linux}");
    let kept = a.api(&format!("/api/builds/{}/artifacts", linux["id"]));
    let sha = kept[0]["sha256"]
        .as_str()
        .expect("a kept artifact")
        .to_string();
    let deploy = finished_build(&b, "deploy", 1);
    assert_eq!(
        deploy["result"],
        "success",
        "{deploy}\n{}",
        info_log(&b, "deploy", 1, "2-use-fetch")
    );
    assert_eq!(
        step_log(&b, "deploy", 1, 3),
        format!("{sha}  dist/app.bin\n")
    );
    assert!(
        !b.path().join("artifacts/linux/1").exists(),
        "B had linux #1's file"
    );
    assert!(a.path().join("artifacts/linux/1/dist/app.bin").exists());
}

/// The names of a build's steps (/api/builds/ID), in order.
fn step_names(build: &serde_json::Value) -> Vec<String> {
    build["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|step| step["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn artifact_paths(master: &TestMaster, build: &serde_json::Value) -> Vec<String> {
    master
        .api(&format!("/api/builds/{}/artifacts", build["id"]))
        .as_array()
        .expect("a list")
        .iter()
        .map(|artifact| artifact["path"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_builders_artifacts_are_kept_after_its_last_step_as_artifacts_when_says() {
    use crate::changes::finished_build;
    let checkout = Checkout::new();
    // linux halts at `test`; `always` keeps its files all the same. quiet passes its first
    // build and fails its second; the default (`success`) keeps only the first's.
    let steps = r#"{ name = "make", command = "mkdir -p out && echo report > out/report.txt && echo x > out/other.log" },
{ name = "test", command = "exit 1" },
{ name = "never", command = "echo never" },"#;
    let mut setup = MasterSetup::linux_builder(&["s1"], &checkout.upstream, steps);
    setup.edits.push((
        "[[builder]]\nname = \"linux\"\n",
        "[[builder]]\nname = \"linux\"\nartifacts = [\"out/*.txt\"]\nartifacts_when = \"always\"\n",
    ));
    setup.extra_config.push_str(&format!(
        "\n[[builder]]\nname = \"quiet\"\nslaves = [\"s1\"]\nrepo = \"{}\"\nartifacts = [\"out/*.txt\"]\nsteps = [\n{}\n]\n",
        checkout.upstream.display(),
        r#"{ name = "make", command = "mkdir -p out && echo report > out/report.txt && test $BUILDBOT_BUILDNUMBER = 1" },"#
    ));
    let master = TestMaster::start_with(setup);
    let _slave = master.start_slave("s1");
    // One at a time: quiet's second build must not overtake its first.
    for (builder, number) in [("linux", 1), ("quiet", 1), ("quiet", 2)] {
        let forced = master.ssh(
            &master.user_key,
            &current_user(),
            &format!("force {builder} --reason keep"),
        );
        assert!(forced.status.success(), "{}", text(&forced.stderr));
        finished_build(&master, builder, number);
    }

    let linux = finished_build(&master, "linux", 1);
    assert_eq!(linux["result"], "failure", "{linux}");
    assert_eq!(
        step_names(&linux),
        ["checkout", "make", "test", "artifacts"],
        "{linux}"
    );
    assert_eq!(artifact_paths(&master, &linux), ["out/report.txt"]);
    let info = info_log(&master, "linux", 1, "4-artifacts");
    assert!(info.contains("kept out/report.txt (7 bytes"), "{info}");

    let first = finished_build(&master, "quiet", 1);
    assert_eq!(first["result"], "success", "{first}");
    assert_eq!(step_names(&first), ["checkout", "make", "artifacts"]);
    assert_eq!(artifact_paths(&master, &first), ["out/report.txt"]);
    let second = finished_build(&master, "quiet", 2);
    assert_eq!(second["result"], "failure", "{second}");
    assert_eq!(step_names(&second), ["checkout", "make"]);
    assert!(artifact_paths(&master, &second).is_empty());
}
