//! The Models view's "Limits and breakers" pane: each endpoint's breaker (state, latency, health),
//! pooled keys at rest, and the rate-limit rules' refusals, from [`super::limits::LimitsSnapshot`].

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row as TableRow, Table};
use ratatui::Frame;

use super::limits::Circuit;
use super::state::State;

/// Rows the limits pane takes: its border line, a header and one row per breaker or rule (the
/// longer list), at least 3 and at most half the view.
pub fn limits_height(state: &State, height: u16) -> u16 {
    let rows = match &state.limits {
        Some(l) if !l.breakers.is_empty() || !l.rejections.is_empty() || !l.keys.is_empty() => {
            2 + (l.breakers.len() + l.keys.len()).max(l.rejections.len())
        }
        _ => 2,
    };
    (rows.max(3) as u16).min(height / 2)
}

pub fn render_limits(state: &State, f: &mut Frame, area: Rect) {
    let title = match state.limits.as_ref().and_then(|l| l.backend.as_deref()) {
        Some(b) => format!(" Limits and breakers · limiter: {b} "),
        None => " Limits and breakers ".to_string(),
    };
    let block = Block::new().borders(Borders::TOP).title(title);
    let l = match &state.limits {
        None => {
            let p = Paragraph::new(Line::raw(" reading relay's metrics…").dim());
            f.render_widget(p.block(block), area);
            return;
        }
        Some(l) if l.breakers.is_empty() && l.rejections.is_empty() && l.keys.is_empty() => {
            let p = Paragraph::new(vec![
                Line::raw(
                    " circuit breakers: none reported yet (shown after a provider's first request)",
                )
                .dim(),
                Line::raw(" rate limits: no rejections yet").dim(),
            ]);
            f.render_widget(p.block(block), area);
            return;
        }
        Some(l) => l,
    };
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(inner);
    let head = Style::new().bold().add_modifier(Modifier::UNDERLINED);
    let breakers = l.breakers.iter().map(|(provider, b)| {
        let state = match (b.state, b.healthy) {
            (Circuit::Open, _) => Span::styled("open", Style::new().fg(Color::Red).bold()),
            (Circuit::HalfOpen, _) => Span::styled("half-open", Style::new().fg(Color::Yellow)),
            (Circuit::Closed, Some(false)) => {
                Span::styled("unhealthy", Style::new().fg(Color::Red))
            }
            (Circuit::Closed, _) => Span::raw("closed"),
        };
        let latency = b
            .latency_ms
            .map(|ms| format!("{ms:.0} ms"))
            .unwrap_or_default();
        TableRow::new(vec![
            Line::raw(format!(" {provider}")),
            Line::from(state),
            Line::raw(b.transitions.to_string()),
            Line::raw(latency),
        ])
    });
    // Pooled keys: alias or hash prefix, never the key.
    let keys = l.keys.iter().map(|(key, k)| {
        let state = if k.resting {
            Span::styled("resting", Style::new().fg(Color::Yellow))
        } else {
            Span::raw("serving")
        };
        TableRow::new(vec![
            Line::raw(format!(" {key}")),
            Line::from(state),
            Line::raw(format!("{} 429", k.rests)),
            Line::raw(""),
        ])
    });
    f.render_widget(
        Table::new(
            breakers.chain(keys),
            [
                Constraint::Fill(1),
                Constraint::Length(9),
                Constraint::Length(11),
                Constraint::Length(7),
            ],
        )
        .header(TableRow::new(vec![" provider", "breaker", "transitions", "latency"]).style(head))
        .column_spacing(1),
        left,
    );
    let rules = l
        .rejections
        .iter()
        .map(|(rule, n)| TableRow::new(vec![format!(" {rule}"), n.to_string()]));
    f.render_widget(
        Table::new(rules, [Constraint::Fill(1), Constraint::Length(8)])
            .header(TableRow::new(vec![" rule (scope/name)", "rejected"]).style(head))
            .column_spacing(1),
        right,
    );
}
