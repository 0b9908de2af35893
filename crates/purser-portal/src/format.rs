//! How the portal writes numbers, dates and durations for people: exact
//! micro-credit integers in, text out (thousands separators, no trailing
//! zeros, never a float).

use purser_core::Timestamp;

const MICROS: i128 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Micro-credits from a canonical decimal string (`"-12.5"`, `"0.000001"`),
/// as the API renders them.
pub fn parse_micros(text: &str) -> Option<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || (fraction.is_empty() && digits.contains('.'))
        || fraction.len() > 6
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i128 = whole.parse().ok()?;
    let mut micros = whole.checked_mul(MICROS)?;
    if !fraction.is_empty() {
        let scale = 10i128.pow(6 - fraction.len() as u32);
        micros = micros.checked_add(fraction.parse::<i128>().ok()?.checked_mul(scale)?)?;
    }
    Some(if negative { -micros } else { micros })
}

/// The canonical decimal form of micro-credits (what the API writes).
pub fn canonical(micros: i128) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let magnitude = micros.unsigned_abs();
    let whole = magnitude / MICROS as u128;
    let fraction = magnitude % MICROS as u128;
    if fraction == 0 {
        format!("{sign}{whole}")
    } else {
        let digits = format!("{fraction:06}");
        format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// Micro-credits for people: `1,234.5`, `-0.25`, `12,000`.
pub fn credits(micros: i128) -> String {
    group(&canonical(micros))
}

/// Thousands separators in the whole part of a decimal string.
pub fn group(decimal: &str) -> String {
    let (sign, digits) = match decimal.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", decimal),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (digits, None),
    };
    let mut out = String::with_capacity(decimal.len() + whole.len() / 3);
    out.push_str(sign);
    for (index, digit) in whole.chars().enumerate() {
        if index > 0 && (whole.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if let Some(fraction) = fraction {
        out.push('.');
        out.push_str(fraction);
    }
    out
}

/// Micro-credits rounded to at most two decimals for compact labels
/// (`1,234.57`); exact amounts are shown wherever the number matters.
pub fn credits_short(micros: i128) -> String {
    let hundredths = (micros + micros.signum() * 5_000) / 10_000;
    credits(hundredths * 10_000)
}

/// A price in the catalog's currency: `$9`, `$19.50`, or `9 EUR`.
pub fn price(decimal: &str, currency: &str) -> String {
    let amount = match decimal.split_once('.') {
        Some((whole, fraction)) => format!("{}.{fraction:0<2}", group(whole)),
        None => group(decimal),
    };
    match currency.to_ascii_uppercase().as_str() {
        "USD" => format!("${amount}"),
        "EUR" => format!("€{amount}"),
        "GBP" => format!("£{amount}"),
        other => format!("{amount} {other}"),
    }
}

/// `Dec 1, 2026`.
pub fn date(at: Timestamp) -> String {
    let civil = at.to_civil();
    format!(
        "{} {}, {}",
        MONTHS[(civil.month - 1) as usize],
        civil.day,
        civil.year
    )
}

/// `Dec 1`: a short date for chart axes.
pub fn day_month(at: Timestamp) -> String {
    let civil = at.to_civil();
    format!("{} {}", MONTHS[(civil.month - 1) as usize], civil.day)
}

/// `Dec 1, 2026, 14:05 UTC`.
pub fn date_time(at: Timestamp) -> String {
    let civil = at.to_civil();
    let minutes = civil.time_of_day_micros / 60_000_000;
    format!("{}, {:02}:{:02} UTC", date(at), minutes / 60, minutes % 60)
}

/// `2026-12-01 14:05:09`: a sortable time for tables and CSV.
pub fn iso_seconds(at: Timestamp) -> String {
    let text = at.to_string();
    text.get(..19).unwrap_or(&text).replace('T', " ")
}

/// A coarse duration for countdowns: `6 days, 4 hours`, `3 hours`, `12 minutes`.
pub fn duration(micros: i64) -> String {
    let minutes = micros.max(0) / 60_000_000;
    let (days, hours, minutes) = (minutes / 1_440, minutes / 60 % 24, minutes % 60);
    let unit = |n: i64, one: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {one}s")
        }
    };
    match (days, hours) {
        (0, 0) => unit(minutes.max(1), "minute"),
        (0, h) => unit(h, "hour"),
        (d, 0) => unit(d, "day"),
        (d, h) => format!("{}, {}", unit(d, "day"), unit(h, "hour")),
    }
}

/// Days since 1970-01-01 of an instant (UTC).
pub fn day_number(at: Timestamp) -> i64 {
    at.micros().div_euclid(MICROS_PER_DAY)
}

/// The instant a day number starts.
pub fn day_start(day: i64) -> Timestamp {
    Timestamp::from_micros(day.saturating_mul(MICROS_PER_DAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_round_trip_and_read_well() {
        for text in [
            "0",
            "1",
            "-12.5",
            "0.000001",
            "1234567.891",
            "1000000000000",
        ] {
            assert_eq!(canonical(parse_micros(text).unwrap()), text);
        }
        for bad in ["", "-", "1.", ".5", "1.0000001", "1e3", "+1", "1,000"] {
            assert_eq!(parse_micros(bad), None, "{bad}");
        }
        assert_eq!(credits(1_234_500_000), "1,234.5");
        assert_eq!(credits(-1_000_000_000_000), "-1,000,000");
        assert_eq!(credits(999_000_000), "999");
        assert_eq!(credits(100_000_000_000), "100,000");
        assert_eq!(credits(1), "0.000001");
        assert_eq!(credits_short(1_234_567_890), "1,234.57");
        assert_eq!(credits_short(-5_000), "-0.01");
        assert_eq!(price("9", "USD"), "$9");
        assert_eq!(price("19.5", "usd"), "$19.50");
        assert_eq!(price("1200", "CHF"), "1,200 CHF");
    }

    #[test]
    fn dates_and_durations() {
        let at = Timestamp::parse_rfc3339("2026-12-01T14:05:09Z").unwrap();
        assert_eq!(date(at), "Dec 1, 2026");
        assert_eq!(date_time(at), "Dec 1, 2026, 14:05 UTC");
        assert_eq!(iso_seconds(at), "2026-12-01 14:05:09");
        assert_eq!(day_month(at), "Dec 1");
        assert_eq!(
            day_start(day_number(at)).to_string(),
            "2026-12-01T00:00:00Z"
        );
        let hour = 3_600_000_000;
        assert_eq!(duration(6 * 24 * hour + 4 * hour + 59), "6 days, 4 hours");
        assert_eq!(duration(24 * hour), "1 day");
        assert_eq!(duration(3 * hour), "3 hours");
        assert_eq!(duration(12 * 60_000_000), "12 minutes");
        assert_eq!(duration(-5), "1 minute");
    }
}
