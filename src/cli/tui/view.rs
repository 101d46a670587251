//! Drawing the TUI: a pure function of [`App`] onto a ratatui frame (the
//! unit tests draw onto ratatui's test backend). Fits 80x24; colours are
//! the terminal's named ones on its own background (they read on light and
//! dark themes), and with `NO_COLOR` only bold, dim and reverse are used.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Padding, Paragraph, Wrap};
use ratatui::Frame;

use super::app::{App, FolderState, InviteStep, Mode};
use super::forms::Field;
use super::wizard::{Step, Wizard};
use crate::cli::status::bytes;
use crate::control::schema::PeerStatus;

/// Colours, or none (`NO_COLOR`).
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    /// Use colours.
    pub color: bool,
}

impl Theme {
    /// From the environment: `NO_COLOR` set and not empty turns colours off.
    pub fn from_env() -> Self {
        Self { color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) }
    }

    fn paint(self, color: Color, fallback: Modifier) -> Style {
        if self.color {
            Style::default().fg(color)
        } else {
            Style::default().add_modifier(fallback)
        }
    }

    fn good(self) -> Style {
        self.paint(Color::Green, Modifier::BOLD)
    }

    fn bad(self) -> Style {
        self.paint(Color::Red, Modifier::BOLD)
    }

    fn pending(self) -> Style {
        self.paint(Color::Yellow, Modifier::empty())
    }

    fn key(self) -> Style {
        self.paint(Color::Cyan, Modifier::empty()).add_modifier(Modifier::BOLD)
    }

    fn dim(self) -> Style {
        Style::default().add_modifier(Modifier::DIM)
    }

    fn selected(self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
}

