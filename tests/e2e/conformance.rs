//! POSIX conformance (pjdfstest) and random-operation verification (fsx)
//! on a real PSync mount. The tools are installed by scripts/test.sh
//! (`cargo install pjdfstest fsx`); a missing tool fails loudly.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use crate::mount::Mounted;

/// A test tool `scripts/test.sh` installs with `cargo install`.
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("PSYNC_TOOLS_DIR") {
        dirs.push(PathBuf::from(dir).join("bin"));
    }
    dirs.push(PathBuf::from("/var/cache/psync-tools/bin"));
    if let Some(home) = std::env::var_os("HOME") {
        let home = PathBuf::from(home);
        dirs.push(home.join(".cache/psync-tools/bin"));
        dirs.push(home.join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.exists()).unwrap_or_else(|| {
        panic!("{name} is not installed: run ./scripts/test.sh (it installs it) or `cargo install --locked {name}`")
    })
}

fn expected_failures() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pjdfstest/expected-failures.txt");
    std::fs::read_to_string(path)
        .expect("expected-failures.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn pjdfstest_passes_except_the_listed_cases() {
    assert!(
        Command::new("id").arg("tests").output().is_ok_and(|o| o.status.success()),
        "pjdfstest needs a user named `tests`: run ./scripts/test.sh (it creates it)"
    );
    // pjdfstest acts as other users too: the mount must let them in.
    let m = Mounted::new_with_flags(&["--allow-other"]);
    let second = tempfile::tempdir_in("/var/tmp").expect("second filesystem dir");
    let out = Command::new(tool("pjdfstest"))
        .arg("-c")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pjdfstest/pjdfstest.toml"))
        .arg("-p")
        .arg(&m.mnt)
        .arg("-s")
        .arg(second.path())
        .current_dir(&m.mnt)
        .output()
        .expect("run pjdfstest");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let failed: BTreeSet<String> = text
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let summary = text.lines().find(|l| l.starts_with("Summary:")).unwrap_or("no summary").to_string();
    eprintln!("pjdfstest: {summary}");
    let expected = expected_failures();
    let unexpected: Vec<_> = failed.difference(&expected).collect();
    let now_passing: Vec<_> = expected.difference(&failed).collect();
    if !now_passing.is_empty() {
        eprintln!("listed as expected failures but passed this time: {now_passing:?}");
    }
    assert!(unexpected.is_empty(), "unexpected pjdfstest failures {unexpected:?}\n{summary}\n{text}");
    let passed: u32 = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" passed").and_then(|n| n.trim().parse().ok()))
        .unwrap_or(0);
    assert!(passed >= 350, "pjdfstest ran too few cases: {summary}");
}

#[test]
fn fsx_random_operations_verify() {
    let m = Mounted::new();
    let artifacts = tempfile::tempdir().expect("artifacts dir");
    let runs: Vec<_> = [(1u32, 20_000u32), (2, 20_000)]
        .into_iter()
        .map(|(seed, ops)| {
            let file = m.path(&format!("fsx-{seed}.bin"));
            Command::new(tool("fsx"))
                .arg("-N")
                .arg(ops.to_string())
                .arg("-S")
                .arg(seed.to_string())
                .arg("-P")
                .arg(artifacts.path())
                .arg(&file)
                .spawn()
                .expect("run fsx")
        })
        .collect();
    for child in runs {
        let out = child.wait_with_output().expect("fsx");
        assert!(out.status.success(), "fsx found a mismatch (see its log in {})", artifacts.path().display());
    }
    m.unmount();
    m.fsck();
}
