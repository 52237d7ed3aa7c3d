//! Drawing: [`render`] is a pure function of the [`State`]; every piece of screen text is here (key
//! help comes from [`super::bindings::BINDINGS`]).

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row as TableRow, Sparkline, Table, TableState, Wrap,
};
use ratatui::Frame;

use super::actions;
use super::bindings::BINDINGS;
use super::format::{count, dur, usd};
use super::state::{table_rows, Row, State, View};
use crate::events::{CacheState, Phase, RequestEvent};

/// Draws the whole screen.
pub fn render(state: &State, f: &mut Frame) {
    let area = f.area();
    let [title, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    render_title(state, f, title);
    match state.view {
        View::Main => render_main(state, f, body),
        View::Detail => render_detail(state, f, body),
        View::Models => render_models(state, f, body),
        View::Help => render_help(state, f, body),
    }
    render_status(state, f, status);
    if let Some(p) = &state.popup {
        let r = centered(area, 90, 70);
        f.render_widget(Clear, r);
        f.render_widget(
            Paragraph::new(p.text.as_str())
                .wrap(Wrap { trim: false })
                .block(Block::bordered().title(format!(" {} ", p.title))),
            r,
        );
    }
}

fn render_title(state: &State, f: &mut Frame, area: Rect) {
    let tab = |name: &str, on: bool| {
        if on {
            Span::styled(
                format!(" {name} "),
                Style::new().add_modifier(Modifier::REVERSED),
            )
        } else {
            Span::raw(format!(" {name} "))
        }
    };
    let line = Line::from(vec![
        Span::styled(" relay ", Style::new().bold().fg(Color::Cyan)),
        Span::raw(format!("{} ", state.source)),
        Span::raw("│"),
        tab("Requests", matches!(state.view, View::Main | View::Detail)),
        tab("Models", state.view == View::Models),
        tab("Help", state.view == View::Help),
    ]);
    f.render_widget(Paragraph::new(line), area);
}

fn render_main(state: &State, f: &mut Frame, area: Rect) {
    let [totals, sparks, table] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(4),
        Constraint::Min(0),
    ])
    .areas(area);

    let t = &state.totals;
    let hit = t
        .hit_rate()
        .map(|h| format!("{h:.0}%"))
        .unwrap_or_else(|| "–".to_string());
    let lines = vec![
        Line::from(vec![
            " requests ".dim(),
            Span::raw(t.requests.to_string()),
            "  req/s ".dim(),
            Span::raw(format!("{:.1}", state.rate())),
            "  hit rate ".dim(),
            Span::raw(hit),
            "  errors ".dim(),
            Span::styled(
                t.errors.to_string(),
                if t.errors > 0 {
                    Style::new().fg(Color::Red)
                } else {
                    Style::new()
                },
            ),
            "  in flight ".dim(),
            Span::raw(state.in_flight().to_string()),
        ]),
        Line::from(vec![
            " tokens ".dim(),
            Span::raw(if t.with_tokens > 0 {
                format!("{} in / {} out", count(t.tokens_in), count(t.tokens_out))
            } else {
                "–".to_string()
            }),
            "  cost ".dim(),
            Span::raw(if t.with_cost > 0 {
                usd(t.cost_micro_usd)
            } else {
                "–".to_string()
            }),
            "  saved ".dim(),
            Span::styled(
                if t.with_cost > 0 {
                    usd(t.saved_micro_usd)
                } else {
                    "–".to_string()
                },
                Style::new().fg(Color::Green),
            ),
            // Shown once a provider's prompt cache saved something.
            if t.prompt_cache_saved_micro_usd > 0 {
                Span::styled(
                    format!("  + prompt cache {}", usd(t.prompt_cache_saved_micro_usd)),
                    Style::new().fg(Color::Green),
                )
            } else {
                Span::raw("")
            },
            if t.unpriced > 0 {
                Span::styled(
                    format!("  unpriced {}", t.unpriced),
                    Style::new().fg(Color::Yellow),
                )
            } else {
                Span::raw("")
            },
            "  dropped ".dim(),
            Span::raw(state.dropped.to_string()),
        ]),
    ];
    f.render_widget(Paragraph::new(lines), totals);

    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(sparks);
    let n = left.width.saturating_sub(2) as usize;
    let (reqs, lat) = state.series(n);
    let peak_r = reqs.iter().max().copied().unwrap_or(0);
    let peak_l = lat.iter().max().copied().unwrap_or(0);
    f.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(format!(" req/s · peak {peak_r} ")))
            .data(&reqs)
            .style(Style::new().fg(Color::Cyan)),
        left,
    );
    let lat = &lat[lat
        .len()
        .saturating_sub(right.width.saturating_sub(2) as usize)..];
    f.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(format!(" latency ms · peak {peak_l} ")))
            .data(lat)
            .style(Style::new().fg(Color::Yellow)),
        right,
    );
    render_table(state, f, table);
}

