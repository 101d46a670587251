//! The TUI drawn onto ratatui's test backend, and its keys, without a
//! terminal or a daemon.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Color;
use ratatui::Terminal;

use super::app::{App, Effect, InviteStep, Job, Mode};
use super::folders::Folder;
use super::view::{draw, Theme};
use crate::control::schema::Status;

fn status(incoming: u64, in_sync: bool, sent: u64) -> Status {
    serde_json::from_value(serde_json::json!({
        "device": { "name": "desktop", "id": "ABCD-EFGH-IJKL", "data_dir": "/d/desktop", "mountpoint": "/home/me/PSync" },
        "daemon": { "pid": 42, "uptime_secs": 60, "syncing": true, "settings": {
            "config_file": null, "debounce_ms": 100, "upload_bytes_per_sec": 2097152,
            "download_bytes_per_sec": null, "log_level": null, "ice_bind": "auto", "ice_servers": [] } },
        "signalling": { "server": "ws://127.0.0.1:7700", "connected": true, "state": { "state": "connected" } },
        "peers": [{
            "name": "laptop", "id": "WXYZ-0000-1111", "role": "full", "online": true, "connected": true,
            "connection": "webrtc", "path": { "kind": "lan", "local": "127.0.0.1:1 (host)", "remote": "127.0.0.1:2 (host)", "relay": null },
            "last_seen_secs_ago": 0, "in_sync": in_sync, "incoming_records": incoming, "outgoing_records": 0,
            "acked_seq": 7, "rtt_ms": 0.4, "bytes_sent": sent, "bytes_received": 0
        }, {
            "name": "phone", "id": "PHON-0000-2222", "role": "read_only", "online": false, "connected": false,
            "connection": null, "last_seen_secs_ago": null, "in_sync": false, "incoming_records": 0,
            "outgoing_records": 0, "acked_seq": 0, "rtt_ms": null, "bytes_sent": null, "bytes_received": null
        }],
        "local": { "files": 12, "dirs": 2, "bytes": 3000, "seq": 9, "waiting_records": 0, "wanted_blocks": 0,
                   "held_records": 1, "held": [{ "path": "notes/busy.md", "reason": "open for writing here",
                   "kind": "open_for_writing", "from": "WXYZ-0000-1111", "held_secs": 3, "attempts": 2 }] },
        "conflicts": ["notes/b.sync-conflict-laptop.md"],
        "recent_errors": [],
        "recent_changes": [{ "seq": 9, "path": "notes/a.md", "deleted": false, "device": "laptop",
                             "device_id": "WXYZ-0000-1111", "this_device": false, "mtime": 1795620909 }]
    }))
    .unwrap()
}

fn app_with_status() -> App {
    let folder = Folder { name: "PSync".into(), data_dir: "/d/desktop".into(), mountpoint: "/home/me/PSync".into() };
    let mut app = App::new(vec![folder], "/d/desktop".into(), "ws://127.0.0.1:7700".into(), "/home/me".into());
    let t0 = Instant::now();
    app.folders[0].update(status(4, false, 0), t0);
    app.folders[0].update(status(1, false, 2048), t0 + Duration::from_secs(2));
    app
}

fn screen(app: &App, theme: Theme, width: u16, height: u16) -> (String, ratatui::buffer::Buffer) {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| draw(frame, app, theme)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let mut text = String::new();
    for y in 0..height {
        for x in 0..width {
            text.push_str(buffer[(x, y)].symbol());
        }
        text.push('\n');
    }
    (text, buffer)
}

fn press(app: &mut App, code: KeyCode) -> Vec<Effect> {
    app.key(KeyEvent::new(code, KeyModifiers::NONE))
}

#[test]
fn the_dashboard_fits_80x24_and_shows_what_status_says() {
    let app = app_with_status();
    let (text, _) = screen(&app, Theme { color: true }, 80, 24);
    for shown in [
        "/home/me/PSync",
        "mounted, syncing",
        "server connected",
        "12 files",
        "upload 2.0 MiB/s",
        "laptop",
        "connected LAN",
        "RTT 0.4 ms",
        "syncing",
        "↓ 1 ",
        "[#######---]",
        "1.0 KiB/s",
        "phone",
        "read-only",
        "offline",
        "laptop       changed notes/a.md",
        "held notes/busy.md: open for writing here",
        "conflict notes/b.sync-conflict-laptop.md",
        "q quit",
        "i invite",
    ] {
        assert!(text.contains(shown), "{shown:?} is not on the screen:\n{text}");
    }
    // Through NAT and relayed, as the link's ends say.
    let mut s = status(0, true, 0);
    s.peers[0].path = serde_json::from_value(serde_json::json!({
        "kind": "direct", "local": "192.168.1.20:5000 (host)", "remote": "203.0.113.7:6000 (srflx)", "relay": null
    }))
    .unwrap();
    let mut nat = app_with_status();
    nat.folders[0].update(s.clone(), Instant::now());
    assert!(screen(&nat, Theme { color: true }, 80, 24).0.contains("connected direct via NAT"));
    s.peers[0].path.as_mut().unwrap().kind = crate::net::path::PathKind::Relayed;
    nat.folders[0].update(s, Instant::now());
    assert!(screen(&nat, Theme { color: true }, 80, 24).0.contains("connected relayed"));
    // In sync: said so, and the bars are full.
    let mut app = app;
    app.folders[0].update(status(0, true, 4096), Instant::now());
    let (text, _) = screen(&app, Theme { color: true }, 80, 24);
    assert!(text.contains("in sync") && text.contains("↓ 0     [##########]"), "{text}");
}