/// Draws everything.
pub fn draw(frame: &mut Frame, app: &App, theme: Theme) {
    let area = frame.area();
    match &app.mode {
        Mode::Wizard(wizard) => return wizard_screen(frame, area, wizard, theme),
        _ => dashboard(frame, area, app, theme),
    }
    match &app.mode {
        Mode::Dashboard | Mode::Wizard(_) => {}
        Mode::Invite(view) => {
            let lines = match &view.step {
                None => vec![Line::from("Opening an invite at the signalling server...")],
                Some(InviteStep::Code(code)) => vec![
                    Line::from(vec![Span::raw("Invite code: "), Span::styled(code.clone(), theme.key())]),
                    Line::from(""),
                    Line::from("On the new device: psync tui, [j] join, and type this code"),
                    Line::from(format!("(or: psync join {code} --name NAME --server URL).")),
                    Line::from(if view.read_only { "It joins read-only." } else { "It joins as a full device." }),
                    Line::from(""),
                    Line::from(vec![
                        Span::raw("Waiting for it...  "),
                        Span::styled("Esc", theme.key()),
                        Span::raw(" cancel"),
                    ]),
                ],
                Some(InviteStep::Device { name, id, fingerprint }) => {
                    let mut lines = vec![
                        Line::from("A new device asks to join:"),
                        Line::from(vec![Span::raw("  name         "), Span::styled(name.clone(), theme.key())]),
                        Line::from(format!("  id           {id}")),
                    ];
                    // "sha-256 AB:CD:...": the hash in pieces that fit 80 columns.
                    let (algorithm, hash) = fingerprint.split_once(' ').unwrap_or(("", fingerprint));
                    let chars: Vec<char> = hash.chars().collect();
                    for (i, piece) in chars.chunks(48).enumerate() {
                        let label = if i == 0 { format!("fingerprint  {algorithm}") } else { String::new() };
                        lines.push(Line::from(format!("  {label:<21}{}", piece.iter().collect::<String>())));
                    }
                    lines.push(Line::from(""));
                    lines.push(if view.answered {
                        Line::from("Signing it in...")
                    } else {
                        keys_line(&[("y", "add it to the group"), ("n", "refuse")], theme)
                    });
                    lines
                }
                Some(InviteStep::Added(name)) => vec![
                    Line::styled(format!("Added {name} to the group."), theme.good()),
                    Line::from("Press any key."),
                ],
                Some(InviteStep::Failed(why)) => {
                    vec![Line::styled(format!("The invite ended: {why}"), theme.bad()), Line::from("Press any key.")]
                }
            };
            popup(frame, area, "Invite a device", lines, theme);
        }
        Mode::Confirm(confirm) => {
            let lines = vec![
                Line::from(confirm.question.clone()),
                Line::from(""),
                keys_line(&[("y", "yes"), ("n", "no")], theme),
            ];
            popup(frame, area, "Confirm", lines, theme);
        }
        Mode::Settings(form) => {
            let mut lines = vec![Line::from("Applied to the running daemon at once and saved to its config file.")];
            for (i, field) in form.fields.iter().enumerate() {
                lines.push(field_line(field, i == form.focus, theme));
            }
            if let Some(e) = &form.error {
                lines.push(Line::styled(e.clone(), theme.bad()));
            }
            lines.push(keys_line(&[("Tab", "next"), ("Enter", "save (on the last)"), ("Esc", "cancel")], theme));
            popup(frame, area, "Settings", lines, theme);
        }
        Mode::Ignore(editor) => {
            let mut lines =
                vec![Line::from(".psyncignore (gitignore syntax; a later line wins, !pattern takes one back):")];
            if editor.lines.is_empty() {
                lines.push(Line::styled("  (no rules of its own; the built-in defaults apply)", theme.dim()));
            }
            for (i, line) in editor.lines.iter().enumerate() {
                let style =
                    if i == editor.selected && editor.adding.is_none() { theme.selected() } else { Style::default() };
                lines.push(Line::styled(format!("  {line}"), style));
            }
            if let Some(field) = &editor.adding {
                lines.push(field_line(field, true, theme));
            }
            lines.push(Line::styled(
                "Built-in defaults apply too (Obsidian's workspace files, editor swap files, OS junk): psync ignore --list",
                theme.dim(),
            ));
            lines.push(keys_line(&[("a", "add"), ("d", "delete"), ("w", "save"), ("Esc", "cancel")], theme));
            popup(frame, area, "Ignore rules", lines, theme);
        }
        Mode::HistoryPath(field) => {
            let lines = vec![
                Line::from("Whose history? A file of this folder."),
                field_line(field, true, theme),
                keys_line(&[("Enter", "show versions (empty: deleted files)"), ("Esc", "cancel")], theme),
            ];
            popup(frame, area, "File history", lines, theme);
        }
        Mode::History(view) => {
            let deleted = view.path.is_empty();
            let title = if deleted {
                "Deleted files, with their last version".to_string()
            } else {
                format!("{}: versions, oldest first", view.path)
            };
            let mut lines = vec![Line::from(title)];
            // The rows that fit, scrolled to the selection.
            let fits = usize::from(area.height.saturating_sub(8)).max(1);
            let first = view.selected.saturating_sub(fits - 1);
            for (i, row) in view.rows.iter().enumerate().skip(first).take(fits) {
                let when = crate::clock::local_time(row.committed_at.max(0) as u64 * 1000);
                let what = if deleted {
                    format!("  {}", row.path)
                } else if row.current {
                    "  (current)".into()
                } else {
                    String::new()
                };
                let text = format!("  {:>6}  {when}  {:>10}{what}", row.version, bytes(row.size));
                let style = if i == view.selected { theme.selected() } else { Style::default() };
                lines.push(Line::styled(text, style));
            }
            let enter = if deleted { "bring it back" } else { "restore this version" };
            lines.push(keys_line(&[("↑↓", "pick"), ("Enter", enter), ("Esc", "back")], theme));
            popup(frame, area, "File history", lines, theme);
        }
    }
}

