//! Fuzz target for the patch parser (private to this module, so it lives here rather than in
//! `tests/fuzz.rs`): line splitting, section scanning, git header normalisation and the path
//! checks must never panic on any patch, however malformed. Quick by default; runs for
//! `BUILDBOT_FUZZ_SECONDS` when set (`bench/fuzz.sh`).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::{git_headers, paths, scan, split_lines};

const PIECES: &[&str] = &[
    "diff --git a/f b/f\n",
    "diff --git \"a/x y\" \"b/x y\"\n",
    "--- a/f\n",
    "+++ b/f\n",
    "--- /dev/null\n",
    "+++ /dev/null\n",
    "@@ -1 +1 @@\n",
    "@@ -0,0 +1,2 @@\n",
    "-old\n",
    "+new\n",
    " ctx\n",
    "rename from a\n",
    "rename to b\n",
    "similarity index 100%\n",
    "new file mode 100755\n",
    "deleted file mode 120000\n",
    "old mode 100644\n",
    "new mode 100755\n",
    "index 0000000..1111111 100644\n",
    "GIT binary patch\n",
    "literal 0\n",
    "Binary files a/x and b/x differ\n",
    "\\ No newline at end of file\n",
    "../",
    "\"\\303\\251\"",
    "\t2020-01-01 00:00:00\n",
    "\r\n",
    "\n",
];

#[test]
fn fuzz_patch_parser() {
    let raw = proptest::collection::vec(any::<u8>(), 0..400);
    let shaped = proptest::collection::vec(
        prop_oneof![
            4 => proptest::sample::select(PIECES).prop_map(|piece| piece.as_bytes().to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..6),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat());
    let strategy = (prop_oneof![raw, shaped], 0usize..4);
    let budget = std::env::var("BUILDBOT_FUZZ_SECONDS")
        .ok()
        .and_then(|value| value.parse::<u64>().ok())
        .map(Duration::from_secs);
    let batch = if budget.is_some() { 5000 } else { 256 };
    let started = Instant::now();
    let mut cases: u64 = 0;
    loop {
        let mut runner = TestRunner::new(Config {
            cases: batch,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&strategy, |(patch, strip)| {
            let lines = split_lines(&patch);
            let sections = scan::scan(&patch, &lines);
            if let Ok((_normalized, named)) =
                git_headers::normalize_git_headers(&patch, &sections, strip)
            {
                for path in named {
                    let _ = paths::unquote_whole(&path);
                    let _ = paths::stripped(&path, strip);
                }
            }
            for range in &lines {
                let _ = paths::unquote(&patch[range.clone()]);
            }
            Ok::<(), TestCaseError>(())
        });
        if let Err(failure) = result {
            panic!("fuzz patch parser: crash after {cases} cases: {failure}");
        }
        cases += u64::from(batch);
        match budget {
            Some(budget) if started.elapsed() < budget => continue,
            _ => break,
        }
    }
    println!(
        "fuzz patch parser: {cases} cases in {:.1}s, 0 crashes",
        started.elapsed().as_secs_f64()
    );
}
