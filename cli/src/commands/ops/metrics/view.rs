//! Draws one sample onto a ratatui frame: a header, CPU (total, load, one bar per core),
//! memory and swap gauges, disks, network, temperatures and the busiest processes. It fits
//! whatever size the frame has; small terminals lose the lower panels first.

use m87_events::tunnel::metrics::MetricsSample;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Gauge, Paragraph, Row, Table};

use super::text::{bytes, percent, rate};

/// What the view shows besides the sample.
#[derive(Debug, Clone)]
pub struct Heading<'a> {
    /// The device's name.
    pub device: &'a str,
    /// The sampling interval, in milliseconds.
    pub interval_ms: u32,
}

/// Draws `sample` (or a waiting message before the first one) onto `frame`.
pub fn draw(frame: &mut Frame<'_>, heading: &Heading<'_>, sample: Option<&MetricsSample>) {
    let area = frame.area();
    let Some(sample) = sample else {
        let text = format!(
            "m87 metrics — {} — waiting for the first sample… (q quits)",
            heading.device
        );
        frame.render_widget(Paragraph::new(text), area);
        return;
    };
    let cpu_rows = core_rows(sample.cpu.cores.len(), area.width);
    // Top down: the header, CPU and memory keep their height; the panels share what is left.
    let mut rest = area;
    let head = take(&mut rest, 1);
    let cpu = take(&mut rest, cpu_rows + 3);
    let memory = take(&mut rest, 4);
    let [middle, processes] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(rest);
    frame.render_widget(Paragraph::new(header(heading, sample)), head);
    draw_cpu(frame, sample, cpu);
    draw_memory(frame, sample, memory);
    let [disks, right] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(middle);
    draw_disks(frame, sample, disks);
    let temps = u16::try_from(sample.temperatures.len().clamp(1, 6)).unwrap_or(6) + 2;
    let [network, temperatures] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(temps)]).areas(right);
    draw_network(frame, sample, network);
    draw_temperatures(frame, sample, temperatures);
    draw_processes(frame, sample, processes);
}

/// The top `height` rows of `rest` (fewer if it has fewer); `rest` keeps the others.
fn take(rest: &mut Rect, height: u16) -> Rect {
    let height = height.min(rest.height);
    let top = Rect { height, ..*rest };
    rest.y += height;
    rest.height -= height;
    top
}

