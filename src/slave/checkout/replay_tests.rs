//! Replaying real commits through the checkout: a repository generated here with real git
//! (submodules, executables, symlinks, empty files, odd names, CRLF, binaries), each commit's
//! `git diff --binary -M PARENT COMMIT` applied to a checkout of PARENT, and the result required
//! to be exactly the commit's tree (`git add -A && git write-tree` in the work tree). Not: the
//! fetch and clean rules (the tests in `checkout`), nor the child process (`sandbox`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{CheckoutError, CheckoutSpec, PatchRunner, checkout};

/// Runs git with a fixed identity and no user or system config; returns stdout. The checkout's
/// own tests use it too.
pub(super) fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.org",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "core.autocrlf=false",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn git_bytes(dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}");
    output.stdout
}

/// A repository the test writes commits into, and a second one its submodules point at.
pub(super) struct Generated {
    pub tmp: tempfile::TempDir,
    pub upstream: PathBuf,
    pub sub: PathBuf,
    /// Commits of `sub`, oldest first.
    pub sub_commits: Vec<String>,
    runs: usize,
}

impl Generated {
    pub fn new() -> Generated {
        let tmp = tempfile::tempdir().expect("temp dir");
        let sub = tmp.path().join("sub repo");
        std::fs::create_dir(&sub).expect("mkdir");
        git(&sub, &["init", "-q"]);
        let mut sub_commits = Vec::new();
        for index in 0..3 {
            std::fs::write(sub.join("lib.txt"), format!("version {index}\n")).expect("write");
            git(&sub, &["add", "."]);
            git(&sub, &["commit", "-q", "-m", &format!("sub {index}")]);
            sub_commits.push(git(&sub, &["rev-parse", "HEAD"]).trim().to_string());
        }
        let upstream = tmp.path().join("upstream");
        std::fs::create_dir(&upstream).expect("mkdir");
        git(&upstream, &["init", "-q"]);
        Generated {
            tmp,
            upstream,
            sub,
            sub_commits,
            runs: 0,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.upstream.join(name)
    }

    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write");
    }

    pub fn chmod(&self, name: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.path(name), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    }

    pub fn symlink(&self, target: &str, name: &str) {
        let path = self.path(name);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(target, path).expect("symlink");
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(&self.upstream, args)
    }

    /// `git mv`, creating the new parent directory first (git does not).
    pub fn mv(&self, from: &str, to: &str) {
        if let Some(parent) = self.path(to).parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        self.git(&["mv", from, to]);
    }

    /// Points the gitlink `name` at `commit` of the submodule repository (an empty directory
    /// in the work tree, as for a submodule that is not checked out).
    pub fn gitlink(&self, name: &str, commit: &str) {
        std::fs::create_dir_all(self.path(name)).expect("mkdir");
        self.git(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{commit},{name}"),
        ]);
        let url = self.sub.display().to_string();
        self.git(&[
            "config",
            "-f",
            ".gitmodules",
            &format!("submodule.{name}.path"),
            name,
        ]);
        self.git(&[
            "config",
            "-f",
            ".gitmodules",
            &format!("submodule.{name}.url"),
            &url,
        ]);
    }

    pub fn remove_gitlink(&self, name: &str) {
        self.git(&["update-index", "--force-remove", name]);
        let _ = std::fs::remove_dir(self.path(name));
        self.git(&[
            "config",
            "-f",
            ".gitmodules",
            "--remove-section",
            &format!("submodule.{name}"),
        ]);
    }

    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }

    /// Checks out `parent` in a fresh work tree, applies `git diff --binary -M PARENT COMMIT`
    /// and returns the tree the work tree then holds, with the work tree.
    pub fn replay(
        &mut self,
        parent: &str,
        commit: &str,
        runner: &PatchRunner,
    ) -> Result<(String, PathBuf), CheckoutError> {
        let patch = git_bytes(&self.upstream, &["diff", "--binary", "-M", parent, commit]);
        self.runs += 1;
        let work = self.tmp.path().join(format!("work-{}", self.runs));
        let spec = CheckoutSpec {
            repo: self.upstream.display().to_string(),
            branch: "main".into(),
            revision: Some(parent.to_string()),
            patch: Some(patch),
            patch_level: 1,
            submodules: false,
        };
        checkout(&work, &spec, runner, &mut |_| {})?;
        git(&work, &["add", "-A"]);
        let tree = git(&work, &["write-tree"]).trim().to_string();
        Ok((tree, work))
    }

    pub fn tree_of(&self, commit: &str) -> String {
        self.git(&["rev-parse", &format!("{commit}^{{tree}}")])
            .trim()
            .to_string()
    }

    /// Replays `commit` onto its parent and requires the commit's tree.
    pub fn assert_replays(&mut self, commit: &str) {
        let parent = self.git(&["rev-parse", &format!("{commit}^")]);
        let parent = parent.trim().to_string();
        let patch = git_bytes(&self.upstream, &["diff", "--binary", "-M", &parent, commit]);
        match self.replay(&parent, commit, &PatchRunner::InProcess) {
            Ok((tree, _)) => assert_eq!(
                tree,
                self.tree_of(commit),
                "the patch of {commit} gave another tree:\n{}",
                String::from_utf8_lossy(&patch)
            ),
            Err(err) => panic!(
                "the patch of {commit} was refused: {err}\n{}",
                String::from_utf8_lossy(&patch)
            ),
        }
    }
}