/// The folders, peers, changes, held paths and conflicts.
fn dashboard(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let folder = app.folder();
    let peer_rows = folder.map_or(1, |f| (f.peers().len() * 2 + usize::from(!f.mounted())).max(1)) as u16;
    let info_lines = folder.map(|f| folder_lines(f, theme)).unwrap_or_default();
    let issue_lines = folder.map(|f| issue_lines(f, theme)).unwrap_or_default();
    let (info_rows, issues) = (info_lines.len().max(2) as u16, issue_lines.len() as u16);
    let [tabs, info, peers, changes, problems, note, hints] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(info_rows),
        Constraint::Length(peer_rows.min(10) + 1),
        Constraint::Min(3),
        Constraint::Length(if issues == 0 { 0 } else { issues.min(6) + 1 }),
        Constraint::Length(1),
        Constraint::Length(2),
    ])
    .areas(area);
    let mut spans = vec![Span::styled(" PSync ", theme.selected().add_modifier(Modifier::BOLD)), Span::raw(" ")];
    for (i, f) in app.folders.iter().enumerate() {
        let style = if i == app.current { theme.key().add_modifier(Modifier::UNDERLINED) } else { theme.dim() };
        spans.push(Span::styled(format!("[{}] {}", i + 1, f.folder.name), style));
        spans.push(Span::raw("  "));
    }
    frame.render_widget(Line::from(spans), tabs);
    let Some(folder) = folder else {
        frame.render_widget(Paragraph::new("No folder yet: press a to set one up."), info);
        frame.render_widget(hint_lines(theme), hints);
        return;
    };
    frame.render_widget(para(info_lines), info);

    let mut lines = Vec::new();
    // Scrolled so that the selected device is always in view.
    let fits = usize::from(peers.height.saturating_sub(1) / 2).max(1);
    let first = app.peer.saturating_sub(fits - 1);
    for (i, peer) in folder.peers().iter().enumerate().skip(first) {
        lines.extend(peer_lines(folder, peer, i == app.peer, theme));
    }
    if !folder.mounted() && !lines.is_empty() {
        // With no daemon, nobody knows who is online: say so once, not "offline" for each.
        lines.insert(0, Line::styled("not mounted: nothing syncs, so no live state", theme.dim()));
    }
    if lines.is_empty() {
        lines.push(Line::styled("no other devices yet: press i to invite one", theme.dim()));
    }
    frame.render_widget(para(lines).block(section("Devices")), peers);

    let feed: Vec<Line> = match folder.status.as_ref().map(|s| &s.recent_changes) {
        Some(rows) if !rows.is_empty() => rows
            .iter()
            .map(|c| {
                let when = crate::clock::local_time(c.mtime.max(0) as u64 * 1000);
                Line::from(vec![
                    Span::styled(format!("{} ", when.get(5..16).unwrap_or(&when)), theme.dim()),
                    Span::styled(format!("{:<12} ", c.who()), if c.this_device { theme.dim() } else { theme.key() }),
                    Span::raw(format!("{} {}", c.what(), c.path)),
                ])
            })
            .collect(),
        _ => vec![Line::styled("no changes yet", theme.dim())],
    };
    frame.render_widget(para(feed).block(section("Recent changes")), changes);
    if issues > 0 {
        frame.render_widget(para(issue_lines).block(section("Needs attention")), problems);
    }
    let note_line = match (&app.busy, &app.note) {
        (Some(busy), _) => Line::styled(format!("{busy}..."), theme.pending()),
        (None, Some((text, true))) => Line::styled(text.clone(), theme.bad()),
        (None, Some((text, false))) => Line::styled(text.clone(), theme.good()),
        (None, None) => Line::from(""),
    };
    frame.render_widget(para(vec![note_line]), note);
    frame.render_widget(hint_lines(theme), hints);
}

