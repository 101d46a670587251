//! `psync signal`, `init`, `invite`, `join`, `devices`, `remove`: the group
//! commands, over `psync-signal` and this device's identity files.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use psync_signal::dtls::DtlsCertificate;
use psync_signal::ice::{is_ice_url, is_unsupported_turn, IcePolicy, MIN_TURN_TTL_SECS};
use psync_signal::net::{register, serve_with, tls_acceptor, ClientEvent, ServeOptions, ServerDir, SignalClient};
use psync_signal::relay::seal::ContentKey;
use psync_signal::{readable_id, DeviceKey, Roster};

use crate::data_dir::IDENTITY_FILE;
use crate::identity::{load_identity, load_roster, save_identity, save_roster};

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// What `psync signal --stun/--turn/--turn-secret-file/--turn-ttl` hands out.
pub fn ice_policy(
    stun: Vec<String>,
    turn: Vec<String>,
    secret_file: Option<&Path>,
    ttl_secs: u64,
) -> Result<IcePolicy> {
    for url in &stun {
        if !url.starts_with("stun:") || !is_ice_url(url) {
            bail!("--stun {url:?} is not a stun: URL (like stun:signal.example.org:3478)");
        }
    }
    for url in &turn {
        if !url.starts_with("turn") || !is_ice_url(url) {
            bail!("--turn {url:?} is not a turn: URL (like turn:signal.example.org:3478)");
        }
        if is_unsupported_turn(url) {
            bail!(
                "--turn {url:?}: devices relay over UDP only (their WebRTC stack skips TLS and TCP TURN); \
                 give a turn: URL over UDP (like turn:signal.example.org:3478)"
            );
        }
    }
    if ttl_secs < MIN_TURN_TTL_SECS {
        bail!("--turn-ttl {ttl_secs} is below the minimum of {MIN_TURN_TTL_SECS} seconds");
    }
    let turn_secret = match secret_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let secret = text.lines().next().unwrap_or_default().trim().to_string();
            if secret.is_empty() {
                bail!("{} holds no secret on its first line", path.display());
            }
            secret.into_bytes()
        }
        None => Vec::new(),
    };
    Ok(IcePolicy { stun, turn, turn_secret, ttl_secs })
}

