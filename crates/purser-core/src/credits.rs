//! Exact decimal amounts: credits, quantities and prices.
//!
//! Every amount is an integer count of micro-units (10⁻⁶). A single amount is
//! at most 10¹² units, so it fits in a `u64` with room to spare; sums over
//! many amounts (balances, reports) use [`CreditSum`], an `i128`. Parsing works
//! on the decimal text itself, never through a float, and formatting is
//! canonical: no trailing zeros, no exponent, no sign on positive values.

use std::fmt;

/// Micro-units per whole unit: amounts carry exactly six fractional digits.
pub const MICROS_PER_UNIT: u64 = 1_000_000;

/// The largest single amount, in whole units (10¹²).
pub const MAX_UNITS: u64 = 1_000_000_000_000;

/// The largest single amount, in micro-units (10¹⁸).
pub const MAX_MICROS: u64 = MAX_UNITS * MICROS_PER_UNIT;

const FRACTION_DIGITS: usize = 6;

/// A non-negative amount of credits, in micro-credits, at most 10¹² credits.
///
/// The field is private: a `Credits` value is within range by construction.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Credits(u64);

impl Credits {
    pub const ZERO: Credits = Credits(0);
    pub const MAX: Credits = Credits(MAX_MICROS);
    /// The smallest positive amount, 0.000001.
    pub const MICRO: Credits = Credits(1);

    /// `None` when `micros` exceeds the limit.
    pub const fn from_micros(micros: u64) -> Option<Credits> {
        if micros <= MAX_MICROS {
            Some(Credits(micros))
        } else {
            None
        }
    }

    /// `None` when `units` exceeds the limit.
    pub const fn from_units(units: u64) -> Option<Credits> {
        if units <= MAX_UNITS {
            Some(Credits(units * MICROS_PER_UNIT))
        } else {
            None
        }
    }

    pub const fn micros(self) -> u64 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `None` on overflow past [`Credits::MAX`].
    pub fn checked_add(self, other: Credits) -> Option<Credits> {
        self.0.checked_add(other.0).and_then(Credits::from_micros)
    }

    /// `None` when `other` is larger than `self`.
    pub fn checked_sub(self, other: Credits) -> Option<Credits> {
        self.0.checked_sub(other.0).map(Credits)
    }

    pub fn saturating_sub(self, other: Credits) -> Credits {
        Credits(self.0.saturating_sub(other.0))
    }

    pub fn to_sum(self) -> CreditSum {
        CreditSum::from(self)
    }

    /// Parses a decimal amount with at most six fractional digits, see [`parse_decimal`].
    pub fn parse(text: &str, notation: Notation) -> Result<Credits, AmountError> {
        parse_decimal(text, notation).map(Credits)
    }

    /// Like [`Credits::parse`], but zero is refused too.
    pub fn parse_positive(text: &str, notation: Notation) -> Result<Credits, AmountError> {
        match Credits::parse(text, notation)? {
            Credits(0) => Err(AmountError::NotPositive),
            credits => Ok(credits),
        }
    }

    /// `self × numerator / denominator`, rounded down. `None` when the
    /// denominator is zero or the result exceeds the limit.
    pub fn mul_div_floor(self, numerator: u64, denominator: u64) -> Option<Credits> {
        if denominator == 0 {
            return None;
        }
        let product = u128::from(self.0) * u128::from(numerator) / u128::from(denominator);
        u64::try_from(product).ok().and_then(Credits::from_micros)
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_micros(f, false, u128::from(self.0))
    }
}

impl fmt::Debug for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A quantity of task units (minutes, pages, messages…): same rules as credits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity(u64);

impl Quantity {
    pub const fn from_micros(micros: u64) -> Option<Quantity> {
        if micros <= MAX_MICROS {
            Some(Quantity(micros))
        } else {
            None
        }
    }

    pub const fn from_units(units: u64) -> Option<Quantity> {
        if units <= MAX_UNITS {
            Some(Quantity(units * MICROS_PER_UNIT))
        } else {
            None
        }
    }

    pub const fn micros(self) -> u64 {
        self.0
    }

