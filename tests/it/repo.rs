//! Git repositories for tests: an upstream and a developer's clone with work in progress.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{run_with_timeout, text};

pub fn git(dir: &Path, args: &[&str]) -> String {
    let mut command = Command::new("git");
    command
        .args([
            "-c",
            "user.name=Alice",
            "-c",
            "user.email=alice@example.org",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir);
    let output = run_with_timeout(command, None);
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// An upstream repository and a developer's clone of it with uncommitted (and unpushed) work:
/// an edit, a deletion, a rename, a new binary file and an executable bit.
pub struct Checkout {
    _tmp: tempfile::TempDir,
    pub upstream: PathBuf,
    pub work: PathBuf,
}

impl Checkout {
    pub fn new() -> Checkout {
        let tmp = tempfile::tempdir().expect("temp dir");
        let upstream = tmp.path().join("upstream.git");
        let seed = tmp.path().join("seed");
        std::fs::create_dir(&seed).expect("dir");
        git(&seed, &["init", "-q"]);
        std::fs::write(seed.join("hello.txt"), "hello\nworld\n").expect("write");
        std::fs::write(
            seed.join("old-name.txt"),
            "this file is renamed\nby the change\nand keeps its lines\n",
        )
        .expect("write");
        std::fs::write(seed.join("doomed.txt"), "deleted by the change\n").expect("write");
        std::fs::write(seed.join("run.sh"), "#!/bin/sh\necho hi\n").expect("write");
        git(&seed, &["add", "."]);
        git(&seed, &["commit", "-q", "-m", "base"]);
        git(
            tmp.path(),
            &["clone", "-q", "--bare", "seed", "upstream.git"],
        );
        let work = tmp.path().join("work");
        git(tmp.path(), &["clone", "-q", "upstream.git", "work"]);
        git(&work, &["config", "user.name", "Alice"]);
        git(&work, &["config", "user.email", "alice@example.org"]);
        std::fs::write(work.join("hello.txt"), "hello\ncafé \"world\"\n").expect("write");
        git(&work, &["commit", "-q", "-am", "unpushed work"]);
        std::fs::remove_file(work.join("doomed.txt")).expect("rm");
        git(&work, &["mv", "old-name.txt", "new-name.txt"]);
        std::fs::write(
            work.join("logo.bin"),
            [0u8, 0x89, b'P', b'N', b'G', 0xff, 0xfe, 0, 7],
        )
        .expect("write");
        git(&work, &["add", "logo.bin"]);
        std::fs::set_permissions(
            work.join("run.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        std::fs::write(
            work.join("hello.txt"),
            "hello\ncafé \"world\"\nunstaged line\n",
        )
        .expect("write");
        Checkout {
            _tmp: tmp,
            upstream,
            work,
        }
    }

    /// Applies `patch` on a fresh clone at `baserev` and checks the tree equals the work tree.
    pub fn assert_patch_reproduces_the_work(&self, baserev: &str, patch: &[u8]) {
        let check = self.work.parent().expect("parent").join("check");
        let _ = std::fs::remove_dir_all(&check);
        git(
            self.work.parent().expect("parent"),
            &[
                "clone",
                "-q",
                self.upstream.to_str().expect("utf-8"),
                "check",
            ],
        );
        git(&check, &["checkout", "-q", baserev]);
        let patch_file = check.join("..").join("try.patch");
        std::fs::write(&patch_file, patch).expect("write patch");
        git(
            &check,
            &["apply", "--index", patch_file.to_str().expect("utf-8")],
        );
        for name in ["hello.txt", "new-name.txt", "logo.bin", "run.sh"] {
            assert_eq!(
                std::fs::read(check.join(name)).expect("patched file"),
                std::fs::read(self.work.join(name)).expect("work file"),
                "{name}"
            );
        }
        assert!(!check.join("doomed.txt").exists());
        assert!(!check.join("old-name.txt").exists());
        let mode = git(&check, &["ls-files", "-s", "run.sh"]);
        assert!(mode.starts_with("100755"), "{mode}");
    }
}