/// A paragraph of text that may come from outside (device names, paths,
/// reasons, errors): control characters, which the terminal would obey
/// (a name holding an escape sequence could rewrite the screen or more),
/// are shown escaped instead.
fn para(lines: Vec<Line<'static>>) -> Paragraph<'static> {
    let lines = lines
        .into_iter()
        .map(|mut line| {
            for span in &mut line.spans {
                if span.content.contains(char::is_control) {
                    span.content = crate::cli::status::terminal_safe(&span.content).replace('\n', "\\n").into();
                }
            }
            line
        })
        .collect::<Vec<_>>();
    Paragraph::new(lines)
}

fn hint_lines(theme: Theme) -> Paragraph<'static> {
    Paragraph::new(vec![
        keys_line(
            &[("q", "quit"), ("Tab", "folder"), ("↑↓", "device"), ("m", "mount/unmount"), ("a", "add folder")],
            theme,
        ),
        keys_line(
            &[
                ("i", "invite"),
                ("x", "remove"),
                ("o", "read-only/full"),
                ("h", "history"),
                ("s", "settings"),
                ("g", "ignore"),
            ],
            theme,
        ),
    ])
}

fn folder_lines(folder: &FolderState, theme: Theme) -> Vec<Line<'static>> {
    let mount = folder.folder.mountpoint.display().to_string();
    let Some(status) = &folder.status else {
        let text = folder.error.clone().unwrap_or_else(|| "asking the daemon...".into());
        return vec![Line::from(mount), Line::styled(text, theme.dim())];
    };
    let state = match &status.daemon {
        Some(d) if d.syncing => Span::styled("mounted, syncing", theme.good()),
        Some(_) => Span::styled("mounted, not syncing (no group)", theme.pending()),
        None => Span::styled("not mounted (m mounts it)", theme.pending()),
    };
    let server = match &status.signalling {
        Some(s) if s.connected => Span::styled("server connected", theme.good()),
        Some(_) if status.daemon.is_some() => Span::styled("server unreachable", theme.bad()),
        _ => Span::raw(""),
    };
    let l = &status.local;
    let limits = status.daemon.as_ref().map(|d| crate::cli::settings::describe(&d.settings)).unwrap_or_default();
    let read_only = if l.read_only { "  read-only device: its changes stay here" } else { "" };
    let mut lines = vec![
        Line::from(vec![Span::raw(format!("{mount}  ")), state, Span::raw("  "), server]),
        Line::styled(
            format!(
                "this device: {} {}  {} files, {}  seq {}{read_only}",
                status.device.name,
                status.device.id.split('-').next().unwrap_or(""),
                l.files,
                bytes(l.bytes),
                l.seq
            ),
            theme.dim(),
        ),
        Line::styled(limits, theme.dim()),
    ];
    if let Some(relay) = &status.relay {
        lines.push(if relay.reachable {
            Line::styled(
                format!(
                    "relay: {} changes to leave there, {} of {} held for the group",
                    relay.to_upload,
                    bytes(relay.held_bytes),
                    bytes(relay.quota_bytes)
                ),
                theme.dim(),
            )
        } else {
            let why = relay.last_error.as_deref().unwrap_or("not reached yet");
            Line::styled(format!("relay not reachable: {why}"), theme.dim())
        });
    }
    lines
}

