//! The signalling server's logic as a state machine: connection events and
//! client messages in, messages, closes and persistence requests out. The
//! WebSocket shell only moves frames and writes what it is asked to persist.
//!
//! What the server may know: which keys are members of which group (the
//! roster log, which it stores but cannot forge), who is online. What it
//! cannot do: add anyone to a group, read or alter relayed messages (they
//! are signed end to end), or answer anything about a group to a device that
//! has not proved, by signing a fresh nonce, that it is an active member.

use std::collections::{BTreeMap, BTreeSet};

use psync_base::{codec, ContentHash};
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::ice::{IcePolicy, IceServer};
use crate::identity::{PublicKey, SignatureBytes};
use crate::roster::{Roster, RosterEntry};

/// Signature domain of logins.
pub const LOGIN_DOMAIN: &str = "psync/signal-auth/v1";
/// Protocol version of client-server messages.
pub const SIGNAL_PROTOCOL: u32 = 1;
/// Largest client frame the server accepts.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// A connection silent this long is closed (clients ping every 15 s).
pub const IDLE_TIMEOUT_MS: u64 = 45_000;
/// Messages per second a connection may send (burst of the same size).
pub const MESSAGES_PER_SECOND: u32 = 50;
/// Groups a server holds at most.
pub const MAX_GROUPS: usize = 10_000;
/// Roster entries a group may have.
pub const MAX_ROSTER_ENTRIES: usize = 10_000;
/// Open invites at once (server-wide).
pub const MAX_INVITES: usize = 1_000;
/// Connections one device may hold at once (its daemon and a few CLI
/// commands beside it); a newer login past this closes the oldest.
pub const MAX_CONNECTIONS_PER_DEVICE: usize = 4;
/// How long an invite mailbox lives.
pub const INVITE_TTL_MS: u64 = 10 * 60 * 1000;
/// Groups one origin (an IPv4 address, an IPv6 /64) may register per
/// [`ORIGIN_WINDOW_MS`] (count): each is kept for good, so a stranger must
/// not be able to fill the server's table.
pub const REGISTRATIONS_PER_ORIGIN: u32 = 5;
/// Groups the whole server registers per [`ORIGIN_WINDOW_MS`] (count).
pub const REGISTRATIONS_PER_WINDOW: u32 = 200;
/// Invite mailboxes one origin may try to enter per [`ORIGIN_WINDOW_MS`]
/// (count): a wrong guess burns someone's invite.
pub const INVITE_TRIES_PER_ORIGIN: u32 = 20;
/// The window those counts are over (milliseconds: one hour).
pub const ORIGIN_WINDOW_MS: u64 = 60 * 60 * 1000;

/// Where a connection comes from, as the limits see it: an IPv4 address or
/// an IPv6 /64 prefix (one subscriber's block), made by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Origin(pub u128);

/// Counts per origin over a fixed window.
#[derive(Debug, Default)]
struct WindowCounts {
    started: u64,
    counts: BTreeMap<Origin, u32>,
    total: u32,
}

impl WindowCounts {
    /// Counts one more for `origin` if it stays within `per_origin` (and
    /// the whole within `total_max`).
    fn allow(&mut self, origin: Origin, now: u64, per_origin: u32, total_max: u32) -> bool {
        if now.saturating_sub(self.started) >= ORIGIN_WINDOW_MS {
            *self = WindowCounts { started: now, ..Default::default() };
        }
        let n = self.counts.entry(origin).or_default();
        if *n >= per_origin || self.total >= total_max {
            return false;
        }
        *n += 1;
        self.total += 1;
        true
    }
}

#[derive(Debug)]
struct Mailbox {
    inviter: ConnId,
    joiner: Option<ConnId>,
    expires: u64,
}

/// A connection, numbered by the shell.
pub type ConnId = u64;