    /// A positive quantity; zero is refused.
    pub fn parse_positive(text: &str, notation: Notation) -> Result<Quantity, AmountError> {
        match parse_decimal(text, notation)? {
            0 => Err(AmountError::NotPositive),
            micros => Ok(Quantity(micros)),
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_micros(f, false, u128::from(self.0))
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A signed sum of credits (balances, report totals, signed journal amounts),
/// in micro-credits. Wide enough that adding any realistic number of single
/// amounts cannot overflow; arithmetic is checked anyway.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CreditSum(i128);

impl CreditSum {
    pub const ZERO: CreditSum = CreditSum(0);

    pub const fn from_micros(micros: i128) -> CreditSum {
        CreditSum(micros)
    }

    pub const fn micros(self) -> i128 {
        self.0
    }

    pub fn checked_add(self, other: CreditSum) -> Option<CreditSum> {
        self.0.checked_add(other.0).map(CreditSum)
    }

    pub fn checked_sub(self, other: CreditSum) -> Option<CreditSum> {
        self.0.checked_sub(other.0).map(CreditSum)
    }

    pub fn checked_neg(self) -> Option<CreditSum> {
        self.0.checked_neg().map(CreditSum)
    }

    /// The sum as a single amount, when it is one (non-negative, within the limit).
    pub fn to_credits(self) -> Option<Credits> {
        u64::try_from(self.0).ok().and_then(Credits::from_micros)
    }

    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }
}

impl From<Credits> for CreditSum {
    fn from(credits: Credits) -> CreditSum {
        CreditSum(i128::from(credits.0))
    }
}

impl std::iter::Sum<Credits> for CreditSum {
    /// Sums of `u64` amounts into an `i128` cannot overflow for fewer than
    /// 2⁶⁴ terms, which no iterator in this crate approaches.
    fn sum<I: Iterator<Item = Credits>>(iter: I) -> CreditSum {
        CreditSum(iter.map(|credits| i128::from(credits.0)).sum())
    }
}

impl fmt::Display for CreditSum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_micros(f, self.0 < 0, self.0.unsigned_abs())
    }
}

impl fmt::Debug for CreditSum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where the decimal text came from, which decides whether an exponent is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notation {
    /// A JSON string: `-?\d+(\.\d+)?`, no exponent.
    String,
    /// The text of a JSON number: an exponent is allowed and applied exactly
    /// (`1.5e3` is 1500); the result must still have at most six fractional digits.
    Number,
}

/// Why a decimal amount was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmountError {
    /// Not of the form `-?\d+(\.\d+)?` (or a JSON number, where one is allowed).
    Syntax,
    /// An exponent in a string amount.
    Exponent,
    /// More than six fractional digits, even if they are zeros.
    TooManyFractionDigits,
    /// Negative.
    Negative,
    /// Zero where a positive amount is needed.
    NotPositive,
    /// More than 10¹².
    TooLarge,
}

impl AmountError {
    /// A stable, human-readable reason.
    pub const fn message(self) -> &'static str {
        match self {
            AmountError::Syntax => "must be a decimal number such as \"12.5\"",
            AmountError::Exponent => "must not use an exponent",
            AmountError::TooManyFractionDigits => "must have at most 6 fractional digits",
            AmountError::Negative => "must not be negative",
            AmountError::NotPositive => "must be greater than zero",
            AmountError::TooLarge => "must be at most 1000000000000",
        }
    }
}

impl fmt::Display for AmountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for AmountError {}

/// Parses decimal text into micro-units, exactly.
///
/// Accepts `\d+(\.\d+)?`; with [`Notation::Number`] also an exponent
/// (`[eE][+-]?\d+`). Refuses a sign (a leading `-` is reported as
/// [`AmountError::Negative`]), more than six fractional digits after the
/// exponent is applied, and values above 10¹².
pub fn parse_decimal(text: &str, notation: Notation) -> Result<u64, AmountError> {
    let bytes = text.as_bytes();
    if bytes.first() == Some(&b'-') {
        // Still check the rest is a number, so "-abc" is a syntax error.
        parse_unsigned(&bytes[1..], notation)?;
        return Err(AmountError::Negative);
    }
    parse_unsigned(bytes, notation)
}