fn peer_lines(folder: &FolderState, peer: &PeerStatus, selected: bool, theme: Theme) -> Vec<Line<'static>> {
    let marker = if selected { "> " } else { "  " };
    let name_style = if selected { theme.selected() } else { Style::default().add_modifier(Modifier::BOLD) };
    let role = if peer.role == "full" { "full" } else { "read-only" };
    let online = match (folder.mounted(), peer.online) {
        (false, _) => Span::styled("-", theme.dim()),
        (true, true) => Span::styled("online", theme.good()),
        (true, false) => Span::styled("offline", theme.dim()),
    };
    let mut first = vec![
        Span::raw(marker),
        Span::styled(format!("{:<12}", peer.name), name_style),
        Span::raw(format!(" {role:<9} ")),
        online,
    ];
    if peer.connected {
        let how = peer.path.as_ref().map_or("connected".to_string(), |p| format!("connected {}", link_words(p)));
        first.push(Span::raw(format!("  {how}")));
        if let Some(rtt) = peer.rtt_ms {
            first.push(Span::raw(format!("  RTT {rtt:.1} ms")));
        }
        first.push(Span::raw("  "));
        first.push(if peer.in_sync {
            Span::styled("in sync", theme.good())
        } else {
            Span::styled("syncing", theme.pending())
        });
    } else if peer.online {
        first.push(Span::styled("  connecting", theme.pending()));
    }
    let (up, down) = folder.rates.get(&peer.id).copied().unwrap_or((0.0, 0.0));
    let (peak_out, peak_in) = folder.peaks.get(&peer.id).copied().unwrap_or((0, 0));
    let second = Line::from(vec![
        Span::raw("    ↑ "),
        Span::raw(format!("{:<5} ", peer.outgoing_records)),
        Span::styled(bar(peak_out, peer.outgoing_records), theme.pending()),
        Span::raw(format!(" {:<11}", rate(up))),
        Span::raw("  ↓ "),
        Span::raw(format!("{:<5} ", peer.incoming_records)),
        Span::styled(bar(peak_in, peer.incoming_records), theme.pending()),
        Span::raw(format!(" {}", rate(down))),
    ]);
    vec![Line::from(first), second]
}

fn issue_lines(folder: &FolderState, theme: Theme) -> Vec<Line<'static>> {
    let Some(status) = &folder.status else { return Vec::new() };
    let mut lines = Vec::new();
    for held in &status.local.held {
        lines.push(Line::from(vec![
            Span::styled("held ", theme.pending()),
            Span::raw(format!("{}: {} (from {})", held.path, held.reason, held.from.split('-').next().unwrap_or(""))),
        ]));
    }
    for conflict in &status.conflicts {
        lines.push(Line::from(vec![Span::styled("conflict ", theme.bad()), Span::raw(conflict.clone())]));
    }
    for local in &status.local.local_only {
        lines.push(Line::from(vec![
            Span::styled("not synced ", theme.pending()),
            Span::raw(format!("{}: {}", local.path, local.reason)),
        ]));
    }
    if let Some(error) = &status.local.sync_error {
        lines.push(Line::styled(error.clone(), theme.bad()));
    }
    lines
}

/// LAN, direct (through NAT when an end is a reflexive address), or relayed.
fn link_words(path: &crate::net::path::LinkPath) -> &'static str {
    use crate::net::path::PathKind;
    let reflexive = |end: &str| end.ends_with("(srflx)") || end.ends_with("(prflx)");
    match path.kind {
        PathKind::Direct if reflexive(&path.local) || reflexive(&path.remote) => "direct via NAT",
        kind => kind.word(),
    }
}

/// `[######----]`: how much of the most that was pending is done.
fn bar(peak: u64, pending: u64) -> String {
    const WIDTH: u64 = 10;
    let done = peak.saturating_sub(pending);
    let filled = (done * WIDTH).checked_div(peak).unwrap_or(WIDTH);
    format!("[{}{}]", "#".repeat(filled as usize), "-".repeat((WIDTH - filled) as usize))
}

fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", bytes(bytes_per_sec.max(0.0) as u64))
}

fn section(title: &str) -> Block<'_> {
    Block::default().borders(Borders::TOP).title(format!(" {title} "))
}

fn keys_line(keys: &[(&str, &str)], theme: Theme) -> Line<'static> {
    let mut spans = Vec::new();
    for (key, what) in keys {
        spans.push(Span::styled(key.to_string(), theme.key()));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Line::from(spans)
}

fn field_line(field: &Field, focused: bool, theme: Theme) -> Line<'static> {
    let cursor = if focused { "_" } else { "" };
    let style = if focused { Style::default().add_modifier(Modifier::BOLD) } else { Style::default() };
    Line::from(vec![
        Span::raw(format!("{:<20} ", field.label)),
        Span::styled(format!("{}{cursor}", field.value), style),
        Span::styled(format!("  {}", field.hint), theme.dim()),
    ])
}

