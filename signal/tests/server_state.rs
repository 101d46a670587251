//! The signalling server's logic, driven directly (no sockets).

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use psync_base::{codec, ContentHash};
use psync_signal::server::{
    login_message, ClientMsg, ConnId, ErrorCode, ServerMsg, ServerOut, ServerState, LOGIN_DOMAIN,
};
use psync_signal::{DeviceKey, Envelope, Role, Roster, RosterOp};

const NOW: u64 = 1_900_000_000_000;

struct World {
    server: ServerState,
    roster: Roster,
    founder: DeviceKey,
    laptop: DeviceKey,
    next_conn: ConnId,
}

fn frame(msg: &ClientMsg) -> Vec<u8> {
    codec::encode(msg).unwrap()
}

fn sent_to(out: &[ServerOut], conn: ConnId) -> Vec<ServerMsg> {
    out.iter()
        .filter_map(|o| match o {
            ServerOut::Send(c, m) if *c == conn => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn closed(out: &[ServerOut], conn: ConnId) -> bool {
    out.iter().any(|o| matches!(o, ServerOut::Close(c, _) if *c == conn))
}

impl World {
    fn new() -> World {
        let founder = DeviceKey::generate();
        let laptop = DeviceKey::generate();
        let mut roster = Roster::create(&founder, "notes", "desktop", "sha-256 AA", 1);
        let op = RosterOp::Add {
            key: laptop.public(),
            name: "laptop".into(),
            role: Role::Full,
            dtls_fingerprint: "sha-256 BB".into(),
        };
        roster.apply(roster.sign_next(&founder, op, 2)).unwrap();
        let mut server = ServerState::new([7; 16], vec![]);
        let out = server.connected(100, [1; 32], NOW);
        assert!(matches!(sent_to(&out, 100)[0], ServerMsg::Challenge { .. }));
        let out = server.frame(100, &frame(&ClientMsg::Register { entries: roster.entries().to_vec() }), NOW);
        assert!(out.contains(&ServerOut::Persist(roster.group_id())));
        World { server, roster, founder, laptop, next_conn: 1 }
    }

    /// Connects and logs `key` in; returns the connection and what it got.
    fn login(&mut self, key: &DeviceKey, group: ContentHash) -> (ConnId, Vec<ServerOut>) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let nonce = [conn as u8; 32];
        self.server.connected(conn, nonce, NOW);
        let signature = key.sign(LOGIN_DOMAIN, &login_message(&[7; 16], &nonce, &group, &key.public()));
        let out = self.server.frame(conn, &frame(&ClientMsg::Login { group, key: key.public(), signature }), NOW);
        (conn, out)
    }
}

#[test]
fn members_log_in_see_each_other_and_relay_within_the_group() {
    let mut w = World::new();
    let group = w.roster.group_id();
    let founder = copy_of(&w.founder);
    let (a, out) = w.login(&founder, group);
    let ServerMsg::Welcome { roster, online } = &sent_to(&out, a)[0] else { panic!("{out:?}") };
    assert_eq!(roster.len(), 2);
    assert!(online.is_empty());
    let laptop = copy_of(&w.laptop);
    let (b, out) = w.login(&laptop, group);
    assert!(sent_to(&out, a).contains(&ServerMsg::Online(laptop.public())), "join announced");
    let ServerMsg::Welcome { online, .. } = &sent_to(&out, b)[0] else { panic!() };
    assert_eq!(online, &vec![founder.public()]);
    let envelope = Envelope::seal(&founder, group, laptop.public(), 1, 1, NOW, b"offer".to_vec());
    let out = w.server.frame(a, &frame(&ClientMsg::Relay { envelope: envelope.clone() }), NOW);
    assert_eq!(sent_to(&out, b), vec![ServerMsg::Relayed(envelope)]);
    let out = w.server.disconnected(b);
    assert!(sent_to(&out, a).contains(&ServerMsg::Offline(laptop.public())), "leave announced");
}

#[test]
fn strangers_learn_nothing() {
    let mut w = World::new();
    let group = w.roster.group_id();
    let stranger = DeviceKey::generate();
    let (s, out) = w.login(&stranger, group);
    assert!(matches!(sent_to(&out, s)[0], ServerMsg::Error { code: ErrorCode::Unauthorized, .. }));
    assert!(closed(&out, s));
    // An unknown group gets the very same answer.
    let (u, out) = w.login(&stranger, ContentHash([9; 32]));
    assert_eq!(sent_to(&out, u), sent_to(&w.login(&stranger, group).1, u + 1));
    // Nothing before login.
    let conn = 500;
    w.server.connected(conn, [5; 32], NOW);
    let out = w.server.frame(conn, &frame(&ClientMsg::Append { entry: w.roster.entries()[1].clone() }), NOW);
    assert!(matches!(sent_to(&out, conn)[0], ServerMsg::Error { code: ErrorCode::Unauthorized, .. }));
}

#[test]
fn a_replayed_or_misdirected_login_is_refused() {
    let mut w = World::new();
    let group = w.roster.group_id();
    // Capture a valid login for connection 1's nonce, replay it on another connection.
    let founder = copy_of(&w.founder);
    let signature = founder.sign(LOGIN_DOMAIN, &login_message(&[7; 16], &[1; 32], &group, &founder.public()));
    w.server.connected(42, [42; 32], NOW);
    let out = w.server.frame(42, &frame(&ClientMsg::Login { group, key: founder.public(), signature }), NOW);
    assert!(closed(&out, 42), "a signature over another connection's nonce does not log in");
    // A signature made for another server id.
    w.server.connected(43, [43; 32], NOW);
    let other = founder.sign(LOGIN_DOMAIN, &login_message(&[8; 16], &[43; 32], &group, &founder.public()));
    let out = w.server.frame(43, &frame(&ClientMsg::Login { group, key: founder.public(), signature: other }), NOW);
    assert!(closed(&out, 43));
}

#[test]
fn the_server_cannot_be_used_to_add_or_impersonate() {
    let mut w = World::new();
    let group = w.roster.group_id();
    let founder = copy_of(&w.founder);
    let laptop = copy_of(&w.laptop);
    let (a, _) = w.login(&founder, group);
    let (b, _) = w.login(&laptop, group);
    // An unsigned roster entry is refused and changes nothing.
    let stranger = DeviceKey::generate();
    let mut forged = w.roster.sign_next(
        &founder,
        RosterOp::Add { key: stranger.public(), name: "x".into(), role: Role::Full, dtls_fingerprint: String::new() },
        3,
    );
    forged.signature = psync_signal::SignatureBytes([0; 64]);
    let out = w.server.frame(a, &frame(&ClientMsg::Append { entry: forged }), NOW);
    assert!(matches!(sent_to(&out, a)[0], ServerMsg::Error { code: ErrorCode::BadRoster, .. }));
    assert_eq!(w.server.roster(&group).unwrap().entries().len(), 2);
    // A device cannot relay in another device's name.
    let spoofed = Envelope::seal(&laptop, group, founder.public(), 1, 1, NOW, b"x".to_vec());
    let out = w.server.frame(a, &frame(&ClientMsg::Relay { envelope: spoofed }), NOW);
    assert!(sent_to(&out, b).is_empty());
    assert!(matches!(sent_to(&out, a)[0], ServerMsg::Error { code: ErrorCode::Unauthorized, .. }));
}

#[test]
fn a_revoked_device_is_cut_off_and_refused() {
    let mut w = World::new();
    let group = w.roster.group_id();
    let founder = copy_of(&w.founder);
    let laptop = copy_of(&w.laptop);
    let (a, _) = w.login(&founder, group);
    let (b, _) = w.login(&laptop, group);
    let removal = w.roster.sign_next(&founder, RosterOp::Remove { key: laptop.public() }, 3);
    let out = w.server.frame(a, &frame(&ClientMsg::Append { entry: removal }), NOW);
    assert!(closed(&out, b), "the revoked device's connection is closed");
    assert!(sent_to(&out, a).contains(&ServerMsg::Offline(laptop.public())));
    let (c, out) = w.login(&laptop, group);
    assert!(closed(&out, c), "and it cannot log in again");
}

#[test]
fn hostile_frames_close_only_their_connection() {
    let mut w = World::new();
    let group = w.roster.group_id();
    let founder = copy_of(&w.founder);
    let (a, _) = w.login(&founder, group);
    w.server.connected(77, [77; 32], NOW);
    let out = w.server.frame(77, &[0xFF, 0xFF, 0xFF], NOW);
    assert!(closed(&out, 77) && !closed(&out, a));
    w.server.connected(78, [78; 32], NOW);
    let out = w.server.frame(78, &vec![0u8; 70 * 1024], NOW);
    assert!(closed(&out, 78));
    w.server.connected(79, [79; 32], NOW);
    let mut limited = false;
    for _ in 0..200 {
        limited |= closed(&w.server.frame(79, &frame(&ClientMsg::Ping), NOW), 79);
    }
    assert!(limited, "a flood is cut off");
    let out = w.server.frame(a, &frame(&ClientMsg::Ping), NOW);
    assert_eq!(sent_to(&out, a), vec![ServerMsg::Pong], "others are unaffected");
}

#[test]
fn silent_connections_time_out_and_go_offline() {
    let mut w = World::new();
    let group = w.roster.group_id();
    let founder = copy_of(&w.founder);
    let laptop = copy_of(&w.laptop);
    let (a, _) = w.login(&founder, group);
    let (b, _) = w.login(&laptop, group);
    w.server.frame(a, &frame(&ClientMsg::Ping), NOW + 40_000);
    let out = w.server.tick(NOW + 50_000);
    assert!(closed(&out, b) && !closed(&out, a));
    assert!(sent_to(&out, a).contains(&ServerMsg::Offline(laptop.public())));
}

/// The same key again (`DeviceKey` is deliberately not `Clone`).
fn copy_of(key: &DeviceKey) -> DeviceKey {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    key.save(&path).unwrap();
    DeviceKey::load(&path).unwrap()
}

#[test]
fn invite_mailboxes_are_single_use_and_private() {
    let mut w = World::new();
    let group = w.roster.group_id();
    let founder = copy_of(&w.founder);
    let (a, _) = w.login(&founder, group);
    let out = w.server.frame(a, &frame(&ClientMsg::OpenInvite), NOW);
    let ServerMsg::InviteOpened { mailbox } = sent_to(&out, a)[0] else { panic!("{out:?}") };
    // The joiner (not logged in) enters; the inviter hears it.
    w.server.connected(900, [9; 32], NOW);
    let out = w.server.frame(900, &frame(&ClientMsg::JoinInvite { mailbox, payload: b"pake-j".to_vec() }), NOW);
    assert_eq!(sent_to(&out, a), vec![ServerMsg::InviteMsg { mailbox, payload: b"pake-j".to_vec() }]);
    let out = w.server.frame(a, &frame(&ClientMsg::InviteMsg { mailbox, payload: b"pake-i".to_vec() }), NOW);
    assert_eq!(sent_to(&out, 900), vec![ServerMsg::InviteMsg { mailbox, payload: b"pake-i".to_vec() }]);
    // A second joiner finds nothing; a bystander cannot write into it.
    w.server.connected(901, [9; 32], NOW);
    let out = w.server.frame(901, &frame(&ClientMsg::JoinInvite { mailbox, payload: vec![] }), NOW);
    assert!(closed(&out, 901));
    let out = w.server.frame(901, &frame(&ClientMsg::InviteMsg { mailbox, payload: vec![] }), NOW);
    assert!(sent_to(&out, a).is_empty());
    // Closed by the inviter (e.g. a wrong code): gone.
    w.server.frame(a, &frame(&ClientMsg::CloseInvite { mailbox }), NOW);
    let out = w.server.frame(900, &frame(&ClientMsg::InviteMsg { mailbox, payload: vec![] }), NOW);
    assert!(matches!(sent_to(&out, 900)[0], ServerMsg::Error { .. }));
    // Strangers cannot open invites; invites expire.
    w.server.connected(902, [9; 32], NOW);
    let out = w.server.frame(902, &frame(&ClientMsg::OpenInvite), NOW);
    assert!(matches!(sent_to(&out, 902)[0], ServerMsg::Error { code: ErrorCode::Unauthorized, .. }));
    let out = w.server.frame(a, &frame(&ClientMsg::OpenInvite), NOW);
    let ServerMsg::InviteOpened { mailbox } = sent_to(&out, a)[0] else { panic!() };
    w.server.frame(a, &frame(&ClientMsg::Ping), NOW + 20 * 60 * 1000);
    w.server.tick(NOW + 20 * 60 * 1000);
    w.server.connected(903, [9; 32], NOW);
    let out = w.server.frame(903, &frame(&ClientMsg::JoinInvite { mailbox, payload: vec![] }), NOW + 20 * 60 * 1000);
    assert!(closed(&out, 903), "expired");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]
    /// Arbitrary frames from an unauthenticated connection never panic the
    /// server, never log it in, and never reach a member.
    #[test]
    fn arbitrary_frames_are_harmless(frames in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 1..8)) {
        let mut w = World::new();
        let group = w.roster.group_id();
        let founder = copy_of(&w.founder);
        let (a, _) = w.login(&founder, group);
        w.server.connected(999, [3; 32], NOW);
        for f in &frames {
            let out = w.server.frame(999, f, NOW);
            proptest::prop_assert!(sent_to(&out, a).is_empty());
            let welcomed = out.iter().any(|o| matches!(o, ServerOut::Send(999, ServerMsg::Welcome { .. })));
            proptest::prop_assert!(!welcomed);
        }
        proptest::prop_assert_eq!(w.server.roster(&group).unwrap().entries().len(), 2);
    }
}