fn render_table(state: &State, f: &mut Frame, area: Rect) {
    let visible = state.visible();
    let wide = area.width >= 100;
    let header = TableRow::new(vec![
        "",
        "time",
        "meth",
        "provider",
        "model",
        if wide { "path" } else { "" },
        "st",
        "cache",
        "latency",
        "ttfb",
        "tokens",
        "cost",
    ])
    .style(Style::new().bold().add_modifier(Modifier::UNDERLINED));
    let page = table_rows(state.size.1).max(1);
    let offset = if state.follow && state.selected.is_none() {
        visible.len().saturating_sub(page)
    } else {
        state.offset.min(visible.len().saturating_sub(1))
    };
    let rows = visible
        .iter()
        .skip(offset)
        .take(page.max(area.height as usize))
        .map(|r| table_row(state, r));
    let widths = [
        Constraint::Length(1),
        Constraint::Length(8),
        Constraint::Length(4),
        Constraint::Length(if wide { 9 } else { 6 }),
        Constraint::Fill(1),
        // The path on wide screens only (an agent's rows differ there: messages, count_tokens).
        if wide {
            Constraint::Fill(1)
        } else {
            Constraint::Length(0)
        },
        Constraint::Length(3),
        Constraint::Length(if wide { 7 } else { 5 }),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(if wide { 11 } else { 9 }),
        Constraint::Length(8),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("›");
    let mut ts = TableState::default();
    if let Some(i) = state.selected_index(&visible) {
        if i >= offset {
            ts.select(Some(i - offset));
        }
    }
    if visible.is_empty() {
        let msg = if state.is_empty() {
            "  waiting for requests…"
        } else {
            "  no request matches the filter"
        };
        let [h, rest] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
        f.render_widget(table, h);
        f.render_widget(Paragraph::new(msg).dim(), rest);
        return;
    }
    f.render_stateful_widget(table, area, &mut ts);
}

fn table_row<'a>(state: &State, r: &Row) -> TableRow<'a> {
    let ev = &r.ev;
    let wide = state.size.0 >= 100;
    let replayed = ev.detail.as_ref().is_some_and(|d| {
        d.request_headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(super::actions::REPLAY_HEADER))
    });
    let (marker, latency) = if r.in_flight() {
        let so_far = state.now_ms.saturating_sub(ev.time_ms) * 1000;
        ("▶", format!("{}…", dur(so_far)))
    } else if r.unsure {
        ("?", "?".into())
    } else if replayed {
        ("↻", ev.latency_us.map(dur).unwrap_or_else(|| "–".into()))
    } else {
        (" ", ev.latency_us.map(dur).unwrap_or_else(|| "–".into()))
    };
    let status_style = match ev.status {
        s if s >= 500 || (ev.phase == Phase::End && ev.status == 499) => {
            Style::new().fg(Color::Red)
        }
        s if s >= 400 => Style::new().fg(Color::Yellow),
        _ => Style::new().fg(Color::Green),
    };
    let cache = ev
        .cache
        .map(|c| {
            if wide {
                c.as_str()
            } else {
                match c {
                    CacheState::Hit => "HIT",
                    CacheState::Miss => "MISS",
                    CacheState::Bypass => "BYP",
                    CacheState::Refresh => "REFR",
                }
            }
        })
        .unwrap_or("-");
    let cache_style = match ev.cache {
        Some(CacheState::Hit) => Style::new().fg(Color::Green),
        _ => Style::new(),
    };
    TableRow::new(vec![
        Cell::from(marker).style(Style::new().fg(Color::Cyan)),
        Cell::from(clock(ev.time_ms)),
        Cell::from(ev.method.clone()),
        Cell::from(ev.provider.clone().unwrap_or_else(|| "-".into())),
        Cell::from(ev.model.clone().unwrap_or_else(|| "-".into())),
        Cell::from(if wide { ev.path.clone() } else { String::new() }).dim(),
        Cell::from(match ev.status {
            0 => "…".to_string(),
            s => s.to_string(),
        })
        .style(status_style),
        Cell::from(cache).style(cache_style),
        Cell::from(latency),
        Cell::from(ev.ttfb_us.map(dur).unwrap_or_else(|| "–".into())),
        Cell::from(tokens(ev)),
        cost_cell(ev),
    ])
}

