//! Aligned text tables for the CLI's answers (`relay usage`, `relay prices`).

/// `rows` in columns two spaces apart: the first `left` columns left-aligned, the others
/// right-aligned, trailing spaces trimmed; with `total`, a dashed rule before the last row.
pub fn aligned(rows: &[Vec<String>], left: usize, total: bool) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (j, r) in rows.iter().enumerate() {
        if total && j + 1 == rows.len() {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * n.saturating_sub(1)));
            out.push('\n');
        }
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let pad = " ".repeat(widths[i] - c.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if i < left {
                line.push_str(c);
                line.push_str(&pad);
            } else {
                line.push_str(&pad);
                line.push_str(c);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
