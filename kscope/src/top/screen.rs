//! The `kscope top` screen: a full-screen table (ratatui on crossterm),
//! redrawn by difference every refresh and after each key, so it never
//! flickers.
//!
//! The terminal is put back (raw mode off, main screen, cursor shown) by
//! [`TermGuard`]'s `Drop` on every return, by a panic hook before the panic
//! message prints, and on SIGTERM, which sets the stop flag the event loop
//! polls (raw mode turns Ctrl-C into a key, which quits too).

use std::{
    io::{self, Stdout},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row, Sparkline, Table, TableState},
};

use super::{Collector, Prog, SortKey, TopError, view};

/// Puts the terminal back.
fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// The terminal in raw mode on the alternate screen while this lives
/// (`kscope top` and `kscope fw top --watch`).
pub(crate) struct TermGuard;

impl TermGuard {
    pub(crate) fn enter() -> io::Result<Self> {
        terminal::enable_raw_mode()?;
        let guard = TermGuard;
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        Ok(guard)
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// What the screen shows besides the data.
struct Ui {
    sort: SortKey,
    filter: String,
    editing: bool,
    selected: Option<u32>,
    table: TableState,
}

/// Bytes in a short human form.
fn bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn holders(c: &Collector, p: &Prog) -> String {
    let mut s = String::new();
    for (i, &pid) in p.pids.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&String::from_utf8_lossy(c.comm(pid)));
        s.push('(');
        s.push_str(&pid.to_string());
        s.push(')');
    }
    s
}