/// A device's daemon and a CLI command beside it (e.g. `psync invite`) are
/// both logged in: neither pushes the other out, envelopes reach both,
/// presence changes only with the first and the last, and past the cap the
/// oldest connection goes.
#[test]
fn a_device_may_hold_a_few_connections_at_once() {
    use psync_signal::server::MAX_CONNECTIONS_PER_DEVICE;
    let mut w = World::new();
    let group = w.roster.group_id();
    let founder = copy_of(&w.founder);
    let laptop = copy_of(&w.laptop);
    let (watcher, _) = w.login(&founder, group);
    let (daemon, out) = w.login(&laptop, group);
    assert!(sent_to(&out, watcher).contains(&ServerMsg::Online(laptop.public())));
    let (cli, out) = w.login(&laptop, group);
    assert!(!closed(&out, daemon), "the daemon keeps its connection");
    assert!(sent_to(&out, watcher).is_empty(), "no second Online for the same device");

    let envelope = Envelope::seal(&founder, group, laptop.public(), 1, 1, NOW, b"offer".to_vec());
    let out = w.server.frame(watcher, &frame(&ClientMsg::Relay { envelope: envelope.clone() }), NOW);
    for conn in [daemon, cli] {
        assert_eq!(sent_to(&out, conn), vec![ServerMsg::Relayed(envelope.clone())]);
    }

    let out = w.server.disconnected(cli);
    assert!(sent_to(&out, watcher).is_empty(), "still online through the daemon");
    let envelope = Envelope::seal(&founder, group, laptop.public(), 1, 2, NOW, b"again".to_vec());
    let out = w.server.frame(watcher, &frame(&ClientMsg::Relay { envelope: envelope.clone() }), NOW);
    assert_eq!(sent_to(&out, daemon), vec![ServerMsg::Relayed(envelope)]);

    let mut extra = Vec::new();
    for i in 0..MAX_CONNECTIONS_PER_DEVICE {
        let (conn, out) = w.login(&laptop, group);
        // The cap is passed by the last login: the oldest (the daemon) goes.
        assert_eq!(closed(&out, daemon), i + 1 == MAX_CONNECTIONS_PER_DEVICE, "login {i}");
        extra.push(conn);
    }
    let out = w.server.disconnected(daemon);
    assert!(sent_to(&out, watcher).is_empty(), "the others are still there");
    for conn in extra {
        w.server.disconnected(conn);
    }
    let (_, out) = w.login(&founder, group);
    let ServerMsg::Welcome { online, .. } = &sent_to(&out, w.next_conn - 1)[0] else { panic!("{out:?}") };
    assert!(!online.contains(&laptop.public()), "offline once the last connection is gone: {online:?}");
}

