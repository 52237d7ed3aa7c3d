//! What `relay cache` prints: the `ls` table, `show`, `stats` and `why` texts, and the sizes,
//! ages and counts in them.

use super::*;

/// `relay cache why`: the miss, then what would replay it and what is nearest.
pub(super) fn render_why(why: &serde_json::Value) -> String {
    let text = |k: &str| why[k].as_str().unwrap_or("-").to_string();
    let mut out = format!(
        "request {}: {} {} ({}) missed at {}\nkey       {}\n",
        text("request_id"),
        text("method"),
        text("path"),
        text("provider"),
        text("at"),
        text("key"),
    );
    match why["portable_match"].as_str() {
        Some(k) => {
            let _ = writeln!(
                out,
                "portable  {k} would replay it offline (it differs only in dates, directories, git status or OS)"
            );
        }
        None => out.push_str("portable  no recording has its portable form\n"),
    }
    let near = &why["nearest"];
    if near.is_null() {
        out.push_str("nearest   no recording of the same endpoint and key scope\n");
        return out;
    }
    let _ = writeln!(
        out,
        "nearest   {} (recorded {})",
        near["key"].as_str().unwrap_or("-"),
        near["recorded"].as_str().unwrap_or("-")
    );
    let differs: Vec<&str> = near["differs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if differs.is_empty() {
        out.push_str("          same body: it differs in its request line or scope only\n");
    }
    for p in differs {
        let _ = writeln!(out, "  differs {p}");
    }
    if let Some(n) = near["more"].as_u64().filter(|n| *n > 0) {
        let _ = writeln!(out, "  and {n} more");
    }
    out
}

/// `1 entry`, `3 entries`.
pub(super) fn entries(n: usize) -> String {
    if n == 1 {
        "1 entry".to_owned()
    } else {
        format!("{n} entries")
    }
}

/// The `ls` table.
pub(super) fn render_ls(rows: &[EntrySummary], model: Option<&str>, now_ms: u64) -> String {
    if rows.is_empty() {
        return match model {
            Some(m) => format!("no cache entries for model {m}\n"),
            None => "no cache entries\n".to_owned(),
        };
    }
    let header = [
        "KEY", "PROVIDER", "MODEL", "AGE", "SIZE", "HITS", "CLIENT", "SESSION", "REQUEST", "PROMPT",
    ];
    let or_dash = |v: &Option<String>, max: usize| match v {
        Some(v) if v.chars().count() > max => {
            let mut s: String = v.chars().take(max - 1).collect();
            s.push('…');
            s
        }
        Some(v) => v.clone(),
        None => "-".into(),
    };
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.short.clone(),
                r.provider.clone(),
                r.model.clone().unwrap_or_else(|| "-".into()),
                format_span(now_ms.saturating_sub(r.created_ms)),
                format_size(r.size),
                r.hits.to_string(),
                or_dash(&r.client, 24),
                or_dash(&r.session, 16),
                format!("{} {}", r.method, r.path),
                r.prompt
                    .as_ref()
                    .map(|p| format!("\"{}\"", or_dash(&Some(p.clone()), 40)))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    // Text columns left-aligned, numbers (age, size, hits) right-aligned; no trailing spaces.
    let right = [
        false, false, false, true, true, true, false, false, false, false,
    ];
    let line = |row: [&str; 10]| {
        let mut s = String::new();
        for (i, c) in row.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if right[i] {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i + 1 < row.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header);
    for row in &cells {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

/// The `show` text.
pub(super) fn render_show(d: &EntryDetail, now_ms: u64) -> String {
    let s = &d.summary;
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<9} {value}");
    };
    field("key", s.key.clone());
    field("provider", s.provider.clone());
    field("model", s.model.clone().unwrap_or_else(|| "-".into()));
    field("request", format!("{} {}", s.method, s.path));
    field("status", s.status.to_string());
    field("created", format_when(s.created_ms, now_ms));
    field(
        "expires",
        s.expires_ms
            .map_or_else(|| "never".to_owned(), |t| format_when(t, now_ms)),
    );
    field("size", format_size(s.size));
    field("hits", s.hits.to_string());
    if !d.headers.is_empty() {
        out.push_str("\nresponse headers:\n");
        for (k, v) in &d.headers {
            let _ = writeln!(out, "  {k}: {v}");
        }
    }
    out.push_str("\nrequest body:\n");
    push_body(&mut out, &d.request);
    match &d.response {
        ResponseView::Json { body } => {
            out.push_str("\nresponse body:\n");
            push_body(&mut out, body);
        }
        ResponseView::Sse { events } => {
            let _ = writeln!(out, "\nresponse stream ({}):", events_count(events.len()));
            for e in events {
                out.push_str(&e.data);
            }
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}

pub(super) fn events_count(n: usize) -> String {
    if n == 1 {
        "1 event".to_owned()
    } else {
        format!("{n} events")
    }
}

/// A body: pretty JSON, or its text as it was.
pub(super) fn push_body(out: &mut String, body: &serde_json::Value) {
    match body {
        serde_json::Value::String(text) => out.push_str(text),
        value => {
            out.push_str(&serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()))
        }
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
}

/// The `stats` lines.
pub(super) fn render_stats(s: &StatsView, store: &str, now_ms: u64) -> String {
    let when = |t: Option<u64>| t.map_or_else(|| "-".to_owned(), |t| format_when(t, now_ms));
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<13} {value}");
    };
    field("store", store.to_owned());
    field("backend", s.backend.clone());
    field("entries", s.entries.to_string());
    field(
        "size",
        format!("{} ({} bytes)", format_size(s.bytes), s.bytes),
    );
    field("hits", s.hits.to_string());
    field("oldest", when(s.oldest_ms));
    field("newest", when(s.newest_ms));
    field("write errors", s.write_errors.to_string());
    out
}

/// A time as RFC 3339 with how long ago (or how far ahead) it is: `2023-11-14T22:13:20Z (3m ago)`.
pub(super) fn format_when(ms: u64, now_ms: u64) -> String {
    let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms));
    if ms <= now_ms {
        format!("{at} ({} ago)", format_span(now_ms - ms))
    } else {
        format!("{at} (in {})", format_span(ms - now_ms))
    }
}

/// A span in its largest whole unit: `42s`, `3m`, `2h`, `5d`.
pub(super) fn format_span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Bytes for people: `512 B`, `1.2 KiB`, `3.4 MiB`.
pub(super) fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // 1023.96 KiB would print as "1024.0 KiB": move up a unit from there.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