/// A row's cost: `unpriced` (yellow) when its model has no price, else the cost or `–`.
fn cost_cell(ev: &RequestEvent) -> Cell<'static> {
    if ev.unpriced {
        return Cell::from("unpriced").style(Style::new().fg(Color::Yellow));
    }
    Cell::from(ev.cost_micro_usd.map(usd).unwrap_or_else(|| "–".into()))
}

fn render_detail(state: &State, f: &mut Frame, area: Rect) {
    let Some(row) = state.selected_row() else {
        f.render_widget(Paragraph::new("  no request selected").dim(), area);
        return;
    };
    let text = detail_text(row);
    let title = format!(" {} {} ", row.ev.method, row.ev.path);
    f.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .scroll((state.detail_scroll, 0))
            .block(Block::new().borders(Borders::TOP).title(title)),
        area,
    );
}

/// The detail view's text for one request.
pub fn detail_text(row: &Row) -> Text<'static> {
    let (ev, in_flight) = (&*row.ev, row.in_flight());
    let mut lines: Vec<Line<'static>> = Vec::new();
    let kv =
        |k: &str, v: String| Line::from(vec![Span::raw(format!("{k:<12}")).dim(), Span::raw(v)]);
    let section = |t: &str| {
        Line::from(Span::styled(
            format!("── {t} "),
            Style::new().bold().fg(Color::Cyan),
        ))
    };
    lines.push(kv(
        "request id",
        format!("{}   at {} UTC", ev.request_id, clock(ev.time_ms)),
    ));
    lines.push(kv(
        "route",
        format!(
            "{} · {}",
            ev.provider.as_deref().unwrap_or("-"),
            ev.model.as_deref().unwrap_or("-")
        ),
    ));
    if let Some(session) = &ev.session {
        lines.push(kv(
            "session",
            format!("{session}   (filter: session:{session})"),
        ));
    }
    let mut status = match ev.status {
        0 => "waiting for the upstream's response headers".to_string(),
        s => s.to_string(),
    };
    if let Some(e) = &ev.error {
        status.push_str(&format!(" (relay error {e})"));
    }
    if in_flight {
        status.push_str(" · in flight");
    } else if row.unsure {
        status.push_str(" · end not seen (the dashboard fell behind and the feed dropped events)");
    } else if let Some(o) = &ev.outcome {
        status.push_str(&format!(" · {o}"));
    }
    lines.push(kv("status", status));
    lines.push(kv(
        "cache",
        match (ev.cache, &ev.cache_key) {
            (Some(c), Some(k)) => format!("{} · key {k}", c.as_str()),
            (Some(c), None) => c.as_str().to_string(),
            (None, _) => "not cacheable".to_string(),
        },
    ));
    let opt = |d: Option<u64>| d.map(dur).unwrap_or_else(|| "–".into());
    lines.push(kv(
        "timing",
        format!(
            "upstream headers {} · first byte {} · total {}",
            opt(ev.upstream_us),
            opt(ev.ttfb_us),
            opt(ev.latency_us),
        ),
    ));
    lines.push(kv(
        "size",
        format!("{} B in · {} B out", ev.bytes_in, ev.bytes_out),
    ));
    lines.push(kv(
        "usage",
        format!(
            "tokens {} · cost {} · saved {}",
            tokens(ev),
            ev.cost_micro_usd.map(usd).unwrap_or_else(|| "–".into()),
            ev.saved_micro_usd.map(usd).unwrap_or_else(|| "–".into()),
        ),
    ));
    if let Some(p) = ev.prompt_cache_saved_micro_usd {
        lines.push(kv(
            "prompt cache",
            format!(
                "{} tokens read from the provider's cache saved {}",
                ev.tokens_cached.unwrap_or(0),
                usd(p)
            ),
        ));
    }
    if !ev.attempts.is_empty() {
        lines.push(kv("retries", ev.attempts.join(" · ")));
    }
    if ev.unpriced {
        lines.push(kv(
            "price",
            "none for this model: counted at $0 (`relay prices`; add it under models: in the config)"
                .to_string(),
        ));
    }
    let Some(d) = &ev.detail else {
        lines.push(Line::raw(""));
        lines.push(Line::raw(if in_flight {
            "headers and bodies appear when the response ends"
        } else if row.unsure {
            "headers and bodies come with the response's end, which was not seen"
        } else if row.detail_dropped {
            "headers and bodies let go: the dashboard keeps the newest 64 MiB of them"
        } else {
            "headers and bodies were not captured (the request began before the dashboard subscribed)"
        }).dim());
        return Text::from(lines);
    };
    let headers = |lines: &mut Vec<Line<'static>>, h: &[(String, String)]| {
        for (k, v) in h {
            lines.push(Line::from(vec![
                Span::raw(format!("{k}: ")).fg(Color::Blue),
                Span::raw(v.clone()),
            ]));
        }
    };
    let cut = |lines: &mut Vec<Line<'static>>, truncated: bool| {
        if truncated {
            lines.push(Line::raw("… (cut: relay keeps the first 64 KiB)").dim());
        }
    };
    lines.push(Line::raw(""));
    lines.push(section("Request headers"));
    headers(&mut lines, &d.request_headers);
    lines.push(section("Request body"));
    lines.extend(
        actions::pretty(&d.request_body)
            .lines()
            .map(|l| Line::raw(l.to_string())),
    );
    cut(&mut lines, d.request_truncated);
    lines.push(section("Response headers"));
    headers(&mut lines, &d.response_headers);
    match actions::assemble_sse(&d.response_body) {
        Some((text, events)) => {
            lines.push(section("Response text (assembled from the stream)"));
            lines.extend(text.lines().map(|l| Line::raw(l.to_string())));
            lines.push(section(&format!("Response events ({})", events.len())));
            lines.extend(events.into_iter().map(Line::raw));
        }
        None => {
            lines.push(section("Response body"));
            lines.extend(
                actions::pretty(&d.response_body)
                    .lines()
                    .map(|l| Line::raw(l.to_string())),
            );
        }
    }
    cut(&mut lines, d.response_truncated);
    Text::from(lines)
}

