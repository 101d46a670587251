//! `psync signal`, `psync init` and `psync devices` as processes.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::mount::psync;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(data: &Path) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_psync"))
        .arg("--data-dir")
        .arg(data)
        .args(["signal", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start psync signal");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("listening on ws://127.0.0.1:"), "{line}");
    (Server(child), format!("ws://127.0.0.1:{port}"))
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn init_founds_a_group_and_devices_lists_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, url) = start_server(&tmp.path().join("server"));
    let dev = tmp.path().join("desktop");
    let out = psync(&dev, &["init", "--name", "desktop", "--server", &url, "--group-name", "notes"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dev.join("device.key")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    let listed = json(&psync(&dev, &["devices", "--json"]));
    assert_eq!(listed["source"], "server");
    let devices = listed["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["name"], "desktop");
    assert_eq!(devices[0]["role"], "Full");
    // A second identity in the same data dir is refused.
    let again = psync(&dev, &["init", "--name", "other", "--server", &url]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has a device identity"));
    // With the server gone, the verified local copy answers.
    drop(server);
    let listed = json(&psync(&dev, &["devices", "--json"]));
    assert_eq!(listed["source"], "local copy (server unreachable)");
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1);
}

#[test]
fn clear_errors_for_signal_and_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let out = psync(tmp.path(), &["signal", "--listen", "0.0.0.0:7700"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("only for loopback"), "{out:?}");
    let out = psync(tmp.path(), &["devices"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `psync init`"), "{out:?}");
    // No server at that address: init fails and leaves no half identity behind.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dev = tmp.path().join("dev");
    let out = psync(&dev, &["init", "--name", "x", "--server", &format!("ws://127.0.0.1:{port}")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot register the group"), "{out:?}");
    assert!(!dev.join("device.key").exists());
}
