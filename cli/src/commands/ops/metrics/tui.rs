//! The full-screen view: the terminal in raw mode on its alternate screen, redrawn on every
//! sample and on every resize, until `q`, Esc or Ctrl-C (or SIGINT, SIGTERM, SIGHUP).
//!
//! The terminal is restored on every way out: a [`TerminalGuard`] leaves the alternate screen,
//! shows the cursor and ends raw mode when dropped (an error returned, a panic unwinding), and a
//! panic hook does the same before the panic message is printed, so the message is readable.
//! Keys are read on a thread of their own that polls with a timeout, so it stops promptly when
//! the view ends; the view does not wait for it for long (see [`KEY_READER_GRACE`]). A
//! terminal that goes away (SIGHUP, or drawing fails) ends the view.

use std::io::Stdout;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen};
use m87_events::tunnel::Frame;
use m87_events::tunnel::metrics::MetricsSample;
use m87_transport::frames::write_frame;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::view::{Heading, draw};
use crate::remote::OpenedChannel;

/// How long the view waits for the key reader to stop before it restores the terminal.
const KEY_READER_GRACE: Duration = Duration::from_millis(500);

/// What the key reader saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// `q`, Esc or Ctrl-C.
    Quit,
    /// The terminal changed size (or needs repainting).
    Redraw,
}

/// Owns the terminal while the view is up; restores it when dropped.
pub struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    /// Raw mode, the alternate screen, the cursor hidden; a panic hook that restores them.
    pub fn enter() -> anyhow::Result<Self> {
        install_panic_hook();
        crossterm::terminal::enable_raw_mode().context("could not put the terminal in raw mode")?;
        let mut stdout = std::io::stdout();
        if let Err(e) = crossterm::execute!(stdout, EnterAlternateScreen) {
            restore();
            return Err(e).context("could not switch to the terminal's alternate screen");
        }
        let terminal = match Terminal::new(CrosstermBackend::new(stdout)) {
            Ok(t) => t,
            Err(e) => {
                restore();
                return Err(e).context("could not set up the terminal");
            }
        };
        let mut guard = Self { terminal };
        let _ = guard.terminal.hide_cursor();
        let _ = guard.terminal.clear();
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the alternate screen, shows the cursor, ends raw mode. Safe to call twice.
fn restore() {
    let mut stdout = std::io::stdout();
    let _ = crossterm::execute!(stdout, LeaveAlternateScreen, crossterm::cursor::Show);
    let _ = crossterm::terminal::disable_raw_mode();
}

fn install_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Shows the samples on `channel` until the user quits or `count` samples were shown; returns
/// the exit code (0 on `q`, 128 + the signal's number on a signal).
pub async fn run(
    mut channel: OpenedChannel,
    device: &str,
    interval_ms: u32,
    count: Option<u64>,
) -> anyhow::Result<i32> {
    let heading = Heading {
        device,
        interval_ms,
    };
    let mut guard = TerminalGuard::enter()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (keys_tx, mut keys) = mpsc::channel(16);
    let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let _done = done_tx; // dropped when the reader ends, however it ends
            read_keys(&keys_tx, &stop);
        });
    }
    let mut signals = Signals::new()?;
    let mut latest: Option<MetricsSample> = None;
    let mut seen = 0u64;
    let result = loop {
        if let Err(e) = guard.terminal.draw(|f| draw(f, &heading, latest.as_ref())) {
            break Err(e).context("could not draw on the terminal");
        }
        if count.is_some_and(|c| seen >= c) {
            break Ok(0);
        }
        tokio::select! {
            sample = super::next_sample(&mut channel) => match sample {
                Ok(Some(s)) => {
                    latest = Some(s);
                    seen += 1;
                }
                Ok(None) => break Err(anyhow::anyhow!("the device ended the metrics stream")),
                Err(e) => break Err(e),
            },
            key = keys.recv() => match key {
                Some(Input::Quit) => break Ok(0),
                Some(Input::Redraw) => {}
                None => break Err(anyhow::anyhow!("the terminal's input ended")),
            },
            code = signals.next() => break Ok(code),
        }
    };
    stop.store(true, Ordering::SeqCst);
    // The reader notices within its poll timeout. It is not waited for longer: when the
    // terminal has gone (a closed tmux pane, a dropped SSH link), crossterm may keep reading
    // an endless end of file and never come back; the process ends without it.
    let _ = tokio::time::timeout(KEY_READER_GRACE, done).await;
    drop(guard);
    let _ = write_frame(&mut channel.writer, &Frame::Eof).await;
    result
}

/// Reads terminal events until `stop` is set or the view has gone.
fn read_keys(keys: &mpsc::Sender<Input>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match crossterm::event::poll(Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(_) => return,
        }
        let input = match crossterm::event::read() {
            Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => match key.code {
                KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => Input::Quit,
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Input::Quit,
                _ => continue,
            },
            Ok(Event::Resize(..)) => Input::Redraw,
            Ok(_) => continue,
            Err(_) => return,
        };
        if keys.blocking_send(input).is_err() || input == Input::Quit {
            return;
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP: end the view (restoring the terminal) with 128 + the signal.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        let listen = |kind| signal(kind).context("could not listen for signals");
        Ok(Self {
            int: listen(SignalKind::interrupt())?,
            term: listen(SignalKind::terminate())?,
            hup: listen(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => 128 + 2,
            _ = self.term.recv() => 128 + 15,
            _ = self.hup.recv() => 128 + 1,
        }
    }
}
