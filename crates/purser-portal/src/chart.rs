//! Charts as inline SVG, drawn on the server. Widths are percentages of the
//! chart's box and text keeps its size, so a chart reflows from a phone to a
//! desktop without scaling its labels. Every chart has a text alternative
//! (an `aria-label` and a data table next to it). Integer geometry only.

use maud::{Markup, html};

use super::format;

/// The colour class of each usage source, in `KIND_KEYS` order.
pub const SOURCES: [(&str, &str); 5] = [
    ("budget", "Budget"),
    ("rollover", "Rollover"),
    ("package", "Packages"),
    ("promo", "Promo"),
    ("debt", "Debt"),
];

/// `12.34%` from hundredths of a percent.
fn percent(hundredths: i128) -> String {
    format!("{}.{:02}%", hundredths / 100, hundredths % 100)
}

/// One labelled bar per row, longest = full width: usage by task or member.
pub fn bars(test_id: &str, title: &str, rows: &[(String, i128)]) -> Markup {
    const ROW: i128 = 40;
    let max = rows.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let height = ROW * rows.len() as i128;
    let summary = rows
        .iter()
        .map(|(label, value)| format!("{label}: {} credits", format::credits(*value)))
        .collect::<Vec<_>>()
        .join("; ");
    html! {
        svg.chart.bars data-testid=(test_id) role="img" width="100%" height=(height)
            aria-label=(format!("{title}. {summary}")) {
            @for (index, (label, value)) in rows.iter().enumerate() {
                @let y = ROW * index as i128;
                @let width = (*value).max(0) * 10_000 / max;
                text.label x="0" y=(y + 14) { (label) }
                text.value x="100%" y=(y + 14) text-anchor="end" { (format::credits(*value)) }
                rect.track x="0" y=(y + 22) width="100%" height="10" rx="5" {}
                rect.bar x="0" y=(y + 22) width=(percent(width.max(1))) height="10" rx="5" {
                    title { (label) ": " (format::credits(*value)) " credits" }
                }
            }
        }
    }
}

/// A day of the stacked chart: its label and credits by source.
#[derive(Clone, Debug)]
pub struct Day {
    /// `Nov 3`.
    pub label: String,
    pub by_source: [i128; 5],
}

/// Columns per day, stacked by source (budget, rollover, package, promo, debt).
pub fn stacked_days(test_id: &str, title: &str, days: &[Day]) -> Markup {
    const TOP: i128 = 18;
    const PLOT: i128 = 150;
    const HEIGHT: i128 = TOP + PLOT + 26;
    let total = |day: &Day| day.by_source.iter().map(|v| (*v).max(0)).sum::<i128>();
    let max = days.iter().map(total).max().unwrap_or(0).max(1);
    let count = days.len().max(1) as i128;
    let slot = 10_000 / count;
    let bar = (slot * 7 / 10).max(1);
    let base = TOP + PLOT;
    let summary = days
        .iter()
        .filter(|day| total(day) > 0)
        .map(|day| format!("{}: {}", day.label, format::credits(total(day))))
        .collect::<Vec<_>>()
        .join("; ");
    let mut rects = Vec::new();
    for (index, day) in days.iter().enumerate() {
        let x = slot * index as i128 + (slot - bar) / 2;
        let mut top = base;
        for (source, value) in day.by_source.iter().enumerate() {
            if *value > 0 {
                let height = (value * PLOT / max).max(1);
                top -= height;
                rects.push((day, source, x, top, height, *value));
            }
        }
    }
    let label_days: Vec<usize> = match days.len() {
        0 => vec![],
        1 => vec![0],
        n => vec![0, n / 2, n - 1],
    };
    html! {
        svg.chart.days data-testid=(test_id) role="img" width="100%" height=(HEIGHT)
            aria-label=(format!("{title}. {}", if summary.is_empty() { "No usage yet".to_owned() } else { summary })) {
            line.grid x1="0" x2="100%" y1=(TOP) y2=(TOP) {}
            line.grid x1="0" x2="100%" y1=(TOP + PLOT / 2) y2=(TOP + PLOT / 2) {}
            line.axis x1="0" x2="100%" y1=(base) y2=(base) {}
            text.tick x="0" y=(TOP - 6) { (format::credits_short(max)) " credits" }
            @for (day, source, x, y, height, value) in &rects {
                rect class=(format!("bar {}", SOURCES[*source].0)) x=(percent(*x)) y=(y)
                    width=(percent(bar)) height=(height) {
                    title { (day.label) ", " (SOURCES[*source].1) ": " (format::credits(*value)) " credits" }
                }
            }
            @for index in &label_days {
                @let anchor = if *index == 0 { "start" } else if *index + 1 == days.len() { "end" } else { "middle" };
                @let x = if anchor == "start" { 0 } else if anchor == "end" { 10_000 } else { slot * *index as i128 + slot / 2 };
                text.tick x=(percent(x)) y=(base + 18) text-anchor=(anchor) { (days[*index].label) }
            }
        }
    }
}

/// The colour key of the stacked chart, for the sources that appear.
pub fn legend(present: &[bool; 5]) -> Markup {
    html! {
        ul.legend {
            @for (index, (class, name)) in SOURCES.iter().enumerate() {
                @if present[index] {
                    li { span class=(format!("swatch {class}")) aria-hidden="true" {} (name) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_row() {
        let svg = bars(
            "t",
            "By task",
            &[("Chat".into(), 5_000_000), ("Video".into(), 10_000_000)],
        )
        .into_string();
        assert!(svg.contains(r#"width="50.00%""#), "{svg}");
        assert!(svg.contains(r#"width="100.00%""#), "{svg}");
        assert!(svg.contains("Video: 10 credits"), "{svg}");
    }

    #[test]
    fn days_stack_their_sources_from_the_axis() {
        let days = [
            Day {
                label: "Nov 1".into(),
                by_source: [3_000_000, 0, 1_000_000, 0, 0],
            },
            Day {
                label: "Nov 2".into(),
                by_source: [0; 5],
            },
        ];
        let svg = stacked_days("d", "By day", &days).into_string();
        // Budget 3 of max 4 → 112 px of 150, from the axis at 168 up to 56;
        // the package part (37 px) sits on top of it.
        assert!(
            svg.contains(r#"class="bar budget" x="7.50%" y="56""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"class="bar package" x="7.50%" y="19" width="35.00%" height="37""#),
            "{svg}"
        );
        assert!(svg.contains("Nov 1: 4"), "{svg}");
        assert!(!svg.contains("Nov 2: "), "{svg}");
        let empty = stacked_days("d", "By day", &[]).into_string();
        assert!(empty.contains("No usage yet"));
    }
}