/// From a device to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Founds a group: its roster log (verified by the server, new id only).
    Register {
        /// The log (its first entry names the group).
        entries: Vec<RosterEntry>,
    },
    /// Proves membership: a signature over the connection's challenge.
    Login {
        /// The group.
        group: ContentHash,
        /// The device.
        key: PublicKey,
        /// Over `LOGIN_DOMAIN`, server id, nonce, group and key.
        signature: SignatureBytes,
    },
    /// Appends a member-signed entry to the group's roster.
    Append {
        /// The entry.
        entry: RosterEntry,
    },
    /// Relays a signed envelope to an online member of the group.
    Relay {
        /// The envelope.
        envelope: Envelope,
    },
    /// Keeps the connection alive.
    Ping,
    /// A member opens a one-use invite mailbox.
    OpenInvite,
    /// A new device (not logged in) enters a mailbox with its first message.
    JoinInvite {
        /// The mailbox number from the code.
        mailbox: u32,
        /// Opaque to the server (a PAKE message).
        payload: Vec<u8>,
    },
    /// A message for the other side of a mailbox.
    InviteMsg {
        /// The mailbox.
        mailbox: u32,
        /// Opaque to the server.
        payload: Vec<u8>,
    },
    /// The inviter closes (or burns) its mailbox.
    CloseInvite {
        /// The mailbox.
        mailbox: u32,
    },
    /// A member asks for the group's whole roster again (a peer showed a
    /// roster head it does not know).
    GetRoster,
    /// A member asks for fresh ICE servers (its credentials near expiry).
    GetIceServers,
}

/// Why the server refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame did not decode or was too large.
    Malformed,
    /// Not logged in, or the login failed.
    Unauthorized,
    /// The group does not exist here.
    UnknownGroup,
    /// The roster entry or log was refused.
    BadRoster,
    /// The recipient is not online.
    NotOnline,
    /// Too many messages.
    RateLimited,
    /// The group exists already.
    Exists,
    /// A server limit was reached.
    Full,
}

/// From the server to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Sent on connect: sign `nonce` to log in.
    Challenge {
        /// Protocol version.
        protocol: u32,
        /// This server's identity (part of what is signed).
        server_id: [u8; 16],
        /// Single-use nonce for this connection.
        nonce: [u8; 32],
    },
    /// Logged in: the group's roster log and who is online.
    Welcome {
        /// The roster log.
        roster: Vec<RosterEntry>,
        /// Members online now.
        online: Vec<PublicKey>,
    },
    /// A group was registered.
    Registered {
        /// Its id.
        group: ContentHash,
    },
    /// A member came online.
    Online(PublicKey),
    /// A member went offline.
    Offline(PublicKey),
    /// A new roster entry (from any member).
    RosterAppended(RosterEntry),
    /// A relayed envelope for this device.
    Relayed(Envelope),
    /// Answer to `Ping`.
    Pong,
    /// A mailbox was opened for the inviter.
    InviteOpened {
        /// Its number (part of the code).
        mailbox: u32,
    },
    /// A message from the other side of a mailbox.
    InviteMsg {
        /// The mailbox.
        mailbox: u32,
        /// Opaque to the server.
        payload: Vec<u8>,
    },
    /// Something was refused.
    Error {
        /// What kind.
        code: ErrorCode,
        /// For logs and users.
        message: String,
    },
    /// The group's roster log, as asked.
    Roster {
        /// The log.
        roster: Vec<RosterEntry>,
    },
    /// STUN/TURN servers to use, sent after `Welcome` and on
    /// `GetIceServers` (only to members, only if the operator set any).
    IceServers {
        /// With TURN credentials for this device.
        servers: Vec<IceServer>,
        /// When the credentials expire (unix milliseconds).
        expires_ms: u64,
    },
}

/// What the shell must do. Drained at once after each input, so the size
/// of the `Send` variant costs nothing worth a box per message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum ServerOut {
    /// Send this on that connection.
    Send(ConnId, ServerMsg),
    /// Close that connection.
    Close(ConnId, String),
    /// Write this group's roster log to disk.
    Persist(ContentHash),
}

#[derive(Debug)]
struct Conn {
    origin: Origin,
    nonce: [u8; 32],
    member: Option<(ContentHash, PublicKey)>,
    last_seen: u64,
    tokens: f64,
    tokens_at: u64,
}