#[test]
fn no_color_means_no_colour_and_small_terminals_do_not_panic() {
    let app = app_with_status();
    let (_, buffer) = screen(&app, Theme { color: false }, 80, 24);
    assert!(
        buffer.content().iter().all(|c| c.fg == Color::Reset && c.bg == Color::Reset),
        "NO_COLOR: only bold, dim and reverse"
    );
    let (_, buffer) = screen(&app, Theme { color: true }, 80, 24);
    assert!(buffer.content().iter().any(|c| c.fg != Color::Reset), "colours otherwise");
    for (w, h) in [(20, 5), (1, 1), (200, 60)] {
        screen(&app, Theme { color: true }, w, h);
    }
}

#[test]
fn an_invite_shows_the_code_then_the_device_and_asks() {
    let mut app = app_with_status();
    let effects = press(&mut app, KeyCode::Char('i'));
    assert_eq!(effects, vec![Effect::Invite { data_dir: "/d/desktop".into(), read_only: false }]);
    app.invite_step(InviteStep::Code("1234-apple-river".into()));
    let (text, _) = screen(&app, Theme { color: true }, 80, 24);
    assert!(text.contains("Invite code: 1234-apple-river"), "{text}");
    assert!(press(&mut app, KeyCode::Char('y')).is_empty(), "nothing to answer yet");
    app.invite_step(InviteStep::Device { name: "laptop".into(), id: "WXYZ-0000".into(), fingerprint: "AB:CD".into() });
    let (text, _) = screen(&app, Theme { color: true }, 80, 24);
    for shown in ["laptop", "WXYZ-0000", "AB:CD", "y add it to the group"] {
        assert!(text.contains(shown), "{shown:?}:\n{text}");
    }
    assert_eq!(press(&mut app, KeyCode::Char('y')), vec![Effect::AnswerInvite(true)]);
    app.invite_step(InviteStep::Added("laptop".into()));
    press(&mut app, KeyCode::Char(' '));
    assert_eq!(app.mode, Mode::Dashboard);
}

