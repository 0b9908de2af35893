//! Instants and calendar-month periods, in UTC.
//!
//! The core never reads a clock: callers pass a [`Timestamp`] into every
//! command. The calendar arithmetic (days ↔ civil dates) is the classic
//! proleptic-Gregorian algorithm, exact over the years 1–9999 that RFC 3339
//! can write.

use std::fmt;

pub const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
const MICROS_PER_DAY: i64 = SECONDS_PER_DAY * MICROS_PER_SECOND;

/// An instant: microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Later than any instant the ledger deals with ("never").
    pub const NEVER: Timestamp = Timestamp(i64::MAX);
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    pub const fn from_micros(micros: i64) -> Timestamp {
        Timestamp(micros)
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    /// `None` on overflow.
    pub fn from_unix_seconds(seconds: i64) -> Option<Timestamp> {
        seconds.checked_mul(MICROS_PER_SECOND).map(Timestamp)
    }

    pub const fn unix_seconds(self) -> i64 {
        self.0.div_euclid(MICROS_PER_SECOND)
    }

    /// `None` on overflow.
    pub fn checked_add_seconds(self, seconds: i64) -> Option<Timestamp> {
        seconds
            .checked_mul(MICROS_PER_SECOND)
            .and_then(|micros| self.0.checked_add(micros))
            .map(Timestamp)
    }

    /// Microseconds from `earlier` to `self` (negative if `earlier` is later).
    pub const fn micros_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The UTC date and time of day.
    pub fn to_civil(self) -> CivilDateTime {
        let days = self.0.div_euclid(MICROS_PER_DAY);
        let time_of_day_micros = self.0.rem_euclid(MICROS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        CivilDateTime {
            year,
            month,
            day,
            time_of_day_micros,
        }
    }

    /// Parses RFC 3339 (`2026-11-01T00:00:00Z`, `…T10:00:00.5+02:00`), years
    /// 0001–9999. Fractions beyond microseconds are truncated.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        parse_rfc3339(text.as_bytes())
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with a `Z`; a fraction only when there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let civil = self.to_civil();
        let seconds = civil.time_of_day_micros / MICROS_PER_SECOND;
        let fraction = civil.time_of_day_micros % MICROS_PER_SECOND;
        if (0..=9999).contains(&civil.year) {
            // The common case, without `write!`'s integer formatting: this
            // runs for every time in every answer.
            let mut text = *b"0000-00-00T00:00:00.000000Z";
            let mut put = |at: usize, width: usize, value: i64| {
                let mut rest = value;
                for slot in text[at..at + width].iter_mut().rev() {
                    *slot = b'0' + (rest % 10) as u8;
                    rest /= 10;
                }
            };
            put(0, 4, civil.year);
            put(5, 2, i64::from(civil.month));
            put(8, 2, i64::from(civil.day));
            put(11, 2, seconds / 3600);
            put(14, 2, seconds / 60 % 60);
            put(17, 2, seconds % 60);
            let end = if fraction == 0 {
                text[19] = b'Z';
                20
            } else if fraction % 1000 == 0 {
                put(20, 3, fraction / 1000);
                text[23] = b'Z';
                24
            } else {
                put(20, 6, fraction);
                27
            };
            return f.write_str(std::str::from_utf8(&text[..end]).map_err(|_| fmt::Error)?);
        }
        self.write_plain(f)
    }
}

impl Timestamp {
    /// RFC 3339 with `write!`: years outside 0-9999, and the reference the
    /// fast path of `Display` is tested against.
    fn write_plain(self, out: &mut impl fmt::Write) -> fmt::Result {
        let civil = self.to_civil();
        let seconds = civil.time_of_day_micros / MICROS_PER_SECOND;
        let fraction = civil.time_of_day_micros % MICROS_PER_SECOND;
        write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            civil.year,
            civil.month,
            civil.day,
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        )?;
        if fraction == 0 {
            out.write_str("Z")
        } else if fraction % 1000 == 0 {
            write!(out, ".{:03}Z", fraction / 1000)
        } else {
            write!(out, ".{fraction:06}Z")
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Timestamp::NEVER {
            f.write_str("never")
        } else {
            fmt::Display::fmt(self, f)
        }
    }
}

/// A UTC calendar date and the time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CivilDateTime {
    pub year: i64,
    /// 1–12.
    pub month: u32,
    /// 1–31.
    pub day: u32,
    pub time_of_day_micros: i64,
}

impl CivilDateTime {
    /// `None` for an invalid date or time of day.
    pub fn to_timestamp(self) -> Option<Timestamp> {
        if !(1..=12).contains(&self.month)
            || self.day == 0
            || self.day > days_in_month(self.year, self.month)
            || !(0..MICROS_PER_DAY).contains(&self.time_of_day_micros)
        {
            return None;
        }
        days_from_civil(self.year, self.month, self.day)
            .checked_mul(MICROS_PER_DAY)
            .and_then(|micros| micros.checked_add(self.time_of_day_micros))
            .map(Timestamp)
    }
}

pub fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap_year(year) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic-Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic-Gregorian date of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The start of period `index` of an account anchored at `anchor`: the
/// anchor moved by `index` calendar months, its day clamped to the length of
/// the month, same time of day. Periods count from the anchor, not from the
/// previous period, so Jan 31 → Feb 28 → Mar 31.
pub fn period_start(anchor: Timestamp, index: i64) -> Timestamp {
    let civil = anchor.to_civil();
    let month_number = civil.year * 12 + i64::from(civil.month) - 1 + index;
    let year = month_number.div_euclid(12);
    let month = (month_number.rem_euclid(12) + 1) as u32;
    let day = civil.day.min(days_in_month(year, month));
    let days = days_from_civil(year, month, day);
    Timestamp(days * MICROS_PER_DAY + civil.time_of_day_micros)
}

