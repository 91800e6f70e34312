//! The table every run prints: one row per figure, with its target and
//! whether it was met, as plain text for the terminal and as Markdown for
//! `docs/performance.md`.

use std::fmt::Write as _;

/// Whether a figure met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// No target: a figure reported for context.
    Info,
}

impl Verdict {
    pub fn of(met: bool) -> Verdict {
        if met { Verdict::Met } else { Verdict::Missed }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::Info => "",
        }
    }
}

/// One figure.
#[derive(Debug, Clone)]
pub struct Row {
    pub section: String,
    pub figure: String,
    pub value: String,
    pub target: String,
    pub verdict: Verdict,
}

/// Rows in the order they were measured, and free-form notes.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(
        &mut self,
        section: &str,
        figure: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        verdict: Verdict,
    ) {
        self.rows.push(Row {
            section: section.to_owned(),
            figure: figure.into(),
            value: value.into(),
            target: target.into(),
            verdict,
        });
    }

    /// A figure with no target.
    pub fn info(&mut self, section: &str, figure: impl Into<String>, value: impl Into<String>) {
        self.add(section, figure, value, "", Verdict::Info);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn extend(&mut self, other: Report) {
        self.rows.extend(other.rows);
        self.notes.extend(other.notes);
    }

    pub fn missed(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Missed)
            .count()
    }

    /// Aligned columns for a terminal.
    pub fn to_text(&self) -> String {
        let headers = ["section", "figure", "value", "target", ""];
        let cells: Vec<[&str; 5]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.section.as_str(),
                    r.figure.as_str(),
                    r.value.as_str(),
                    r.target.as_str(),
                    r.verdict.label(),
                ]
            })
            .collect();
        let mut widths = headers.map(str::len);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, row: &[&str; 5]| {
            let mut s = String::new();
            for (i, (c, w)) in row.iter().zip(widths).enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                let pad = w.saturating_sub(c.chars().count());
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            }
            let _ = writeln!(out, "{}", s.trim_end());
        };
        line(&mut out, &headers);
        line(
            &mut out,
            &widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str),
        );
        for row in &cells {
            line(&mut out, row);
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    /// A Markdown table (and the notes as a list).
    pub fn to_markdown(&self) -> String {
        let mut out =
            String::from("| section | figure | value | target | |\n|---|---|---|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.section,
                r.figure.replace('|', "\\|"),
                r.value.replace('|', "\\|"),
                r.target.replace('|', "\\|"),
                r.verdict.label()
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_markdown_carry_every_row_and_verdict() {
        let mut r = Report::new();
        r.add("catch-up", "N=10 ratio", "1.10", "<= 1.25", Verdict::Met);
        r.add("catch-up", "N=100 ratio", "1.60", "<= 1.5", Verdict::Missed);
        r.info("machine", "cores", "2");
        r.note("moto serializes requests");
        let text = r.to_text();
        assert!(text.contains("N=10 ratio") && text.contains("MISSED"));
        assert!(text.contains("note: moto serializes requests"));
        let md = r.to_markdown();
        assert_eq!(
            md.lines().filter(|l| l.starts_with("| catch-up")).count(),
            2
        );
        assert_eq!(r.missed(), 1);
    }
}
