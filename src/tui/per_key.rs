//! The Models view's "Per key" table: requests, errors, tokens and cost by the key each request
//! was booked to (a relay key's name, an alias, `key-<hash prefix>`; never a key), from the live
//! feed, with what is left of each budgeted key's budget (`relay_budget_used_ratio`, read with
//! the limits pane's metrics).

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::widgets::{Block, Borders, Row as TableRow, Table};
use ratatui::Frame;

use super::format::{count, usd};
use super::state::State;

/// Rows the table takes: none while every request is booked to no key; else its border line, a
/// header and one row per key, at most `max`.
pub fn height(state: &State, max: u16) -> u16 {
    let keys = state.keys.keys().filter(|k| *k != "none").count();
    if keys == 0 {
        return 0;
    }
    ((2 + keys) as u16).min(max)
}

pub fn render(state: &State, f: &mut Frame, area: Rect) {
    if area.height == 0 {
        return;
    }
    let header = TableRow::new(["key", "reqs", "errs", "tok in", "tok out", "cost", "budget"])
        .style(Style::new().bold().add_modifier(Modifier::UNDERLINED));
    let budgets = state.limits.as_ref().map(|l| &l.budgets);
    let rows = state
        .keys
        .iter()
        .filter(|(k, _)| *k != "none")
        .map(|(name, m)| {
            let t = &m.totals;
            let left = budgets
                .and_then(|b| b.get(name))
                .map(|used| format!("{:.0}% left", ((1.0 - used) * 100.0).clamp(0.0, 100.0)))
                .unwrap_or_else(|| "–".into());
            TableRow::new(vec![
                name.clone(),
                t.requests.to_string(),
                t.errors.to_string(),
                count(t.tokens_in),
                count(t.tokens_out),
                usd(t.cost_micro_usd),
                left,
            ])
        });
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(9),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .block(Block::new().borders(Borders::TOP).title(" Per key "));
    f.render_widget(table, area);
}
