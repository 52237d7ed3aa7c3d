//! How the TUI writes durations, counts and money in narrow columns.

/// A duration in microseconds, in at most 6 characters: `850µs`, `12ms`, `1.25s`, `2m03s`.
pub fn dur(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..10_000 => format!("{:.1}ms", us as f64 / 1e3),
        10_000..1_000_000 => format!("{}ms", us / 1_000),
        1_000_000..60_000_000 => format!("{:.2}s", us as f64 / 1e6),
        _ => format!("{}m{:02}s", us / 60_000_000, (us / 1_000_000) % 60),
    }
}

/// A count: `950`, `1.2k`, `3.4M`.
pub fn count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// Micro-USD as dollars: `$0.0123`, `$4.56`.
pub fn usd(micro: u64) -> String {
    if micro < 100_000 {
        format!("${:.4}", micro as f64 / 1e6)
    } else {
        format!("${:.2}", micro as f64 / 1e6)
    }
}