fn render_models(state: &State, f: &mut Frame, area: Rect) {
    let [models, keys, limits] = Layout::vertical([
        Constraint::Min(0),
        Constraint::Length(super::per_key::height(state, area.height / 3)),
        Constraint::Length(super::limits_pane::limits_height(state, area.height)),
    ])
    .areas(area);
    // The prompt-cache column once a provider's prompt cache saved something.
    let prompt = state
        .models
        .values()
        .any(|m| m.totals.prompt_cache_saved_micro_usd > 0);
    let mut names = vec![
        "model", "reqs", "errs", "hit", "tok in", "tok out", "cost", "saved", "avg lat",
    ];
    if prompt {
        names.insert(8, "p-cache");
    }
    let header = TableRow::new(names).style(Style::new().bold().add_modifier(Modifier::UNDERLINED));
    let rows = state.models.iter().map(|(name, m)| {
        let t = &m.totals;
        let mut cells = vec![
            name.clone(),
            t.requests.to_string(),
            t.errors.to_string(),
            t.hit_rate()
                .map(|h| format!("{h:.0}%"))
                .unwrap_or_else(|| "–".into()),
            count(t.tokens_in),
            count(t.tokens_out),
            if t.unpriced > 0 && t.cost_micro_usd == 0 {
                "unpriced".to_string()
            } else {
                usd(t.cost_micro_usd)
            },
            usd(t.saved_micro_usd),
            t.latency_us_sum
                .checked_div(t.requests)
                .map(dur)
                .unwrap_or_else(|| "–".into()),
        ];
        if prompt {
            cells.insert(8, usd(t.prompt_cache_saved_micro_usd));
        }
        TableRow::new(cells)
    });
    let mut widths = vec![
        Constraint::Fill(1),
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(4),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(7),
    ];
    if prompt {
        widths.insert(8, Constraint::Length(8));
    }
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .block(Block::new().borders(Borders::TOP).title(" Per model "));
    f.render_widget(table, models);
    super::per_key::render(state, f, keys);
    super::limits_pane::render_limits(state, f, limits);
}