#[test]
fn dashboard_keys_become_the_commands_a_user_would_type() {
    let mut app = app_with_status();
    let data_dir = PathBuf::from("/d/desktop");
    assert_eq!(
        press(&mut app, KeyCode::Char('m')),
        vec![Effect::Cli {
            data_dir: data_dir.clone(),
            args: vec!["unmount".into(), "/home/me/PSync".into()],
            job: Job::Mount
        }]
    );
    app.done(Job::Mount, Ok("unmounted".into()));
    // Removing the selected device asks first.
    press(&mut app, KeyCode::Down);
    assert!(press(&mut app, KeyCode::Char('x')).is_empty());
    let (text, _) = screen(&app, Theme { color: true }, 80, 24);
    assert!(text.contains("Remove phone"), "{text}");
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        vec![Effect::Cli {
            data_dir: data_dir.clone(),
            args: vec!["remove".into(), "PHON-0000-2222".into()],
            job: Job::Show
        }]
    );
    // A read-only device becomes full.
    press(&mut app, KeyCode::Char('o'));
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        vec![Effect::Cli {
            data_dir: data_dir.clone(),
            args: vec!["role".into(), "PHON-0000-2222".into(), "--full".into()],
            job: Job::Show
        }]
    );
    // Settings: the upload limit changed.
    press(&mut app, KeyCode::Char('s'));
    press(&mut app, KeyCode::Tab);
    app.key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
    for c in "1MiB".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    press(&mut app, KeyCode::Tab);
    let effects = press(&mut app, KeyCode::Enter);
    let [Effect::Cli { args, job: Job::Settings, .. }] = effects.as_slice() else { panic!("{effects:?}") };
    assert_eq!(args, &["settings", "--debounce-ms", "100", "--upload-limit", "1MiB", "--download-limit", "0"]);
    // History: a path, its versions, a restore after a question.
    press(&mut app, KeyCode::Char('h'));
    for c in "notes/a.md".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    let effects = press(&mut app, KeyCode::Enter);
    assert_eq!(
        effects,
        vec![Effect::Cli {
            data_dir: data_dir.clone(),
            args: vec!["log".into(), "notes/a.md".into(), "--json".into()],
            job: Job::Log("notes/a.md".into())
        }]
    );
    let rows = r#"[{"version":3,"size":5,"committed_at":1795620909,"path":"notes/a.md","current":false},
                   {"version":8,"size":9,"committed_at":1795620999,"path":"notes/a.md","current":true}]"#;
    app.done(Job::Log("notes/a.md".into()), Ok(rows.into()));
    press(&mut app, KeyCode::Up);
    press(&mut app, KeyCode::Enter);
    let (text, _) = screen(&app, Theme { color: true }, 80, 24);
    assert!(text.contains("Restore notes/a.md to version 3"), "{text}");
    let effects = press(&mut app, KeyCode::Char('y'));
    assert!(matches!(&effects[..], [Effect::Cli { args, .. }] if args == &["restore", "notes/a.md", "--version", "3"]));
    // No path: the deleted files, and one brought back.
    press(&mut app, KeyCode::Char('h'));
    let effects = press(&mut app, KeyCode::Enter);
    assert!(
        matches!(&effects[..], [Effect::Cli { args, .. }] if args == &["log", "--deleted", "--json"]),
        "{effects:?}"
    );
    let rows = r#"[{"version":4,"size":7,"committed_at":1795620909,"path":"old/gone.md","current":false}]"#;
    app.done(Job::Log(String::new()), Ok(rows.into()));
    let (text, _) = screen(&app, Theme { color: true }, 80, 24);
    assert!(text.contains("Deleted files") && text.contains("old/gone.md"), "{text}");
    press(&mut app, KeyCode::Enter);
    let effects = press(&mut app, KeyCode::Char('y'));
    assert!(
        matches!(&effects[..], [Effect::Cli { args, .. }] if args == &["restore", "old/gone.md", "--version", "4"])
    );
    // q quits (the daemons are not told anything).
    assert!(press(&mut app, KeyCode::Char('q')).is_empty());
    assert!(app.quit);
}

#[test]
fn the_first_run_wizard_founds_then_mounts_then_lists_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_path_buf();
    let data_dir = home.join("data");
    let mut app = App::new(Vec::new(), data_dir.clone(), "ws://127.0.0.1:7700".into(), home.clone());
    let (text, _) = screen(&app, Theme { color: true }, 80, 24);
    assert!(text.contains("found a new group") && text.contains("join a group"), "{text}");
    press(&mut app, KeyCode::Char('f'));
    press(&mut app, KeyCode::Enter); // the server offered
    app.key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
    for c in "desktop".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Enter); // ~/PSync
    let (text, _) = screen(&app, Theme { color: true }, 80, 24);
    assert!(text.contains("does not exist: it is created"), "{text}");
    let effects = press(&mut app, KeyCode::Char('y'));
    let [Effect::Cli { args, job: Job::Identity, .. }] = effects.as_slice() else { panic!("{effects:?}") };
    assert_eq!(args, &["init", "--name", "desktop", "--server", "ws://127.0.0.1:7700"]);
    let effects = app.done(Job::Identity, Ok(String::new()));
    assert_eq!(
        effects,
        vec![Effect::Mount {
            data_dir: data_dir.clone(),
            folder: home.join("PSync"),
            create: true,
            adopt: false,
            job: Job::WizardMount
        }]
    );
    let effects = app.done(Job::WizardMount, Ok(String::new()));
    assert_eq!(app.mode, Mode::Dashboard);
    let folder = Folder { name: "PSync".into(), data_dir, mountpoint: home.join("PSync") };
    assert_eq!(effects, vec![Effect::SaveFolders(vec![folder])]);
}

#[test]
fn many_devices_scroll_to_the_selected_one_and_a_cancelled_invite_is_quiet() {
    let mut app = app_with_status();
    let mut s = status(0, true, 0);
    let template = s.peers[0].clone();
    for i in 0..10 {
        let mut peer = template.clone();
        peer.name = format!("device{i}");
        peer.id = format!("DEV{i}-0000");
        s.peers.push(peer);
    }
    app.folders[0].update(s, Instant::now());
    for _ in 0..20 {
        press(&mut app, KeyCode::Down);
    }
    let (text, _) = screen(&app, Theme { color: true }, 80, 24);
    assert!(text.contains("> device9"), "the last device is selected and in view:\n{text}");

    assert_eq!(press(&mut app, KeyCode::Char('i')).len(), 1);
    assert_eq!(press(&mut app, KeyCode::Esc), vec![Effect::AnswerInvite(false)]);
    app.invite_step(InviteStep::Failed("terminated".into()));
    assert_eq!(app.note, Some(("invite cancelled".into(), false)), "the end of a cancelled invite is not an error");
}

