//! Records the git commit the binary is built from, for `--version` and the start-up log.
//! `SUC_GIT_COMMIT` overrides it (image builds from a source tree without `.git` pass it in).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SUC_GIT_COMMIT");
    let commit = std::env::var("SUC_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SUC_GIT_COMMIT={}", commit.trim());
}

/// The commit of HEAD, with "-dirty" when tracked files differ from it. Asks cargo to run this
/// again when HEAD or its branch moves or the sources change (not on every change of git's index,
/// which `git status` rewrites, so that would rebuild the crate all the time).
fn git_commit() -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let git_dir = git(&["rev-parse", "--git-dir"])?;
    println!("cargo:rerun-if-changed={git_dir}/HEAD");
    for source in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={source}");
    }
    // A branch is a file of its own, or a line in packed-refs once git has packed it (a missing
    // file would make cargo run this on every build).
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        let loose = format!("{git_dir}/{branch}");
        if std::path::Path::new(&loose).exists() {
            println!("cargo:rerun-if-changed={loose}");
        } else {
            println!("cargo:rerun-if-changed={git_dir}/packed-refs");
        }
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}