fn render_help(state: &State, f: &mut Frame, area: Rect) {
    let mut lines: Vec<Line<'static>> = BINDINGS
        .iter()
        .filter(|b| !b.label.is_empty())
        .map(|b| {
            Line::from(vec![
                Span::styled(format!(" {:<10}", b.label), Style::new().bold()),
                Span::raw(b.help),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::raw(" filter terms, all must match:"));
    lines.push(Line::raw(
        "   model:x provider:x status:200|4xx|err cache:hit|miss|bypass|refresh|none",
    ));
    lines.push(Line::raw(
        "   or any text (path, model, provider, request id)",
    ));
    if let Some(p) = &state.log_path {
        lines.push(Line::raw(format!(" logs: {p}")));
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::new().borders(Borders::TOP).title(" Keys ")),
        area,
    );
}

fn render_status(state: &State, f: &mut Frame, area: Rect) {
    let mut left: Vec<Span> = Vec::new();
    if let Some(input) = &state.filter_input {
        left.push(Span::styled(
            format!(" /{input}▏"),
            Style::new().fg(Color::Yellow),
        ));
        left.push(" Enter apply · Esc cancel".dim());
    } else if state.view == View::Detail {
        left.push(" j/k scroll · e curl · r replay".dim());
        if let Some(s) = &state.status {
            left.push(Span::raw(format!("  {s}")));
        }
    } else {
        if state.paused {
            left.push(Span::styled(
                format!(" PAUSED ({} held) ", state.held()),
                Style::new().fg(Color::Black).bg(Color::Yellow),
            ));
        } else if state.follow && state.view == View::Main {
            left.push(" FOLLOW ".reversed());
        }
        if !state.filter.is_empty() {
            left.push(Span::styled(
                format!(" filter: {} ", state.filter.text),
                Style::new().fg(Color::Yellow),
            ));
        }
        if state.sort != super::state::Sort::Arrival {
            left.push(Span::raw(format!(" sort: {} ", state.sort.label())));
        }
        let shown = state.visible().len();
        left.push(format!(" {shown}/{} rows ", state.len()).dim());
        if let Some(s) = &state.status {
            left.push(Span::raw(format!(" {s}")));
        }
    }
    let right = if state.view == View::Main {
        " ? help · q quit "
    } else {
        " ? help · q back "
    };
    let [l, r] = Layout::horizontal([Constraint::Min(0), Constraint::Length(right.len() as u16)])
        .areas(area);
    f.render_widget(Paragraph::new(Line::from(left)), l);
    f.render_widget(Paragraph::new(right).dim(), r);
}

fn centered(area: Rect, pct_x: u16, pct_y: u16) -> Rect {
    let [_, v, _] = Layout::vertical([
        Constraint::Percentage((100 - pct_y) / 2),
        Constraint::Percentage(pct_y),
        Constraint::Percentage((100 - pct_y) / 2),
    ])
    .areas(area);
    let [_, h, _] = Layout::horizontal([
        Constraint::Percentage((100 - pct_x) / 2),
        Constraint::Percentage(pct_x),
        Constraint::Percentage((100 - pct_x) / 2),
    ])
    .areas(v);
    h
}

/// `HH:MM:SS` (UTC) of a Unix time in milliseconds.
pub fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

fn tokens(ev: &RequestEvent) -> String {
    match (ev.tokens_in, ev.tokens_out) {
        // A running stream: its output so far, estimated.
        (None, None) if ev.tokens_live.is_some() => {
            format!("…/~{}", count(ev.tokens_live.unwrap_or(0)))
        }
        (None, None) => "–".to_string(),
        (i, o) => format!(
            "{}/{}",
            i.map(count).unwrap_or_else(|| "?".into()),
            o.map(count).unwrap_or_else(|| "?".into())
        ),
    }
}