#[test]
fn settings_of_an_unmounted_folder_come_from_its_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.toml"), "upload_limit = \"3MiB\"\ndebounce_ms = 40\n").unwrap();
    let folder = Folder { name: "PSync".into(), data_dir: tmp.path().into(), mountpoint: "/home/me/PSync".into() };
    let mut app = App::new(vec![folder], tmp.path().into(), String::new(), "/home/me".into());
    press(&mut app, KeyCode::Char('s'));
    let Mode::Settings(form) = &app.mode else { panic!("{:?}", app.mode) };
    assert_eq!((form.fields[0].value.as_str(), form.fields[1].value.as_str()), ("40", "3MiB"));
}

#[test]
fn control_characters_from_peers_are_shown_escaped_never_sent_to_the_terminal() {
    let mut app = app_with_status();
    let mut s = status(0, true, 0);
    s.peers[0].name = "evil\u{1b}]52;c;aGk=\u{7}".into();
    s.recent_changes[0].path = "notes/\u{1b}[2Jgone.md".into();
    app.folders[0].update(s, Instant::now());
    let (text, _) = screen(&app, Theme { color: true }, 120, 24);
    assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'), "{text:?}");
    assert!(text.contains("notes/\\u{1b}[2Jgone.md"), "{text}");
}

#[test]
fn relay_storage_is_shown_when_the_device_uses_it() {
    let mut app = app_with_status();
    let mut s = status(0, true, 0);
    s.relay = Some(crate::live::RelayLive {
        reachable: true,
        held_bytes: 3 << 20,
        quota_bytes: 1 << 30,
        to_upload: 2,
        ..Default::default()
    });
    app.folders[0].update(s.clone(), Instant::now());
    let (text, _) = screen(&app, Theme { color: true }, 80, 24);
    assert!(text.contains("relay: 2 changes to leave there, 3.0 MiB of 1.0 GiB"), "{text}");
    s.relay = Some(crate::live::RelayLive { last_error: Some("no route".into()), ..Default::default() });
    app.folders[0].update(s, Instant::now());
    let (text, _) = screen(&app, Theme { color: true }, 80, 24);
    assert!(text.contains("relay not reachable: no route"), "{text}");
}

#[test]
fn a_join_waiting_for_its_confirmation_can_be_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_path_buf();
    let mut app = App::new(Vec::new(), home.join("data"), "ws://127.0.0.1:7700".into(), home.clone());
    press(&mut app, KeyCode::Char('j'));
    press(&mut app, KeyCode::Enter);
    for text in ["laptop", "1234-apple-river"] {
        app.key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
        for c in text.chars() {
            press(&mut app, KeyCode::Char(c));
        }
        press(&mut app, KeyCode::Enter);
    }
    press(&mut app, KeyCode::Enter);
    let effects = press(&mut app, KeyCode::Char('y'));
    assert!(matches!(&effects[..], [Effect::Cli { job: Job::Identity, .. }]), "{effects:?}");
    let (text, _) = screen(&app, Theme { color: true }, 80, 24);
    assert!(text.contains("waiting for the inviting device") && text.contains("Ctrl-C"), "{text}");
    assert_eq!(press(&mut app, KeyCode::Esc), vec![Effect::CancelIdentity]);
    app.done(Job::Identity, Err("terminated by signal".into()));
    let Mode::Wizard(wizard) = &app.mode else { panic!("{:?}", app.mode) };
    assert_eq!(wizard.step, super::wizard::Step::Code);
    assert!(wizard.error.as_deref().unwrap().contains("stopped"), "{:?}", wizard.error);
}

#[test]
fn ignore_rules_are_never_read_or_written_through_a_symlink() {
    use super::jobs::{Event, Jobs};
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside.txt");
    std::fs::write(&outside, "not the vault's").unwrap();
    let mount = tmp.path().join("mount");
    std::fs::create_dir(&mount).unwrap();
    let rules = mount.join(".psyncignore");
    std::os::unix::fs::symlink(&outside, &rules).unwrap();
    let (events, inbox) = std::sync::mpsc::channel();
    let jobs = Jobs::new(events, "/nonexistent/psync".into(), None);
    jobs.run(Effect::Write { path: rules.clone(), text: "*.tmp\n".into(), job: Job::SaveIgnore });
    let Ok(Event::Done(Job::SaveIgnore, result)) = inbox.recv_timeout(Duration::from_secs(60)) else { panic!() };
    assert!(result.is_err(), "{result:?}");
    jobs.run(Effect::Read { path: rules, job: Job::LoadIgnore });
    let Ok(Event::Done(Job::LoadIgnore, result)) = inbox.recv_timeout(Duration::from_secs(60)) else { panic!() };
    assert!(result.is_err(), "{result:?}");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "not the vault's");
}