fn header(heading: &Heading<'_>, sample: &MetricsSample) -> Line<'static> {
    Line::styled(
        format!(
            "m87 metrics — {} — {} — every {} ms — q quits",
            heading.device,
            sample.time.format("%Y-%m-%d %H:%M:%S UTC"),
            heading.interval_ms
        ),
        Style::default().add_modifier(Modifier::BOLD),
    )
}

/// Columns of core bars: two on a wide terminal with more than four cores.
fn core_columns(cores: usize, width: u16) -> usize {
    if cores > 4 && width >= 80 { 2 } else { 1 }
}

fn core_rows(cores: usize, width: u16) -> u16 {
    let columns = core_columns(cores, width);
    u16::try_from(cores.div_ceil(columns).min(16)).unwrap_or(16)
}

fn draw_cpu(frame: &mut Frame<'_>, sample: &MetricsSample, area: Rect) {
    let block = Block::default().borders(Borders::ALL).title(" CPU ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let mut lines = vec![Line::styled(
        format!(
            "CPU {:5.1}%   load {:.2} {:.2} {:.2}   {} cores",
            sample.cpu.total_percent,
            sample.load.one,
            sample.load.five,
            sample.load.fifteen,
            sample.cpu.cores.len()
        ),
        Style::default().add_modifier(Modifier::BOLD),
    )];
    let columns = core_columns(sample.cpu.cores.len(), inner.width);
    let rows = usize::from(core_rows(sample.cpu.cores.len(), inner.width));
    let width = usize::from(inner.width) / columns;
    for row in 0..rows {
        let mut text = String::new();
        for column in 0..columns {
            let i = column * rows + row;
            if let Some(usage) = sample.cpu.cores.get(i) {
                text.push_str(&core_bar(i, *usage, width));
            }
        }
        lines.push(Line::raw(text));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

/// `cpu0  [||||||      ]  42.0% ` in `width` columns.
fn core_bar(core: usize, usage: f32, width: usize) -> String {
    let label = format!("cpu{core:<3}");
    let bar_width = width.saturating_sub(label.len() + 11).max(1);
    let filled = ((f64::from(usage.clamp(0.0, 100.0)) / 100.0) * bar_width as f64).round() as usize;
    format!(
        "{label}[{}{}] {usage:5.1}%  ",
        "|".repeat(filled.min(bar_width)),
        " ".repeat(bar_width - filled.min(bar_width)),
    )
}

fn draw_memory(frame: &mut Frame<'_>, sample: &MetricsSample, area: Rect) {
    let block = Block::default().borders(Borders::ALL).title(" Memory ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [mem, swap] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(inner);
    let m = &sample.memory;
    frame.render_widget(
        gauge("Mem ", m.used_bytes, m.total_bytes, Color::Green),
        mem,
    );
    frame.render_widget(
        gauge("Swap", m.swap_used_bytes, m.swap_total_bytes, Color::Yellow),
        swap,
    );
}

fn gauge(name: &str, used: u64, total: u64, color: Color) -> Gauge<'static> {
    let p = percent(used, total);
    Gauge::default()
        .gauge_style(Style::default().fg(color))
        .ratio((p / 100.0).clamp(0.0, 1.0))
        .label(format!(
            "{name} {} / {} ({p:.0}%)",
            bytes(used),
            bytes(total)
        ))
}

fn draw_disks(frame: &mut Frame<'_>, sample: &MetricsSample, area: Rect) {
    let rows = sample.mounts.iter().map(|m| {
        Row::new(vec![
            m.mount_point.clone(),
            m.fs.clone(),
            format!("{:.0}%", percent(m.used_bytes, m.total_bytes)),
            bytes(m.total_bytes),
            rate(m.read_bytes_per_sec),
            rate(m.written_bytes_per_sec),
        ])
    });
    let widths = [
        Constraint::Min(8),
        Constraint::Length(6),
        Constraint::Length(4),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
    ];
    let table = Table::new(rows, widths)
        .header(bold_row(&["MOUNT", "FS", "USE", "SIZE", "READ", "WRITE"]))
        .block(Block::default().borders(Borders::ALL).title(" Disks "));
    frame.render_widget(table, area);
}

/// Wide enough for the network table's totals too.
const NETWORK_TOTALS_WIDTH: u16 = 54;

fn draw_network(frame: &mut Frame<'_>, sample: &MetricsSample, area: Rect) {
    let totals = area.width >= NETWORK_TOTALS_WIDTH;
    let rows = sample.interfaces.iter().map(|i| {
        let mut cells = vec![
            i.name.clone(),
            rate(i.rx_bytes_per_sec),
            rate(i.tx_bytes_per_sec),
        ];
        if totals {
            cells.extend([bytes(i.rx_total_bytes), bytes(i.tx_total_bytes)]);
        }
        Row::new(cells)
    });
    let mut widths = vec![
        Constraint::Min(6),
        Constraint::Length(11),
        Constraint::Length(11),
    ];
    let mut header = vec!["IFACE", "RX", "TX"];
    if totals {
        widths.extend([Constraint::Length(10), Constraint::Length(10)]);
        header.extend(["RX TOTAL", "TX TOTAL"]);
    }
    let table = Table::new(rows, widths)
        .header(bold_row(&header))
        .block(Block::default().borders(Borders::ALL).title(" Network "));
    frame.render_widget(table, area);
}

fn draw_temperatures(frame: &mut Frame<'_>, sample: &MetricsSample, area: Rect) {
    let lines: Vec<Line<'static>> = if sample.temperatures.is_empty() {
        vec![Line::raw("no temperature sensors")]
    } else {
        sample
            .temperatures
            .iter()
            .map(|t| Line::raw(format!("{:>6.1}°C  {}", t.celsius, t.label)))
            .collect()
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" Temperatures ");
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_processes(frame: &mut Frame<'_>, sample: &MetricsSample, area: Rect) {
    let rows = sample.processes.iter().map(|p| {
        Row::new(vec![
            p.pid.to_string(),
            format!("{:.1}", p.cpu_percent),
            bytes(p.memory_bytes),
            p.name.clone(),
        ])
    });
    let widths = [
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Min(10),
    ];
    let table = Table::new(rows, widths)
        .header(bold_row(&["PID", "CPU%", "MEM", "NAME"]))
        .block(Block::default().borders(Borders::ALL).title(" Processes "));
    frame.render_widget(table, area);
}

fn bold_row(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.to_vec()).style(Style::default().add_modifier(Modifier::BOLD))
}

#[cfg(test)]
mod tests {
    use m87_events::tunnel::metrics::{
        CpuSample, InterfaceSample, LoadAverage, MemorySample, MountSample, ProcessSample,
    };
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;

    fn sample() -> MetricsSample {
        MetricsSample {
            time: chrono::Utc::now(),
            elapsed_ms: 1000,
            cpu: CpuSample {
                total_percent: 12.3,
                cores: vec![10.0, 14.6],
            },
            memory: MemorySample {
                total_bytes: 4 << 30,
                used_bytes: 1 << 30,
                available_bytes: 3 << 30,
                swap_total_bytes: 0,
                swap_used_bytes: 0,
            },
            load: LoadAverage {
                one: 0.5,
                five: 0.4,
                fifteen: 0.3,
            },
            mounts: vec![MountSample {
                mount_point: "/data".into(),
                fs: "ext4".into(),
                device: "/dev/sda1".into(),
                total_bytes: 100 << 30,
                used_bytes: 40 << 30,
                read_bytes_per_sec: 0.0,
                written_bytes_per_sec: 2048.0,
            }],
            interfaces: vec![InterfaceSample {
                name: "eth0".into(),
                rx_bytes_per_sec: 1024.0,
                tx_bytes_per_sec: 0.0,
                rx_total_bytes: 1 << 20,
                tx_total_bytes: 1 << 10,
            }],
            temperatures: vec![],
            processes: vec![ProcessSample {
                pid: 4242,
                name: "robotd".into(),
                cpu_percent: 55.0,
                memory_bytes: 10 << 20,
            }],
        }
    }

    fn screen(width: u16, height: u16, sample: Option<&MetricsSample>) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        let heading = Heading {
            device: "robot-1",
            interval_ms: 1000,
        };
        terminal.draw(|f| draw(f, &heading, sample)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..height {
            for x in 0..width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn every_panel_shows_its_figures() {
        let s = sample();
        let text = screen(120, 40, Some(&s));
        for needle in [
            "robot-1",
            "CPU  12.3%",
            "load 0.50 0.40 0.30",
            "cpu0",
            "cpu1",
            "Mem  1.0 GiB / 4.0 GiB (25%)",
            "Swap",
            "/data",
            "2.0 KiB/s",
            "100 GiB",
            "eth0",
            "1.0 MiB",
            "no temperature sensors",
            "4242",
            "robotd",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }

    #[test]
    fn a_small_terminal_still_shows_the_cpu_line() {
        let s = sample();
        let text = screen(40, 12, Some(&s));
        assert!(text.contains("CPU  12.3%"), "{text}");
        let waiting = screen(80, 5, None);
        assert!(
            waiting.contains("waiting for the first sample"),
            "{waiting}"
        );
    }
}