/// A stranger cannot fill the server's table of groups (each is kept for
/// good): registrations are bounded per origin and per hour. Invite codes
/// tried from one origin are bounded too (a wrong guess burns an invite).
#[test]
fn registrations_and_invite_guesses_are_bounded_per_origin() {
    use psync_signal::server::{Origin, INVITE_TRIES_PER_ORIGIN, ORIGIN_WINDOW_MS, REGISTRATIONS_PER_ORIGIN};
    let mut server = ServerState::new([7; 16], vec![]);
    let register = |server: &mut ServerState, conn: ConnId, origin: Origin, now: u64| {
        let key = DeviceKey::generate();
        let roster = Roster::create(&key, "g", "d", "fp", conn as i64);
        server.connected_from(conn, origin, [conn as u8; 32], now);
        let out = server.frame(conn, &frame(&ClientMsg::Register { entries: roster.entries().to_vec() }), now);
        out.contains(&ServerOut::Persist(roster.group_id()))
    };
    let accepted = (0..20).filter(|i| register(&mut server, *i, Origin(42), NOW)).count();
    assert_eq!(accepted, REGISTRATIONS_PER_ORIGIN as usize);
    assert!(register(&mut server, 100, Origin(43), NOW), "another origin still may");
    assert!(register(&mut server, 101, Origin(42), NOW + ORIGIN_WINDOW_MS), "and the first again an hour later");

    let mut refused_at = None;
    for i in 0..INVITE_TRIES_PER_ORIGIN as u64 + 5 {
        let conn = 1_000 + i;
        server.connected_from(conn, Origin(7), [9; 32], NOW);
        let out = server.frame(conn, &frame(&ClientMsg::JoinInvite { mailbox: 4242, payload: vec![1] }), NOW);
        let limited =
            sent_to(&out, conn).iter().any(|m| matches!(m, ServerMsg::Error { code: ErrorCode::RateLimited, .. }));
        if limited {
            assert!(closed(&out, conn));
            refused_at.get_or_insert(i);
        }
    }
    assert_eq!(refused_at, Some(INVITE_TRIES_PER_ORIGIN as u64), "the tries past the bound are refused");
}