/// A base commit with one of everything.
fn base(repo: &Generated) -> String {
    repo.write("a.txt", "one\ntwo\nthree\n");
    repo.write("run.sh", "#!/bin/sh\necho run\n");
    repo.chmod("run.sh", 0o755);
    repo.write("tool", "#!/bin/sh\necho tool\n");
    repo.symlink("a.txt", "link");
    repo.write("dir with space/file \"quoted\".txt", "spaces\n");
    repo.write("naïve ünïcode.txt", "non-ascii\n");
    repo.write("crlf.txt", "line one\r\nline two\r\n");
    repo.write("noeol.txt", "no newline at the end");
    repo.write("long.txt", format!("{}\nshort\n", "x".repeat(200_000)));
    repo.write(
        "blob.bin",
        (0..4096u32)
            .map(|n| (n * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    );
    repo.write("empty-old", "");
    repo.gitlink("sub/a", &repo.sub_commits[0]);
    repo.gitlink("assets/x/Old name", &repo.sub_commits[0]);
    repo.commit("base")
}

#[test]
fn empty_files_added_then_pure_renames() {
    let mut repo = Generated::new();
    base(&repo);
    repo.write("empty one", "");
    repo.write("deep/empty two", "");
    repo.mv("a.txt", "renamed a.txt");
    repo.mv("run.sh", "bin/run.sh");
    let commit = repo.commit("empty files and renames");
    repo.assert_replays(&commit);
}

#[test]
fn empty_files_deleted_and_renamed() {
    let mut repo = Generated::new();
    base(&repo);
    repo.write("gone", "");
    repo.commit("another empty file");
    repo.git(&["rm", "-q", "gone"]);
    repo.mv("empty-old", "empty-new");
    let commit = repo.commit("empty files deleted and renamed");
    repo.assert_replays(&commit);
}

#[test]
fn a_pure_rename_keeps_the_executable_bit() {
    let mut repo = Generated::new();
    base(&repo);
    repo.mv("run.sh", "scripts/run renamed.sh");
    let commit = repo.commit("rename an executable");
    repo.assert_replays(&commit);
    let parent = repo.git(&["rev-parse", &format!("{commit}^")]);
    let (_, work) = repo
        .replay(parent.trim(), &commit, &PatchRunner::InProcess)
        .expect("applies");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(work.join("scripts/run renamed.sh"))
        .expect("renamed file")
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0, "mode {mode:o}");
}

#[test]
fn mode_only_changes() {
    let mut repo = Generated::new();
    base(&repo);
    repo.chmod("tool", 0o755);
    repo.chmod("run.sh", 0o644);
    let commit = repo.commit("modes");
    repo.assert_replays(&commit);
}

#[test]
fn symlinks_renamed_and_retargeted() {
    let mut repo = Generated::new();
    base(&repo);
    repo.mv("link", "links/moved link");
    repo.symlink("../tool", "links/other");
    let commit = repo.commit("links");
    repo.assert_replays(&commit);
    std::fs::remove_file(repo.path("links/other")).expect("rm");
    repo.symlink("../a.txt", "links/other");
    let commit = repo.commit("retarget");
    repo.assert_replays(&commit);
}

#[test]
fn a_changed_submodule_pointer_is_recorded() {
    let mut repo = Generated::new();
    base(&repo);
    repo.gitlink("sub/a", &repo.sub_commits[1].clone());
    let commit = repo.commit("bump the submodule");
    repo.assert_replays(&commit);
}

#[test]
fn submodules_added_removed_and_renamed() {
    let mut repo = Generated::new();
    base(&repo);
    repo.gitlink("sub/b", &repo.sub_commits[2].clone());
    repo.remove_gitlink("sub/a");
    let commit = repo.commit("add one, remove one");
    repo.assert_replays(&commit);
    let old = repo.sub_commits[0].clone();
    repo.remove_gitlink("assets/x/Old name");
    repo.gitlink("assets/x/New_name", &old);
    let commit = repo.commit("rename a submodule");
    let patch = repo.git(&["diff", "-M", &format!("{commit}^"), &commit]);
    assert!(patch.contains("rename to assets/x/New_name"), "{patch}");
    repo.assert_replays(&commit);
}

#[test]
fn odd_names_crlf_missing_newline_and_long_lines() {
    let mut repo = Generated::new();
    base(&repo);
    repo.write("dir with space/file \"quoted\".txt", "spaces\nmore\n");
    repo.write("naïve ünïcode.txt", "non-ascii\nchanged\n");
    repo.mv("naïve ünïcode.txt", "dir with space/ünï \"moved\".txt");
    repo.write("crlf.txt", "line one\r\nline 2\r\nline three\r\n");
    repo.write("noeol.txt", "no newline at the end\nstill none");
    repo.write("long.txt", format!("{}\nshort\n", "y".repeat(300_000)));
    repo.write(
        "blob.bin",
        (0..5000u32)
            .map(|n| (n * 13 % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let commit = repo.commit("content");
    repo.assert_replays(&commit);
}

/// Scripted history: each commit mixes renames, mode changes, binaries, empty files and
/// submodule moves, the way real histories do; every commit must replay exactly.
#[test]
fn a_generated_history_replays_commit_by_commit() {
    let mut repo = Generated::new();
    base(&repo);
    let mut commits = Vec::new();
    let mut tool = "tool".to_string();
    for round in 0..12usize {
        let name = |kind: &str, n: usize| format!("{kind} {}.txt", n % 4);
        match round % 6 {
            0 => {
                repo.write(&name("file", round), format!("round {round}\n").repeat(20));
                repo.write(&format!("bin/{round}.bin"), vec![round as u8; 3000]);
            }
            1 => {
                let from = name("file", round - 1);
                repo.mv(&from, &format!("moved/{round} {from}"));
                repo.write(&format!("empty {round}"), "");
            }
            2 => {
                repo.chmod(&tool, if round % 4 == 2 { 0o755 } else { 0o644 });
                let sub = repo.sub_commits[round % 3].clone();
                repo.gitlink("sub/a", &sub);
            }
            3 => {
                repo.write(&format!("bin/{}.bin", round - 3), vec![round as u8; 3100]);
                repo.symlink(&format!("bin/{}.bin", round - 3), &format!("link {round}"));
            }
            4 => {
                let sub = repo.sub_commits[round % 3].clone();
                repo.gitlink(&format!("mods/m{round}"), &sub);
                // A pure rename of a file that is executable at round 4 and not at round 10.
                let moved = format!("tools/tool {round}");
                repo.mv(&tool, &moved);
                tool = moved;
                repo.write("crlf.txt", format!("round {round}\r\n").repeat(3));
            }
            _ => {
                repo.git(&["rm", "-q", &format!("empty {}", round - 4)]);
                repo.write("noeol.txt", format!("round {round} without newline"));
            }
        }
        commits.push(repo.commit(&format!("round {round}")));
    }
    for commit in &commits {
        repo.assert_replays(commit);
    }
}