/// The index of the period of an account anchored at `anchor` that contains
/// `instant` (negative when `instant` is before the anchor).
pub fn period_index_at(anchor: Timestamp, instant: Timestamp) -> i64 {
    let (a, t) = (anchor.to_civil(), instant.to_civil());
    let mut index = (t.year * 12 + i64::from(t.month)) - (a.year * 12 + i64::from(a.month));
    // The month difference is right or one too high (clamped days, time of day).
    while period_start(anchor, index) > instant {
        index -= 1;
    }
    while period_start(anchor, index + 1) <= instant {
        index += 1;
    }
    index
}

fn parse_rfc3339(text: &[u8]) -> Option<Timestamp> {
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = text.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            digits
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0')),
        )
    };
    let separator = |at: usize, allowed: &[u8]| text.get(at).is_some_and(|c| allowed.contains(c));
    if !(separator(4, b"-")
        && separator(7, b"-")
        && separator(10, b"Tt")
        && separator(13, b":")
        && separator(16, b":"))
    {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if year == 0 || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at = 19;
    let mut fraction_micros = 0i64;
    if text.get(at) == Some(&b'.') {
        let digits_end = at
            + 1
            + text[at + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
        if digits_end == at + 1 {
            return None;
        }
        for (position, digit) in text[at + 1..digits_end].iter().take(6).enumerate() {
            fraction_micros += i64::from(digit - b'0') * 10i64.pow(5 - position as u32);
        }
        at = digits_end;
    }
    let offset_seconds = match text.get(at..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = number(at + 1..at + 3)?;
            let minutes = number(at + 4..at + 6)?;
            let _ = (h1, h2, m1, m2);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    let local = CivilDateTime {
        year,
        month: month as u32,
        day: day as u32,
        time_of_day_micros: (hour * 3600 + minute * 60 + second) * MICROS_PER_SECOND
            + fraction_micros,
    }
    .to_timestamp()?;
    local.checked_add_seconds(-offset_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain way to write a time, which the buffered one must match.
    fn reference(at: Timestamp) -> String {
        let mut text = String::new();
        at.write_plain(&mut text).unwrap();
        text
    }

    proptest! {
        #[test]
        fn times_are_written_as_the_plain_way_writes_them(micros in any::<i64>()) {
            let at = Timestamp::from_micros(micros);
            prop_assert_eq!(at.to_string(), reference(at));
        }

        #[test]
        fn whole_seconds_and_milliseconds_too(seconds in -62_135_596_800i64..253_402_300_799, millis in 0i64..1000, whole in any::<bool>()) {
            let micros = seconds * 1_000_000 + if whole { 0 } else { millis * 1000 };
            let at = Timestamp::from_micros(micros);
            prop_assert_eq!(at.to_string(), reference(at));
        }
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn civil_round_trip_over_four_centuries() {
        for days in (-800_000..800_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn rfc3339_parse_and_format() {
        assert_eq!(at("1970-01-01T00:00:00Z"), Timestamp::UNIX_EPOCH);
        assert_eq!(
            at("2026-11-01T02:00:00+02:00").to_string(),
            "2026-11-01T00:00:00Z"
        );
        assert_eq!(
            at("2026-11-01T00:00:00.5Z").to_string(),
            "2026-11-01T00:00:00.500Z"
        );
        assert_eq!(
            at("2026-11-01T00:00:00.0000019Z").to_string(),
            "2026-11-01T00:00:00.000001Z"
        );
        assert_eq!(
            at("2024-02-29t23:59:59z").to_string(),
            "2024-02-29T23:59:59Z"
        );
        for bad in [
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-01 00:00:00Z",
            "2026-11-01T24:00:00Z",
            "2026-11-01T00:00:00",
            "2026-11-01T00:00:00.Z",
            "2026-11-01T00:00:00+0200",
            "0000-01-01T00:00:00Z",
            "yesterday",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn periods_clamp_to_month_end_and_keep_the_anchor_day() {
        let anchor = at("2026-01-31T10:00:00Z");
        let starts: Vec<String> = (0..4)
            .map(|i| period_start(anchor, i).to_string())
            .collect();
        assert_eq!(
            starts,
            [
                "2026-01-31T10:00:00Z",
                "2026-02-28T10:00:00Z",
                "2026-03-31T10:00:00Z",
                "2026-04-30T10:00:00Z"
            ]
        );
        let leap = at("2028-01-30T00:00:00Z");
        assert_eq!(period_start(leap, 1).to_string(), "2028-02-29T00:00:00Z");
        assert_eq!(period_start(leap, -1).to_string(), "2027-12-30T00:00:00Z");
    }

    #[test]
    fn period_index_finds_the_containing_period() {
        let anchor = at("2026-01-31T10:00:00Z");
        let cases = [
            ("2026-01-31T10:00:00Z", 0),
            ("2026-02-28T09:59:59.999999Z", 0),
            ("2026-02-28T10:00:00Z", 1),
            ("2026-03-31T09:00:00Z", 1),
            ("2026-01-31T09:59:59Z", -1),
            ("2027-01-31T10:00:00Z", 12),
        ];
        for (instant, index) in cases {
            assert_eq!(period_index_at(anchor, at(instant)), index, "{instant}");
        }
    }
}
