//! Fuzzing on stable Rust: long proptest runs of every decoder of outside input (the try job
//! codec, the RPC frame decoder, authorized_keys lines, exec command strings, change specs).
//! The patch parser's target lives beside its private code (`slave::checkout::patch_apply`).
//!
//! Quick in the suite (a few hundred cases per target); with `BUILDBOT_FUZZ_SECONDS=N` each
//! target runs for N seconds and prints how many cases it ran (`bench/fuzz.sh`). A panic is a
//! crash: proptest shrinks it and the test fails with the smallest input.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Cases per target in a normal test run.
const QUICK_CASES: u32 = 256;

/// Runs `check` on inputs from `strategy`, for BUILDBOT_FUZZ_SECONDS or QUICK_CASES cases.
fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value) + Copy)
where
    S::Value: std::fmt::Debug,
{
    let budget = std::env::var("BUILDBOT_FUZZ_SECONDS")
        .ok()
        .and_then(|value| value.parse::<u64>().ok())
        .map(Duration::from_secs);
    let batch = if budget.is_some() { 5000 } else { QUICK_CASES };
    let started = Instant::now();
    let mut cases: u64 = 0;
    loop {
        let mut runner = TestRunner::new(Config {
            cases: batch,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&strategy, |input| {
            check(input);
            Ok::<(), TestCaseError>(())
        });
        if let Err(failure) = result {
            panic!("fuzz {name}: crash after {cases} cases: {failure}");
        }
        cases += u64::from(batch);
        match budget {
            Some(budget) if started.elapsed() < budget => continue,
            _ => break,
        }
    }
    println!(
        "fuzz {name}: {cases} cases in {:.1}s, 0 crashes",
        started.elapsed().as_secs_f64()
    );
}

/// Arbitrary bytes, or text made of pieces that look like the format, so the decoder gets
/// past its first check.
fn bytes_or_pieces(pieces: &'static [&'static str], max: usize) -> BoxedStrategy<Vec<u8>> {
    let raw = proptest::collection::vec(any::<u8>(), 0..max);
    let shaped = proptest::collection::vec(
        prop_oneof![
            3 => proptest::sample::select(pieces).prop_map(|piece| piece.as_bytes().to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..8),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat());
    prop_oneof![raw, shaped].boxed()
}

#[test]
fn fuzz_try_job_decode() {
    const PIECES: &[&str] = &[
        "1:6,",
        "2:id,",
        "3:abc,",
        "0:,",
        "10:",
        "4:main,",
        "40:",
        "1:1,",
        "1:5,",
        ":",
        ",",
        "{\"jobid\":\"x\",\"branch\":\"b\",\"baserevision\":\"r\",\"patch_level\":1,\"patch_body\":\"\"}",
        "{\"builderNames\":[\"a\"]}",
        "99999999999999999999:",
    ];
    fuzz("tryjob::decode", bytes_or_pieces(PIECES, 600), |bytes| {
        if let Ok(job) = buildbot::tryjob::decode(&bytes) {
            // What decodes must survive encoding and decoding again.
            let again = buildbot::tryjob::decode(&buildbot::tryjob::encode(&job));
            assert!(again.is_ok(), "{job:?} does not round-trip: {again:?}");
        }
        let _ = buildbot::tryjob::declared_length(&bytes);
    });
}

#[test]
fn fuzz_rpc_frame_decoder() {
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..600),
        proptest::collection::vec(1usize..64, 1..8),
        0usize..2048,
    );
    fuzz(
        "proto::frame::FrameDecoder",
        strategy,
        |(bytes, cuts, limit)| {
            use buildbot::proto::frame::FrameDecoder;
            // The same bytes pushed in pieces, under a small limit and the real one.
            for mut decoder in [FrameDecoder::new(limit), FrameDecoder::default()] {
                let mut rest = bytes.as_slice();
                let mut cut = cuts.iter().cycle();
                while !rest.is_empty() {
                    let take = (*cut.next().unwrap_or(&1)).min(rest.len());
                    decoder.push(&rest[..take]);
                    rest = &rest[take..];
                    while let Ok(Some(_)) = decoder.next_message() {}
                }
                let _ = decoder.finish();
            }
        },
    );
}

#[test]
fn fuzz_authorized_keys_parse() {
    const PIECES: &[&str] = &[
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        " ",
        "\t",
        "\n",
        "#",
        "\"",
        "\\",
        ",",
        "=",
        "restrict",
        "command=\"",
        "from=\"",
        "10.0.0.0/8",
        "!*.example.org",
        "expiry-time=\"20300101\"",
        "no-pty",
        "environment=\"A=b\"",
        "permitopen=\"h:1\"",
        "cert-authority",
        "principals=\"a,b\"",
        "ssh-rsa AAAA",
        "comment",
    ];
    let strategy =
        bytes_or_pieces(PIECES, 400).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    fuzz("sshd::authorized_keys::parse", strategy, |text| {
        let (keys, _warnings) = buildbot::sshd::authorized_keys::parse(&text);
        let now = chrono::Utc::now();
        for key in keys {
            let _ = key.options.is_expired(now);
            if let Some(from) = &key.options.from {
                let _ = from.allows("10.1.2.3".parse().expect("an address"));
                let _ = from.allows("::1".parse().expect("an address"));
            }
        }
    });
}

#[test]
fn fuzz_exec_command_parse() {
    const PIECES: &[&str] = &[
        "try",
        "tryserver",
        "--jobdir",
        "watch",
        "--follow",
        "--json",
        "--since",
        "ab:12",
        "stop",
        "force",
        "--branch",
        "--revision",
        "--reason",
        "--property",
        "k=v",
        "rebuild",
        "cancel",
        "sendchange",
        "web-login",
        "slave",
        "buildbot",
        "/usr/bin/buildbot",
        " ",
        "'",
        "\"",
        "\\",
        "--",
        "-",
        "=",
        "1",
        "-1",
        "99999999999999999999",
        "--help",
        "-h",
        "--version",
    ];
    let strategy =
        bytes_or_pieces(PIECES, 200).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    fuzz("sshd::cmd::parse", strategy, |command| {
        let _ = buildbot::sshd::cmd::parse(&command);
    });
}

#[test]
fn fuzz_change_decode() {
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"repository\"",
        "\"branch\"",
        "\"revision\"",
        "\"who\"",
        "\"comments\"",
        "\"files\"",
        "\"properties\"",
        "\"when\"",
        "\"/r.git\"",
        "\"main\"",
        "\"abc\"",
        "1e308",
        "-1",
        "null",
        "true",
        "\"\\u0000\"",
        "\"../x\"",
    ];
    fuzz("change::decode", bytes_or_pieces(PIECES, 400), |bytes| {
        if let Ok(change) = buildbot::change::decode(&bytes) {
            let _ = buildbot::change::check(&change);
        }
    });
}