fn parse_unsigned(bytes: &[u8], notation: Notation) -> Result<u64, AmountError> {
    let (mantissa, exponent) = split_exponent(bytes, notation)?;
    let (integer, fraction) = match mantissa.iter().position(|&b| b == b'.') {
        Some(dot) => (&mantissa[..dot], &mantissa[dot + 1..]),
        None => (mantissa, &[][..]),
    };
    let has_dot = integer.len() != mantissa.len();
    if integer.is_empty() || (has_dot && fraction.is_empty()) {
        return Err(AmountError::Syntax);
    }
    if !integer.iter().chain(fraction).all(u8::is_ascii_digit) {
        return Err(AmountError::Syntax);
    }
    // Shift the decimal point by the exponent: the number is
    // digits × 10^(exponent − fraction.len()).
    let scale = exponent - fraction.len() as i64;
    if scale < -(FRACTION_DIGITS as i64) {
        return Err(AmountError::TooManyFractionDigits);
    }
    let mut micros: u128 = 0;
    for &digit in integer.iter().chain(fraction) {
        micros = micros * 10 + u128::from(digit - b'0');
        if micros > u128::from(MAX_MICROS) {
            // The scale below is never negative, so the value is at least the
            // digits read so far: already past the limit.
            return Err(AmountError::TooLarge);
        }
    }
    let shift = scale + FRACTION_DIGITS as i64;
    if micros == 0 {
        return Ok(0);
    }
    // 10¹⁸ is the limit: any non-zero value shifted further is too large.
    if shift > 18 {
        return Err(AmountError::TooLarge);
    }
    let scaled = micros * 10u128.pow(shift as u32);
    u64::try_from(scaled)
        .ok()
        .filter(|&value| value <= MAX_MICROS)
        .ok_or(AmountError::TooLarge)
}

fn split_exponent(bytes: &[u8], notation: Notation) -> Result<(&[u8], i64), AmountError> {
    let Some(at) = bytes.iter().position(|&b| b == b'e' || b == b'E') else {
        return Ok((bytes, 0));
    };
    if notation == Notation::String {
        return Err(AmountError::Exponent);
    }
    let (mantissa, rest) = (&bytes[..at], &bytes[at + 1..]);
    let (negative, digits) = match rest.first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(AmountError::Syntax);
    }
    // Exponents beyond ±1000 can only produce an error; cap the parse there.
    let mut value: i64 = 0;
    for &digit in digits {
        value = (value * 10 + i64::from(digit - b'0')).min(1_000);
    }
    Ok((mantissa, if negative { -value } else { value }))
}

fn write_micros(f: &mut fmt::Formatter<'_>, negative: bool, micros: u128) -> fmt::Result {
    // Written right to left into a buffer, then once to the formatter: this
    // runs for every amount of every answer, and `write!` with integer
    // arguments costs several times as much.
    let per_unit = u128::from(MICROS_PER_UNIT);
    let (whole, fraction) = (micros / per_unit, micros % per_unit);
    let mut buffer = [0u8; 64];
    let mut at = buffer.len();
    if fraction != 0 {
        let mut digits = [0u8; FRACTION_DIGITS];
        let mut rest = fraction as u64;
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        let significant = digits.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
        at -= significant;
        buffer[at..at + significant].copy_from_slice(&digits[..significant]);
        at -= 1;
        buffer[at] = b'.';
    }
    at = write_digits(&mut buffer[..at], whole);
    if negative && micros != 0 {
        at -= 1;
        buffer[at] = b'-';
    }
    f.write_str(std::str::from_utf8(&buffer[at..]).map_err(|_| fmt::Error)?)
}