/// Members get the operator's STUN/TURN servers with their own fresh TURN
/// credentials after logging in and whenever they ask; strangers get none.
#[test]
fn members_get_ice_servers_with_fresh_turn_credentials() {
    use psync_signal::ice::{turn_rest_password, IcePolicy};
    let mut w = World::new();
    let policy = IcePolicy {
        stun: vec!["stun:203.0.113.10:3478".into()],
        turn: vec!["turn:203.0.113.10:3478".into()],
        turn_secret: b"coturn secret".to_vec(),
        ttl_secs: 3600,
    };
    w.server = std::mem::replace(&mut w.server, ServerState::new([0; 16], vec![])).with_ice(policy);
    let group = w.roster.group_id();
    let laptop = copy_of(&w.laptop);
    let (b, out) = w.login(&laptop, group);
    let sent = sent_to(&out, b);
    assert!(matches!(sent[0], ServerMsg::Welcome { .. }), "{sent:?}");
    let ServerMsg::IceServers { servers, expires_ms } = &sent[1] else { panic!("{sent:?}") };
    assert_eq!(*expires_ms, (NOW / 1000 + 3600) * 1000);
    assert_eq!(servers[0].urls, ["stun:203.0.113.10:3478"]);
    let username = servers[1].username.clone().unwrap();
    assert!(username.starts_with(&format!("{}:", NOW / 1000 + 3600)), "{username}");
    assert_eq!(servers[1].credential.clone().unwrap(), turn_rest_password(b"coturn secret", &username));
    // Asked again later: a later expiry.
    let later = NOW + 1_800_000;
    let out = w.server.frame(b, &frame(&ClientMsg::GetIceServers), later);
    let again = sent_to(&out, b);
    let [ServerMsg::IceServers { expires_ms, .. }] = again.as_slice() else { panic!("{out:?}") };
    assert_eq!(*expires_ms, (later / 1000 + 3600) * 1000);
    // Not before logging in.
    w.server.connected(900, [9; 32], NOW);
    let out = w.server.frame(900, &frame(&ClientMsg::GetIceServers), NOW);
    assert!(matches!(sent_to(&out, 900)[0], ServerMsg::Error { code: ErrorCode::Unauthorized, .. }));
}