/// The server's state.
#[derive(Debug)]
pub struct ServerState {
    server_id: [u8; 16],
    groups: BTreeMap<ContentHash, Roster>,
    conns: BTreeMap<ConnId, Conn>,
    /// Per group, each online device's connections, oldest first (a daemon
    /// and the CLI commands run beside it).
    online: BTreeMap<ContentHash, BTreeMap<PublicKey, Vec<ConnId>>>,
    mailboxes: BTreeMap<u32, Mailbox>,
    registrations: WindowCounts,
    invite_tries: WindowCounts,
    ice: IcePolicy,
    out: Vec<ServerOut>,
    now: u64,
}

/// The bytes a device signs to log in.
pub fn login_message(server_id: &[u8; 16], nonce: &[u8; 32], group: &ContentHash, key: &PublicKey) -> Vec<u8> {
    [server_id.as_slice(), nonce.as_slice(), group.as_bytes().as_slice(), key.0.as_slice()].concat()
}

impl ServerState {
    /// A server with these groups (loaded from disk by the shell).
    pub fn new(server_id: [u8; 16], groups: Vec<Roster>) -> Self {
        Self {
            server_id,
            groups: groups.into_iter().map(|r| (r.group_id(), r)).collect(),
            conns: BTreeMap::new(),
            online: BTreeMap::new(),
            mailboxes: BTreeMap::new(),
            registrations: WindowCounts::default(),
            invite_tries: WindowCounts::default(),
            ice: IcePolicy::default(),
            out: Vec::new(),
            now: 0,
        }
    }

    /// Hands these STUN/TURN servers to logged-in members.
    pub fn with_ice(mut self, ice: IcePolicy) -> Self {
        self.ice = ice;
        self
    }

    /// The identity logins sign for.
    pub fn server_id(&self) -> [u8; 16] {
        self.server_id
    }