fn draw(f: &mut ratatui::Frame<'_>, c: &Collector, ui: &mut Ui, interval: Duration) {
    let rows_view = view(c, ui.sort, &ui.filter);
    // Keep the selection on the same program across refreshes and sorts.
    let index = ui
        .selected
        .and_then(|id| rows_view.iter().position(|p| p.id == id))
        .or(if rows_view.is_empty() { None } else { Some(0) });
    ui.table.select(index);
    ui.selected = index.map(|i| rows_view[i].id);
    let [head, body, chart, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(7),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let total_cpu: f64 = c.progs().map(|p| p.cpu_pct).sum();
    f.render_widget(
        Paragraph::new(format!(
            "kscope top - {} programs, {} shown, {:.2}% of a CPU in all, every {}s, sort: {}{}",
            c.len(),
            rows_view.len(),
            total_cpu,
            interval.as_secs_f64(),
            ui.sort.name(),
            if ui.filter.is_empty() {
                String::new()
            } else {
                format!(", filter: {}", ui.filter)
            }
        )),
        head,
    );
    let header = Row::new(
        [
            "ID",
            "TYPE",
            "NAME",
            "CPU%",
            "RUNS/s",
            "AVG ns",
            "MAP MEM",
            "PROCESSES",
        ]
        .map(Cell::from),
    )
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let rows = rows_view.iter().map(|p| {
        Row::new([
            Cell::from(p.id.to_string()),
            Cell::from(p.type_name),
            Cell::from(p.name.as_str()),
            Cell::from(Line::from(format!("{:.2}", p.cpu_pct)).right_aligned()),
            Cell::from(Line::from(format!("{:.0}", p.runs_per_sec)).right_aligned()),
            Cell::from(Line::from(p.avg_ns.to_string()).right_aligned()),
            Cell::from(Line::from(bytes(p.map_bytes)).right_aligned()),
            Cell::from(holders(c, p)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(7),
            Constraint::Length(14),
            Constraint::Length(16),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Min(10),
        ],
    )
    .header(header)
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    f.render_stateful_widget(table, body, &mut ui.table);
    let sel = index.map(|i| rows_view[i]);
    let (title, data): (String, Vec<u64>) = match sel {
        Some(p) => {
            let width = usize::from(chart.width.saturating_sub(2));
            let skip = p.history.len().saturating_sub(width);
            let peak = p.history.iter().copied().max().unwrap_or(0);
            (
                format!(
                    " {} (id {}): % of a CPU per interval, peak {:.2}% ",
                    p.name,
                    p.id,
                    peak as f64 / 100.0
                ),
                p.history.iter().skip(skip).copied().collect(),
            )
        }
        None => (" no program selected ".into(), Vec::new()),
    };
    f.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(title))
            .data(&data),
        chart,
    );
    let help = if ui.editing {
        format!("filter: {}_   (Enter: keep, Esc: clear)", ui.filter)
    } else {
        "q quit  s/S sort  c r a m i n sort by cpu runs avg mem id name  / filter  up/down select"
            .into()
    };
    f.render_widget(Paragraph::new(help), foot);
}

/// What a key did.
pub(crate) enum Key {
    Quit,
    Redraw,
    Nothing,
}

/// A live full-screen view that [`live`] runs: `kscope top`, and `kscope
/// fw top --watch`.
pub(crate) trait Screen {
    type Error;
    /// A terminal error as this screen's.
    fn terminal_error(e: io::Error) -> Self::Error;
    /// Reads new numbers; called every interval.
    ///
    /// # Errors
    /// The screen's own: a failed read.
    fn refresh(&mut self) -> Result<(), Self::Error>;
    /// Draws the whole screen (ratatui writes only what changed).
    fn draw(&mut self, f: &mut ratatui::Frame<'_>);
    /// Handles a key press.
    fn key(&mut self, code: KeyCode, mods: KeyModifiers) -> Key;
}

/// Runs `screen` on the terminal: refreshed every `interval`, redrawn
/// after every key it handles and every resize, until it quits, `stop` is
/// set (SIGTERM) or `end` passes. The terminal is restored on every way
/// out ([`TermGuard`]).
///
/// # Errors
/// A terminal error, or one of `screen`'s refreshes.
pub(crate) fn live<S: Screen>(
    screen: &mut S,
    interval: Duration,
    stop: &AtomicBool,
    end: Option<Instant>,
) -> Result<(), S::Error> {
    let guard = TermGuard::enter().map_err(S::terminal_error)?;
    let mut term: Terminal<CrosstermBackend<Stdout>> =
        Terminal::new(CrosstermBackend::new(io::stdout())).map_err(S::terminal_error)?;
    let redraw = |term: &mut Terminal<CrosstermBackend<Stdout>>, screen: &mut S| {
        term.draw(|f| screen.draw(f))
            .map(drop)
            .map_err(S::terminal_error)
    };
    redraw(&mut term, screen)?;
    let mut next = Instant::now() + interval;
    loop {
        if stop.load(Ordering::Relaxed) || end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        let now = Instant::now();
        if now >= next {
            screen.refresh()?;
            redraw(&mut term, screen)?;
            next += interval;
            if next < now {
                next = now + interval;
            }
            continue;
        }
        // Wake for a key, the next refresh, or a look at the stop flag.
        let wait = (next - now).min(Duration::from_millis(100));
        if !event::poll(wait).map_err(S::terminal_error)? {
            continue;
        }
        match event::read().map_err(S::terminal_error)? {
            Event::Key(k) if k.kind != KeyEventKind::Release => {
                match screen.key(k.code, k.modifiers) {
                    Key::Quit => break,
                    Key::Redraw => redraw(&mut term, screen)?,
                    Key::Nothing => {}
                }
            }
            Event::Resize(..) => redraw(&mut term, screen)?,
            _ => {}
        }
    }
    drop(term);
    drop(guard);
    Ok(())
}

fn key(ui: &mut Ui, c: &Collector, code: KeyCode, mods: KeyModifiers) -> Key {
    if mods.contains(KeyModifiers::CONTROL) && code == KeyCode::Char('c') {
        return Key::Quit;
    }
    if ui.editing {
        match code {
            KeyCode::Enter => ui.editing = false,
            KeyCode::Esc => {
                ui.filter.clear();
                ui.editing = false;
            }
            KeyCode::Backspace => {
                ui.filter.pop();
            }
            KeyCode::Char(ch) => ui.filter.push(ch),
            _ => return Key::Nothing,
        }
        return Key::Redraw;
    }
    let step = |ui: &mut Ui, down: bool| {
        let v = view(c, ui.sort, &ui.filter);
        let Some(i) = ui.selected.and_then(|id| v.iter().position(|p| p.id == id)) else {
            ui.selected = v.first().map(|p| p.id);
            return;
        };
        let j = if down {
            (i + 1).min(v.len().saturating_sub(1))
        } else {
            i.saturating_sub(1)
        };
        ui.selected = v.get(j).map(|p| p.id);
    };
    let sort_by = |k: SortKey| move |ui: &mut Ui| ui.sort = k;
    match code {
        KeyCode::Char('q') | KeyCode::Esc => return Key::Quit,
        KeyCode::Char('s') | KeyCode::Char('S') => {
            let i = SortKey::ALL.iter().position(|&k| k == ui.sort).unwrap_or(0);
            let n = SortKey::ALL.len();
            let j = if code == KeyCode::Char('s') {
                (i + 1) % n
            } else {
                (i + n - 1) % n
            };
            ui.sort = SortKey::ALL[j];
        }
        KeyCode::Char('c') => sort_by(SortKey::Cpu)(ui),
        KeyCode::Char('r') => sort_by(SortKey::Runs)(ui),
        KeyCode::Char('a') => sort_by(SortKey::Avg)(ui),
        KeyCode::Char('m') => sort_by(SortKey::Mem)(ui),
        KeyCode::Char('i') => sort_by(SortKey::Id)(ui),
        KeyCode::Char('n') => sort_by(SortKey::Name)(ui),
        KeyCode::Char('/') => ui.editing = true,
        KeyCode::Down | KeyCode::Char('j') => step(ui, true),
        KeyCode::Up | KeyCode::Char('k') => step(ui, false),
        _ => return Key::Nothing,
    }
    Key::Redraw
}

/// `kscope top`'s screen over `c`.
struct TopScreen<'a> {
    c: &'a mut Collector,
    ui: Ui,
    interval: Duration,
}

impl Screen for TopScreen<'_> {
    type Error = TopError;

    fn terminal_error(e: io::Error) -> TopError {
        e.into()
    }

    fn refresh(&mut self) -> Result<(), TopError> {
        self.c.refresh()
    }

    fn draw(&mut self, f: &mut ratatui::Frame<'_>) {
        draw(f, self.c, &mut self.ui, self.interval);
    }

    fn key(&mut self, code: KeyCode, mods: KeyModifiers) -> Key {
        key(&mut self.ui, self.c, code, mods)
    }
}

/// Runs the screen, refreshed every `interval` and starting with `sort`
/// and `filter`, until `q`, Ctrl-C, SIGTERM (`stop`) or `end`.
pub(crate) fn run(
    c: &mut Collector,
    sort: SortKey,
    filter: &str,
    interval: Duration,
    stop: &AtomicBool,
    end: Option<Instant>,
) -> Result<(), TopError> {
    let ui = Ui {
        sort,
        filter: filter.to_owned(),
        editing: false,
        selected: None,
        table: TableState::default(),
    };
    live(&mut TopScreen { c, ui, interval }, interval, stop, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_short() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(35 * 1024 * 1024), "35.0 MiB");
    }
}