fn popup(frame: &mut Frame, area: Rect, title: &str, lines: Vec<Line<'static>>, _theme: Theme) {
    let width = area.width.saturating_sub(4).min(96);
    let inner = usize::from(width.saturating_sub(2)).max(1);
    // Word wrapping can take a row more than the width alone says.
    let rows: usize = lines.iter().map(|l| l.width().div_ceil(inner).max(1) + usize::from(l.width() > inner)).sum();
    let height = (rows as u16).saturating_add(2).min(area.height);
    let rect = Rect { x: area.x + (area.width - width) / 2, y: area.y + (area.height - height) / 2, width, height };
    frame.render_widget(Clear, rect);
    let block = Block::default().borders(Borders::ALL).title(format!(" {title} "));
    frame.render_widget(para(lines).wrap(Wrap { trim: false }).block(block), rect);
}

fn wizard_screen(frame: &mut Frame, area: Rect, wizard: &Wizard, theme: Theme) {
    let mut lines = vec![Line::from("")];
    let answered = |label: &str, value: &str| Line::styled(format!("  {label:<20} {value}"), theme.dim());
    match &wizard.step {
        Step::Choose => {
            lines.push(Line::from("Welcome. PSync keeps a folder the same on all your devices, peer to peer."));
            lines.push(Line::from(""));
            lines.push(keys_line(&[("f", "found a new group (this is your first device)")], theme));
            lines.push(keys_line(&[("j", "join a group with a code from one of your devices")], theme));
            lines.push(Line::from(""));
            if wizard.cancellable {
                lines.push(keys_line(&[("Esc", "back to the dashboard")], theme));
            } else {
                lines.push(keys_line(&[("q", "quit")], theme));
            }
        }
        Step::Confirm(plan) => {
            lines.push(Line::styled("This is what happens:", Style::default().add_modifier(Modifier::BOLD)));
            lines.extend(plan.lines.iter().map(|l| Line::from(format!("  {l}"))));
            lines.push(Line::from(""));
            lines.push(keys_line(&[("y", "yes, set it up"), ("Esc", "back")], theme));
        }
        Step::Working(what) => {
            lines.push(Line::styled(format!("{what}..."), theme.pending()));
            lines.push(Line::from(""));
            lines.push(keys_line(&[("Ctrl-C", "quit (what runs finishes on its own)")], theme));
        }
        _ => {
            if !wizard.has_identity {
                let choice = match wizard.choice {
                    super::wizard::Choice::Found => "found a new group",
                    super::wizard::Choice::Join => "join a group",
                };
                lines.push(answered("Setting up", choice));
                for (field, step) in
                    [(&wizard.server, Step::Server), (&wizard.name, Step::Name), (&wizard.code, Step::Code)]
                {
                    if wizard.field().is_some_and(|f| f.label == field.label) {
                        break;
                    }
                    if step != Step::Code || wizard.choice == super::wizard::Choice::Join {
                        lines.push(answered(field.label, field.text()));
                    }
                }
            }
            if let Some(field) = wizard.field() {
                lines.push(Line::from(""));
                lines.push(field_line(field, true, theme));
                lines.push(Line::from(""));
                lines.push(keys_line(&[("Enter", "next"), ("Esc", "back"), ("Ctrl-U", "clear")], theme));
            }
        }
    }
    if let Some(error) = &wizard.error {
        lines.push(Line::from(""));
        lines.push(Line::styled(error.clone(), theme.bad()));
    }
    let title = if wizard.cancellable { " Add a folder (its own group) " } else { " Set up PSync " };
    let block = Block::default().borders(Borders::ALL).padding(Padding::horizontal(1)).title(title);
    frame.render_widget(para(lines).wrap(Wrap { trim: false }).block(block), area);
}