    /// A group's roster, if held.
    pub fn roster(&self, group: &ContentHash) -> Option<&Roster> {
        self.groups.get(group)
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn send(&mut self, conn: ConnId, msg: ServerMsg) {
        self.out.push(ServerOut::Send(conn, msg));
    }

    fn error(&mut self, conn: ConnId, code: ErrorCode, message: impl Into<String>) {
        self.send(conn, ServerMsg::Error { code, message: message.into() });
    }

    /// A new connection: it gets a challenge.
    pub fn connected(&mut self, conn: ConnId, nonce: [u8; 32], now: u64) -> Vec<ServerOut> {
        self.connected_from(conn, Origin::default(), nonce, now)
    }

    /// A new connection from `origin`: it gets a challenge.
    pub fn connected_from(&mut self, conn: ConnId, origin: Origin, nonce: [u8; 32], now: u64) -> Vec<ServerOut> {
        self.now = now;
        self.conns.insert(
            conn,
            Conn {
                origin,
                nonce,
                member: None,
                last_seen: now,
                tokens: f64::from(MESSAGES_PER_SECOND),
                tokens_at: now,
            },
        );
        self.send(conn, ServerMsg::Challenge { protocol: SIGNAL_PROTOCOL, server_id: self.server_id, nonce });
        std::mem::take(&mut self.out)
    }

    /// A connection ended.
    pub fn disconnected(&mut self, conn: ConnId) -> Vec<ServerOut> {
        // An invite dies with its inviter (its joiner is told); a joiner that
        // leaves has used it up.
        let orphaned: Vec<u32> = self.mailboxes.iter().filter(|(_, m)| m.inviter == conn).map(|(id, _)| *id).collect();
        for mailbox in orphaned {
            self.close_mailbox(mailbox);
        }
        if let Some(Conn { member: Some((group, key)), .. }) = self.conns.remove(&conn) {
            let gone = self.online.get_mut(&group).is_some_and(|m| {
                let Some(conns) = m.get_mut(&key) else { return false };
                conns.retain(|c| *c != conn);
                if conns.is_empty() {
                    m.remove(&key);
                    true
                } else {
                    false
                }
            });
            if gone {
                self.announce(&group, ServerMsg::Offline(key), None);
            }
        }
        std::mem::take(&mut self.out)
    }

    fn announce(&mut self, group: &ContentHash, msg: ServerMsg, except: Option<ConnId>) {
        let targets: Vec<ConnId> = self
            .online
            .get(group)
            .map(|m| m.values().flatten().copied().filter(|c| Some(*c) != except).collect())
            .unwrap_or_default();
        for t in targets {
            self.send(t, msg.clone());
        }
    }

    /// A frame from a connection.
    pub fn frame(&mut self, conn: ConnId, bytes: &[u8], now: u64) -> Vec<ServerOut> {
        self.now = now;
        let Some(c) = self.conns.get_mut(&conn) else { return Vec::new() };
        c.last_seen = now;
        let elapsed = now.saturating_sub(c.tokens_at) as f64 / 1000.0;
        c.tokens = (c.tokens + elapsed * f64::from(MESSAGES_PER_SECOND)).min(f64::from(MESSAGES_PER_SECOND));
        c.tokens_at = now;
        if c.tokens < 1.0 {
            self.error(conn, ErrorCode::RateLimited, "too many messages");
            self.out.push(ServerOut::Close(conn, "rate limited".into()));
            return std::mem::take(&mut self.out);
        }
        c.tokens -= 1.0;
        if bytes.len() > MAX_FRAME_BYTES {
            self.error(conn, ErrorCode::Malformed, "frame too large");
            self.out.push(ServerOut::Close(conn, "frame too large".into()));
            return std::mem::take(&mut self.out);
        }
        match codec::decode::<ClientMsg>(bytes) {
            Ok(msg) => self.message(conn, msg),
            Err(e) => {
                self.error(conn, ErrorCode::Malformed, format!("undecodable message: {e}"));
                self.out.push(ServerOut::Close(conn, "malformed message".into()));
            }
        }
        std::mem::take(&mut self.out)
    }

    fn message(&mut self, conn: ConnId, msg: ClientMsg) {
        let member = self.conns.get(&conn).and_then(|c| c.member);
        match (msg, member) {
            (ClientMsg::Ping, _) => self.send(conn, ServerMsg::Pong),
            (ClientMsg::Register { entries }, _) => self.register(conn, entries),
            (ClientMsg::Login { group, key, signature }, None) => self.login(conn, group, key, signature),
            (ClientMsg::Login { .. }, Some(_)) => self.error(conn, ErrorCode::Unauthorized, "already logged in"),
            (ClientMsg::Append { entry }, Some((group, key))) => self.append(conn, group, key, entry),
            (ClientMsg::Relay { envelope }, Some((group, key))) => self.relay(conn, group, key, envelope),
            (ClientMsg::OpenInvite, Some(_)) => self.open_invite(conn),
            (ClientMsg::JoinInvite { mailbox, payload }, None) => self.join_invite(conn, mailbox, payload),
            (ClientMsg::InviteMsg { mailbox, payload }, _) => self.invite_msg(conn, mailbox, payload),
            (ClientMsg::CloseInvite { mailbox }, _) => {
                if self.mailboxes.get(&mailbox).is_some_and(|m| m.inviter == conn) {
                    self.close_mailbox(mailbox);
                }
            }
            (ClientMsg::JoinInvite { .. }, Some(_)) => self.error(conn, ErrorCode::Unauthorized, "already a member"),
            (ClientMsg::GetRoster, Some((group, _))) => {
                let roster = self.groups.get(&group).map(|r| r.entries().to_vec()).unwrap_or_default();
                self.send(conn, ServerMsg::Roster { roster });
            }
            (ClientMsg::GetRoster, None) => self.error(conn, ErrorCode::Unauthorized, "log in first"),
            (ClientMsg::GetIceServers, Some((_, key))) => self.send_ice(conn, &key),
            (ClientMsg::GetIceServers, None) => self.error(conn, ErrorCode::Unauthorized, "log in first"),
            (ClientMsg::Append { .. } | ClientMsg::Relay { .. } | ClientMsg::OpenInvite, None) => {
                self.error(conn, ErrorCode::Unauthorized, "log in first");
            }
        }
    }

    fn register(&mut self, conn: ConnId, entries: Vec<RosterEntry>) {
        if entries.len() > MAX_ROSTER_ENTRIES {
            return self.error(conn, ErrorCode::BadRoster, "roster too long");
        }
        match Roster::from_entries(entries) {
            Err(e) => self.error(conn, ErrorCode::BadRoster, e.to_string()),
            Ok(roster) if self.groups.contains_key(&roster.group_id()) => {
                self.error(conn, ErrorCode::Exists, "group exists");
            }
            Ok(_) if self.groups.len() >= MAX_GROUPS => self.error(conn, ErrorCode::Full, "server is full"),
            Ok(_)
                if !self.registrations.allow(
                    self.conns.get(&conn).map(|c| c.origin).unwrap_or_default(),
                    self.now,
                    REGISTRATIONS_PER_ORIGIN,
                    REGISTRATIONS_PER_WINDOW,
                ) =>
            {
                self.error(conn, ErrorCode::RateLimited, "too many new groups from this network; try again later");
                self.out.push(ServerOut::Close(conn, "registration rate".into()));
            }
            Ok(roster) => {
                let group = roster.group_id();
                self.groups.insert(group, roster);
                self.out.push(ServerOut::Persist(group));
                self.send(conn, ServerMsg::Registered { group });
            }
        }
    }

    fn login(&mut self, conn: ConnId, group: ContentHash, key: PublicKey, signature: SignatureBytes) {
        let Some(nonce) = self.conns.get(&conn).map(|c| c.nonce) else { return };
        // Same answer for an unknown group and a non-member: learn nothing.
        let member = self.groups.get(&group).is_some_and(|r| r.is_active(&key));
        let signed =
            key.verify(LOGIN_DOMAIN, &login_message(&self.server_id, &nonce, &group, &key), &signature).is_ok();
        if !member || !signed {
            self.error(conn, ErrorCode::Unauthorized, "login refused");
            self.out.push(ServerOut::Close(conn, "login refused".into()));
            return;
        }
        // A few connections per device (its daemon and CLI commands beside
        // it); past the cap the oldest goes.
        let conns = self.online.entry(group).or_default().entry(key).or_default();
        let first = conns.is_empty();
        if !conns.contains(&conn) {
            conns.push(conn);
        }
        let evicted: Vec<ConnId> =
            if conns.len() > MAX_CONNECTIONS_PER_DEVICE { conns.drain(..1).collect() } else { Vec::new() };
        for old in evicted {
            if let Some(c) = self.conns.get_mut(&old) {
                c.member = None;
            }
            self.out.push(ServerOut::Close(old, "too many connections for this device".into()));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.member = Some((group, key));
        }
        let roster = self.groups.get(&group).map(|r| r.entries().to_vec()).unwrap_or_default();
        let online: Vec<PublicKey> = self.online[&group].keys().copied().filter(|k| *k != key).collect();
        self.send(conn, ServerMsg::Welcome { roster, online });
        self.send_ice(conn, &key);
        if first {
            self.announce(&group, ServerMsg::Online(key), Some(conn));
        }
    }

    /// The operator's ICE servers with fresh credentials for `key`, if any.
    fn send_ice(&mut self, conn: ConnId, key: &PublicKey) {
        if !self.ice.is_empty() {
            let (servers, expires_ms) = self.ice.for_device(key, self.now);
            self.send(conn, ServerMsg::IceServers { servers, expires_ms });
        }
    }

    fn append(&mut self, conn: ConnId, group: ContentHash, _key: PublicKey, entry: RosterEntry) {
        let Some(roster) = self.groups.get_mut(&group) else {
            return self.error(conn, ErrorCode::UnknownGroup, "unknown group");
        };
        if roster.entries().len() >= MAX_ROSTER_ENTRIES {
            return self.error(conn, ErrorCode::Full, "roster too long");
        }
        if let Err(e) = roster.apply(entry.clone()) {
            return self.error(conn, ErrorCode::BadRoster, e.to_string());
        }
        // Revoked devices lose their connection at once.
        let revoked: Vec<(PublicKey, Vec<ConnId>)> = self
            .online
            .get(&group)
            .map(|m| m.iter().filter(|(k, _)| !roster.is_active(k)).map(|(k, c)| (*k, c.clone())).collect())
            .unwrap_or_default();
        self.out.push(ServerOut::Persist(group));
        self.announce(&group, ServerMsg::RosterAppended(entry), None);
        for (key, conns) in revoked {
            if let Some(m) = self.online.get_mut(&group) {
                m.remove(&key);
            }
            for c in conns {
                if let Some(conn) = self.conns.get_mut(&c) {
                    conn.member = None;
                }
                self.out.push(ServerOut::Close(c, "device removed from the group".into()));
            }
            self.announce(&group, ServerMsg::Offline(key), None);
        }
    }

    fn relay(&mut self, conn: ConnId, group: ContentHash, key: PublicKey, envelope: Envelope) {
        // The server checks what it can (sender and group); the recipient
        // checks the signature, freshness and replay.
        if envelope.from != key || envelope.group != group {
            return self.error(conn, ErrorCode::Unauthorized, "an envelope must come from its sender, in its group");
        }
        // Every connection of the recipient gets it; its daemon acts on it.
        match self.online.get(&group).and_then(|m| m.get(&envelope.to)).cloned() {
            Some(targets) if !targets.is_empty() => {
                for target in targets {
                    self.send(target, ServerMsg::Relayed(envelope.clone()));
                }
            }
            _ => self.error(conn, ErrorCode::NotOnline, "recipient is not online"),
        }
    }

    /// Ends a mailbox; a joiner still connected to it is told and let go.
    fn close_mailbox(&mut self, mailbox: u32) {
        if let Some(Mailbox { joiner: Some(joiner), .. }) = self.mailboxes.remove(&mailbox) {
            self.error(joiner, ErrorCode::UnknownGroup, "the invite was closed (wrong code, declined, or done)");
            self.out.push(ServerOut::Close(joiner, "invite closed".into()));
        }
    }

    fn open_invite(&mut self, conn: ConnId) {
        let now = self.now;
        self.mailboxes.retain(|_, m| m.expires > now);
        if self.mailboxes.len() >= MAX_INVITES {
            return self.error(conn, ErrorCode::Full, "too many open invites");
        }
        let mailbox = loop {
            let n = 1000 + rand::random::<u32>() % 9000;
            if !self.mailboxes.contains_key(&n) {
                break n;
            }
        };
        self.mailboxes.insert(mailbox, Mailbox { inviter: conn, joiner: None, expires: now + INVITE_TTL_MS });
        self.send(conn, ServerMsg::InviteOpened { mailbox });
    }

    fn join_invite(&mut self, conn: ConnId, mailbox: u32, payload: Vec<u8>) {
        let now = self.now;
        let origin = self.conns.get(&conn).map(|c| c.origin).unwrap_or_default();
        if !self.invite_tries.allow(origin, now, INVITE_TRIES_PER_ORIGIN, u32::MAX) {
            self.error(conn, ErrorCode::RateLimited, "too many invite codes tried from this network; try again later");
            self.out.push(ServerOut::Close(conn, "invite guessing".into()));
            return;
        }
        // One joiner per invite: a second attempt finds nothing.
        match self.mailboxes.get_mut(&mailbox) {
            Some(m) if m.joiner.is_none() && m.expires > now => {
                m.joiner = Some(conn);
                let inviter = m.inviter;
                self.send(inviter, ServerMsg::InviteMsg { mailbox, payload });
            }
            _ => {
                self.error(conn, ErrorCode::UnknownGroup, "no such invite (expired, used, or mistyped)");
                self.out.push(ServerOut::Close(conn, "no such invite".into()));
            }
        }
    }

    fn invite_msg(&mut self, conn: ConnId, mailbox: u32, payload: Vec<u8>) {
        let other = match self.mailboxes.get(&mailbox) {
            Some(m) if m.inviter == conn => m.joiner,
            Some(m) if m.joiner == Some(conn) => Some(m.inviter),
            _ => None,
        };
        match other {
            Some(to) => self.send(to, ServerMsg::InviteMsg { mailbox, payload }),
            None => self.error(conn, ErrorCode::Unauthorized, "not part of this invite"),
        }
    }

    /// Closes connections idle longer than [`IDLE_TIMEOUT_MS`].
    pub fn tick(&mut self, now: u64) -> Vec<ServerOut> {
        self.now = now;
        self.mailboxes.retain(|_, m| m.expires > now);
        let idle: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| now.saturating_sub(c.last_seen) > IDLE_TIMEOUT_MS)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for conn in idle {
            out.push(ServerOut::Close(conn, "idle".into()));
            out.extend(self.disconnected(conn));
        }
        out
    }

    /// Groups, for persistence.
    pub fn group_ids(&self) -> BTreeSet<ContentHash> {
        self.groups.keys().copied().collect()
    }
}