/// Writes `value` in decimal to the end of `buffer`; returns where it starts.
pub(crate) fn write_digits(buffer: &mut [u8], value: u128) -> usize {
    let mut at = buffer.len();
    if let Ok(mut small) = u64::try_from(value) {
        loop {
            at -= 1;
            buffer[at] = b'0' + (small % 10) as u8;
            small /= 10;
            if small == 0 {
                return at;
            }
        }
    }
    let mut rest = value;
    loop {
        at -= 1;
        buffer[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            return at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain way to write an amount, which the buffered one must match.
    fn reference(negative: bool, micros: u128) -> String {
        let (whole, fraction) = (micros / 1_000_000, micros % 1_000_000);
        let sign = if negative && micros != 0 { "-" } else { "" };
        if fraction == 0 {
            return format!("{sign}{whole}");
        }
        let digits = format!("{fraction:06}");
        format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
    }

    proptest! {
        #[test]
        fn amounts_are_written_as_the_plain_way_writes_them(micros in any::<i128>()) {
            let sum = CreditSum::from_micros(micros);
            prop_assert_eq!(sum.to_string(), reference(micros < 0, micros.unsigned_abs()));
        }

        #[test]
        fn small_amounts_too(micros in 0u64..=MAX_MICROS) {
            let credits = Credits::from_micros(micros).unwrap();
            prop_assert_eq!(credits.to_string(), reference(false, u128::from(micros)));
        }
    }

    fn parse(text: &str) -> Result<u64, AmountError> {
        parse_decimal(text, Notation::String)
    }

    #[test]
    fn parses_and_refuses() {
        let cases: &[(&str, Result<u64, AmountError>)] = &[
            ("0", Ok(0)),
            ("1", Ok(1_000_000)),
            ("12.5", Ok(12_500_000)),
            ("0.000001", Ok(1)),
            ("007.10", Ok(7_100_000)),
            ("1000000000000", Ok(MAX_MICROS)),
            ("1000000000000.000001", Err(AmountError::TooLarge)),
            (
                "99999999999999999999999999999999999999999",
                Err(AmountError::TooLarge),
            ),
            ("0.0000001", Err(AmountError::TooManyFractionDigits)),
            ("1.0000000", Err(AmountError::TooManyFractionDigits)),
            ("-1", Err(AmountError::Negative)),
            ("-x", Err(AmountError::Syntax)),
            ("1e3", Err(AmountError::Exponent)),
            ("", Err(AmountError::Syntax)),
            (".5", Err(AmountError::Syntax)),
            ("5.", Err(AmountError::Syntax)),
            ("+5", Err(AmountError::Syntax)),
            ("1,5", Err(AmountError::Syntax)),
            (" 1", Err(AmountError::Syntax)),
            ("1.2.3", Err(AmountError::Syntax)),
            ("NaN", Err(AmountError::Syntax)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), *expected, "parsing {text:?}");
        }
    }

    #[test]
    fn numbers_may_carry_an_exponent() {
        let number = |text| parse_decimal(text, Notation::Number);
        assert_eq!(number("1.5e3"), Ok(1_500_000_000));
        assert_eq!(number("15E-1"), Ok(1_500_000));
        assert_eq!(number("1e-6"), Ok(1));
        assert_eq!(number("1e-7"), Err(AmountError::TooManyFractionDigits));
        assert_eq!(number("1e12"), Ok(MAX_MICROS));
        assert_eq!(number("1e13"), Err(AmountError::TooLarge));
        assert_eq!(number("0e999999999999"), Ok(0));
        assert_eq!(number("1e999999999999"), Err(AmountError::TooLarge));
        assert_eq!(number("1e"), Err(AmountError::Syntax));
    }

    #[test]
    fn formats_canonically() {
        let cases: &[(u64, &str)] = &[
            (0, "0"),
            (1, "0.000001"),
            (12_500_000, "12.5"),
            (100_000_000, "100"),
            (MAX_MICROS, "1000000000000"),
            (1_230_000, "1.23"),
        ];
        for (micros, text) in cases {
            assert_eq!(Credits::from_micros(*micros).unwrap().to_string(), *text);
        }
        assert_eq!(CreditSum::from_micros(-1_500_000).to_string(), "-1.5");
        assert_eq!(CreditSum::from_micros(i128::MIN).checked_neg(), None);
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Credits::MAX.checked_add(Credits::MICRO), None);
        assert_eq!(Credits::ZERO.checked_sub(Credits::MICRO), None);
        let half = Credits::from_units(1).unwrap().mul_div_floor(1, 2).unwrap();
        assert_eq!(half.to_string(), "0.5");
        assert_eq!(Credits::MICRO.mul_div_floor(1, 3), Some(Credits::ZERO));
        assert_eq!(Credits::MAX.mul_div_floor(2, 1), None);
        assert_eq!(Credits::MAX.mul_div_floor(2, 0), None);
    }
}