/// `psync signal --listen ADDR [--tls-cert F --tls-key F] [ICE servers]`.
pub fn signal(
    data_dir: &Path,
    listen: &str,
    tls: Option<(&Path, &Path)>,
    ice: IcePolicy,
    relay: Option<(psync_signal::relay::service::RelayLocation, psync_signal::relay::policy::RelayLimits)>,
) -> Result<ExitCode> {
    let addr: std::net::SocketAddr =
        listen.parse().with_context(|| format!("--listen {listen:?} is not an address:port"))?;
    if tls.is_none() && !addr.ip().is_loopback() {
        bail!("plain ws:// is only for loopback: give --tls-cert and --tls-key to listen on {addr}, or listen on 127.0.0.1");
    }
    let acceptor = tls.map(|(cert, key)| tls_acceptor(cert, key)).transpose()?;
    let scheme = if acceptor.is_some() { "wss" } else { "ws" };
    let dir = ServerDir::new(&data_dir.join(crate::data_dir::SIGNAL_DIR))?;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        // Whoever started the server may stop reading its output: never a panic.
        let mut out = std::io::stdout();
        let _ = writeln!(out, "signalling server listening on {scheme}://{}", listener.local_addr()?);
        if !ice.is_empty() {
            let _ = writeln!(out, "handing out {} STUN and {} TURN URLs", ice.stun.len(), ice.turn.len());
        }
        if let Some((location, limits)) = &relay {
            let _ = writeln!(
                out,
                "relay storage in {location} ({} MiB per group; it stores only sealed objects)",
                limits.group_bytes >> 20
            );
        }
        let _ = out.flush();
        serve_with(listener, dir, ServeOptions { tls: acceptor, ice, relay, ..Default::default() }).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `psync init --name NAME --server URL`: a new device founding a new group.
pub fn init(data_dir: &Path, name: &str, server: &str, group_name: &str) -> Result<ExitCode> {
    psync_signal::invite::check_device_name(name)?;
    fresh_data_dir(data_dir)?;
    let key = DeviceKey::generate();
    // Made once and kept: peers pin its fingerprint from the roster.
    let dtls = DtlsCertificate::generate()?;
    let now = psync_store::Timestamp::now().secs;
    let roster = Roster::create(&key, group_name, name, &dtls.fingerprint(), now);
    let group = runtime()?
        .block_on(register(server, &roster))
        .context("cannot register the group with the signalling server")?;
    // The identity file comes last: until it exists, nothing here is an identity.
    crate::identity::update_keyring(data_dir, |ring| ring.add(ContentKey::generate(1)))?;
    save_identity(data_dir, &key, &dtls, &roster, name, server)?;
    println!(
        "device {name} ({}) created group {group_name:?} ({})",
        readable_id(&key.public().device_id()),
        &group.to_hex()[..16]
    );
    Ok(ExitCode::SUCCESS)
}

/// The data dir, checked to hold no identity yet (one device per data dir).
fn fresh_data_dir(data_dir: &Path) -> Result<()> {
    crate::data_dir::prepare(data_dir)?;
    if data_dir.join(IDENTITY_FILE).exists() {
        bail!("{} already has a device identity; use another --data-dir for another device", data_dir.display());
    }
    if let Some(aside) = crate::identity::set_aside_unfinished(data_dir)? {
        eprintln!("an earlier init or join did not finish here; what it left is kept in {}", aside.display());
    }
    // The store records every change under the device id; a device in a
    // group is known by its key, so the store must be made after it.
    if psync_store::Store::exists(data_dir) {
        bail!(
            "{} already holds a store made before this device had an identity, so it cannot sync; \
             run init/join with a fresh --data-dir, mount it, and copy the files in through the mount",
            data_dir.display()
        );
    }
    Ok(())
}

/// Logs in and returns the group's roster from the server, verified here.
async fn logged_in_roster(client: &mut SignalClient) -> Result<Roster> {
    let entries = wait_for(client, "login", |e| match e {
        ClientEvent::LoggedIn { roster, .. } => Some(roster),
        _ => None,
    })
    .await?;
    Roster::from_entries(entries).context("the server's roster does not verify")
}

/// `psync devices [--json]`: the group's devices, from the server's roster
/// (verified here), or from the local copy if the server is unreachable.
pub fn devices(data_dir: &Path, json: bool) -> Result<ExitCode> {
    let (identity, key, group) = load_identity(data_dir)?;
    let key = Arc::new(key);
    let from_server = runtime()?.block_on(async {
        let mut client = SignalClient::spawn(identity.server.clone(), group, key.clone());
        let wait = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(event) = client.events.recv().await {
                match event {
                    ClientEvent::LoggedIn { roster, online } => return Some((roster, online)),
                    ClientEvent::Refused(_) | ClientEvent::Disconnected(_) => return None,
                    _ => {}
                }
            }
            None
        });
        wait.await.ok().flatten()
    });
    let (entries, online, source) = match from_server {
        Some((entries, online)) => (entries, online, "server"),
        None => (load_roster(data_dir)?, Vec::new(), "local copy (server unreachable)"),
    };
    let roster = Roster::from_entries(entries).context("the roster does not verify")?;
    if roster.group_id() != group {
        bail!("the roster is for another group");
    }
    save_roster(data_dir, roster.entries())?;
    let mut rows = Vec::new();
    for m in roster.members() {
        rows.push(serde_json::json!({
            "name": m.name,
            "id": readable_id(&m.key.device_id()),
            "role": format!("{:?}", m.role),
            "added_by": readable_id(&m.added_by.device_id()),
            "added_at": m.added_at,
            "removed": m.removed,
            "dtls_fingerprint": m.dtls_fingerprint,
            "online": online.contains(&m.key) || m.key == key.public(),
            "this_device": m.key == key.public(),
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "group": identity.group, "source": source, "devices": rows })
            )?
        );
    } else {
        println!("group {} ({source})", &identity.group[..16]);
        for r in &rows {
            println!(
                "{:<16} {}  {:<8} {}{}",
                super::status::terminal_safe(r["name"].as_str().unwrap_or("")),
                r["id"].as_str().unwrap_or(""),
                r["role"].as_str().unwrap_or(""),
                if r["removed"].as_bool() == Some(true) {
                    "removed"
                } else if r["online"].as_bool() == Some(true) {
                    "online"
                } else {
                    "offline"
                },
                if r["this_device"].as_bool() == Some(true) { " (this device)" } else { "" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for the first event `pick` accepts; refusals and disconnections fail.
async fn wait_for<T>(
    client: &mut SignalClient,
    what: &str,
    mut pick: impl FnMut(ClientEvent) -> Option<T>,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let event = tokio::time::timeout_at(deadline, client.events.recv())
            .await
            .with_context(|| format!("timed out waiting for {what}"))?
            .context("the signalling connection ended")?;
        match event {
            ClientEvent::Refused(why) => bail!("the server refused: {why}"),
            ClientEvent::Disconnected(why) => bail!("lost the signalling server ({why}) while waiting for {what}"),
            other => {
                if let Some(value) = pick(other) {
                    return Ok(value);
                }
            }
        }
    }
}

/// `psync invite [--yes]`: prints a one-time code, waits for the new device,
/// shows it, asks for confirmation and signs it into the group.
/// With `json`, each step is one JSON line on stdout (`code`, `device`,
/// `added`) for programs such as the TUI; the answer is still read from stdin.
pub fn invite(data_dir: &Path, yes: bool, read_only: bool, json: bool) -> Result<ExitCode> {
    use psync_signal::invite::{InviteCode, InviteMessage, Pake};
    use std::io::Write;
    let (identity, key, group) = load_identity(data_dir)?;
    let key = Arc::new(key);
    runtime()?.block_on(async {
        let mut client = SignalClient::spawn(identity.server.clone(), group, key.clone());
        let mut roster = logged_in_roster(&mut client).await?;
        client.open_invite();
        let mailbox = wait_for(&mut client, "the invite mailbox", |e| match e {
            ClientEvent::InviteOpened(m) => Some(m),
            _ => None,
        })
        .await?;
        let code = InviteCode::generate(mailbox);
        // First line of stdout, alone, for scripts.
        if json {
            println!("{}", serde_json::json!({ "event": "code", "code": code.to_string(), "server": identity.server }));
        } else {
            println!("{code}");
        }
        std::io::stdout().flush()?;
        eprintln!("On the new device run: psync join {code} --name NAME --server {}", identity.server);
        eprintln!("Waiting up to 10 minutes...");
        let next_message = async |client: &mut SignalClient| -> Result<InviteMessage> {
            let bytes = wait_for(client, "the new device", |e| match e {
                ClientEvent::InviteMsg { mailbox: m, payload } if m == mailbox => Some(payload),
                _ => None,
            })
            .await?;
            Ok(InviteMessage::decode(&bytes)?)
        };
        let InviteMessage::Pake(theirs) = next_message(&mut client).await? else {
            bail!("unexpected message from the new device")
        };
        let (pake, mine) = Pake::start(&code);
        let shared = pake.finish(&theirs);
        client.invite_msg(mailbox, InviteMessage::Pake(mine).encode());
        let introduced = match shared {
            Ok(shared) => next_message(&mut client).await.and_then(|m| Ok((shared.check_introduction(&m)?, shared))),
            Err(e) => Err(e.into()),
        };
        let ((new_key, name, fingerprint), shared) = match introduced {
            Ok(ok) => ok,
            Err(e) => {
                client.close_invite(mailbox);
                tokio::time::sleep(Duration::from_millis(300)).await;
                return Err(e.context("the new device was not added; this invite is burned, run `psync invite` again"));
            }
        };
        eprintln!("New device: {name} ({}), certificate fingerprint {fingerprint}", readable_id(&new_key.device_id()));
        if json {
            let id = readable_id(&new_key.device_id());
            println!(
                "{}",
                serde_json::json!({ "event": "device", "name": name, "id": id, "fingerprint": fingerprint })
            );
            std::io::stdout().flush()?;
        }
        if !yes {
            eprint!("Add it to the group? [y/N] ");
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !answer.trim().eq_ignore_ascii_case("y") {
                client.close_invite(mailbox);
                tokio::time::sleep(Duration::from_millis(300)).await;
                bail!("not added");
            }
        }
        let now = psync_store::Timestamp::now().secs;
        let role = if read_only { psync_signal::Role::ReadOnly } else { psync_signal::Role::Full };
        let op = psync_signal::RosterOp::Add { key: new_key, name: name.clone(), role, dtls_fingerprint: fingerprint };
        let entry = roster.sign_next(&key, op, now);
        roster.apply(entry.clone()).context("cannot add the device")?;
        client.append(entry.clone());
        wait_for(&mut client, "the roster update", |e| {
            matches!(e, ClientEvent::RosterAppended(ref got) if *got == entry).then_some(())
        })
        .await?;
        let keyring = crate::identity::load_keyring(data_dir)?;
        let content_key = keyring.as_ref().and_then(|ring| ring.current());
        client.invite_msg(mailbox, shared.welcome(roster.entries().to_vec(), content_key).encode());
        client.close_invite(mailbox);
        save_roster(data_dir, roster.entries())?;
        // Let the last messages leave before the runtime stops.
        tokio::time::sleep(Duration::from_millis(300)).await;
        eprintln!("added {name} to the group");
        if json {
            println!("{}", serde_json::json!({ "event": "added", "name": name }));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `psync join CODE --name NAME --server URL`: the new device's side.
pub fn join(data_dir: &Path, code: &str, name: &str, server: &str) -> Result<ExitCode> {
    use psync_signal::invite::{InviteCode, InviteMessage, Pake};
    use psync_signal::net::JoinChannel;
    psync_signal::invite::check_device_name(name)?;
    fresh_data_dir(data_dir)?;
    let code = InviteCode::parse(code)?;
    let key = DeviceKey::generate();
    let dtls = DtlsCertificate::generate()?;
    let (roster, content_key) = runtime()?.block_on(async {
        let (pake, mine) = Pake::start(&code);
        let mut channel = JoinChannel::open(server, code.mailbox, InviteMessage::Pake(mine).encode()).await?;
        let InviteMessage::Pake(theirs) = InviteMessage::decode(&channel.recv().await?)? else {
            bail!("unexpected message from the inviting device")
        };
        let shared = pake.finish(&theirs)?;
        channel.send(shared.introduce(key.public(), name, &dtls.fingerprint()).encode()).await?;
        let answer =
            channel.recv().await.context("the inviting device did not add this device (wrong code, or declined)")?;
        let (entries, content_key) = shared.check_welcome(InviteMessage::decode(&answer)?)?;
        let roster = Roster::from_entries(entries).context("the roster from the inviting device does not verify")?;
        if !roster.is_active(&key.public()) {
            bail!("the roster does not include this device");
        }
        Ok((roster, content_key))
    })?;
    if let Some(content_key) = content_key {
        crate::identity::update_keyring(data_dir, |ring| ring.add(content_key))?;
    }
    save_identity(data_dir, &key, &dtls, &roster, name, server)?;
    println!("joined group {:?} as {name} ({})", roster.group_name(), readable_id(&key.public().device_id()));
    Ok(ExitCode::SUCCESS)
}

/// The active member `device` names (its name, or the start of its id).
fn find_member(roster: &Roster, device: &str) -> Result<(psync_signal::PublicKey, String)> {
    let wanted = device.to_ascii_uppercase();
    let matches: Vec<_> = roster
        .members()
        .filter(|m| !m.removed && (m.name == device || readable_id(&m.key.device_id()).starts_with(&wanted)))
        .map(|m| (m.key, m.name.clone()))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no active device named or with an id starting {device:?} (see `psync devices`)"),
        _ => bail!("{device:?} matches {} devices; give more of the id", matches.len()),
    }
}

/// Signs `op` as the next roster entry, has the server append it, and
/// saves the roster.
async fn append_op(
    data_dir: &Path,
    client: &mut SignalClient,
    roster: &mut Roster,
    key: &DeviceKey,
    op: psync_signal::RosterOp,
) -> Result<()> {
    let entry = roster.sign_next(key, op, psync_store::Timestamp::now().secs);
    roster.apply(entry.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    client.append(entry.clone());
    wait_for(client, "the roster update", |e| {
        matches!(e, ClientEvent::RosterAppended(ref got) if *got == entry).then_some(())
    })
    .await?;
    save_roster(data_dir, roster.entries())
}

/// `psync remove DEVICE`: revokes a device (by name or id prefix); peers
/// and the server refuse it from then on.
pub fn remove(data_dir: &Path, device: &str) -> Result<ExitCode> {
    let (identity, key, group) = load_identity(data_dir)?;
    let key = Arc::new(key);
    runtime()?.block_on(async {
        let mut client = SignalClient::spawn(identity.server.clone(), group, key.clone());
        let mut roster = logged_in_roster(&mut client).await?;
        let (target, name) = find_member(&roster, device)?;
        append_op(data_dir, &mut client, &mut roster, &key, psync_signal::RosterOp::Remove { key: target })
            .await
            .with_context(|| format!("cannot remove {name}"))?;
        println!("removed {name} ({})", readable_id(&target.device_id()));
        if crate::identity::load_keyring(data_dir)?.is_some() {
            rekey(data_dir, &identity.server, &roster, &key).await?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `psync role DEVICE --read-only|--full`: a read-only device receives
/// everything, and its changes stay on it.
pub fn set_role(data_dir: &Path, device: &str, read_only: bool) -> Result<ExitCode> {
    let (identity, key, group) = load_identity(data_dir)?;
    let key = Arc::new(key);
    let role = if read_only { psync_signal::Role::ReadOnly } else { psync_signal::Role::Full };
    runtime()?.block_on(async {
        let mut client = SignalClient::spawn(identity.server.clone(), group, key.clone());
        let mut roster = logged_in_roster(&mut client).await?;
        let (target, name) = find_member(&roster, device)?;
        append_op(data_dir, &mut client, &mut roster, &key, psync_signal::RosterOp::SetRole { key: target, role })
            .await
            .with_context(|| format!("cannot change {name}'s role"))?;
        let what = if read_only { "read-only: its changes stay on it" } else { "full: its changes reach the group" };
        println!("{name} ({}) is now {what}", readable_id(&target.device_id()));
        Ok(ExitCode::SUCCESS)
    })
}

/// After a removal: a new content key, which the removed device never
/// learns, wrapped at the relay to every remaining member (the daemon does
/// the same at its next relay check if the relay cannot be reached now).
async fn rekey(data_dir: &Path, server: &str, roster: &Roster, key: &DeviceKey) -> Result<()> {
    use psync_signal::relay::wrap::SignedWrap;
    let group = roster.group_id();
    let me = key.public();
    let wraps = crate::identity::update_keyring(data_dir, |ring| {
        let new = ring.rotate();
        let epoch = new.epoch();
        let wraps: Vec<SignedWrap> = roster
            .members()
            .filter(|m| !m.removed && m.key != me)
            .filter_map(|m| SignedWrap::make(new, &group, &m.key, key).ok())
            .collect();
        (epoch, wraps)
    })?;
    let (epoch, wraps) = wraps;
    let left = async {
        let mut relay = psync_signal::net::RelayClient::connect(server, group, key).await?;
        for wrap in wraps {
            relay.put_wrap(wrap).await?;
        }
        Ok::<(), psync_signal::net::NetError>(())
    }
    .await;
    match left {
        Ok(()) => println!("new content key (epoch {epoch}) left at the relay for the remaining devices"),
        Err(e) => println!(
            "new content key (epoch {epoch}); the relay is not reachable now ({e}): the daemon leaves it there later"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_ice_urls_are_checked_before_any_device_sees_them() {
        let turn = |url: &str| ice_policy(vec![], vec![url.into()], None, 3600);
        assert!(turn("turn:signal.example.org:3478").is_ok());
        assert!(turn("turn:signal.example.org:3478?transport=udp").is_ok());
        for skipped in ["turns:signal.example.org:5349", "turn:signal.example.org:3478?transport=tcp"] {
            let error = turn(skipped).unwrap_err().to_string();
            assert!(error.contains("over UDP only"), "{skipped}: {error}");
        }
        assert!(turn("stun:signal.example.org:3478").is_err());
        assert!(ice_policy(vec!["turn:x:3478".into()], vec![], None, 3600).is_err());
        assert!(ice_policy(vec![], vec![], None, MIN_TURN_TTL_SECS - 1).is_err());
    }
}
