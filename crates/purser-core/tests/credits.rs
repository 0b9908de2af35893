//! Property tests of the exact decimal amounts: parsing and formatting are
//! inverse, arithmetic never panics, and no input text makes the parser panic.

use proptest::prelude::*;
use purser_core::{AmountError, CreditSum, Credits, MAX_MICROS, Notation, parse_decimal};

fn credits() -> impl Strategy<Value = Credits> {
    prop_oneof![
        (0..=MAX_MICROS).prop_map(|m| Credits::from_micros(m).unwrap()),
        (0..=1_000_000u64).prop_map(|m| Credits::from_micros(m).unwrap()),
        Just(Credits::MAX),
        Just(Credits::ZERO),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn format_then_parse_is_the_identity(amount in credits()) {
        let text = amount.to_string();
        prop_assert_eq!(Credits::parse(&text, Notation::String), Ok(amount));
        prop_assert_eq!(Credits::parse(&text, Notation::Number), Ok(amount));
        // Canonical: no trailing zeros in a fraction, no leading zeros.
        prop_assert!(!text.contains('.') || !text.ends_with('0'), "{}", text);
        prop_assert!(text == "0" || !text.starts_with('0') || text.starts_with("0."), "{}", text);
    }

    #[test]
    fn padding_with_zeros_keeps_the_value_up_to_six_digits(units in 0..1_000_000u64, micros in 0..1_000_000u64, pad in 0usize..8) {
        let text = format!("{units}.{micros:06}{}", "0".repeat(pad));
        let parsed = parse_decimal(&text, Notation::String);
        if pad == 0 {
            prop_assert_eq!(parsed, Ok(units * 1_000_000 + micros));
        } else {
            prop_assert_eq!(parsed, Err(AmountError::TooManyFractionDigits));
        }
    }

    #[test]
    fn arithmetic_is_checked_never_wrapping(a in credits(), b in credits()) {
        match a.checked_add(b) {
            Some(sum) => {
                prop_assert_eq!(sum.micros(), a.micros() + b.micros());
                prop_assert!(sum <= Credits::MAX);
            }
            None => prop_assert!(a.micros() + b.micros() > MAX_MICROS),
        }
        match a.checked_sub(b) {
            Some(difference) => prop_assert_eq!(difference.micros() + b.micros(), a.micros()),
            None => prop_assert!(a < b),
        }
        let total = a.to_sum().checked_add(b.to_sum()).unwrap();
        prop_assert_eq!(total.micros(), i128::from(a.micros()) + i128::from(b.micros()));
        prop_assert_eq!(CreditSum::ZERO.checked_sub(total).unwrap().checked_neg(), Some(total));
    }

    #[test]
    fn any_text_parses_or_is_refused_without_panicking(text in "[-+0-9.eE]{0,30}|\\PC{0,20}") {
        for notation in [Notation::String, Notation::Number] {
            if let Ok(micros) = parse_decimal(&text, notation) {
                prop_assert!(micros <= MAX_MICROS);
                // Whatever parsed, formats back to a value that parses the same.
                let again = Credits::from_micros(micros).unwrap().to_string();
                prop_assert_eq!(parse_decimal(&again, Notation::String), Ok(micros));
            }
        }
    }

    #[test]
    fn proportional_growth_rounds_down_and_stays_bounded(a in credits(), numerator in 0..=u64::MAX, denominator in 1..=u64::MAX) {
        if let Some(result) = a.mul_div_floor(numerator, denominator) {
            let exact = u128::from(a.micros()) * u128::from(numerator);
            prop_assert!(u128::from(result.micros()) * u128::from(denominator) <= exact);
            prop_assert!((u128::from(result.micros()) + 1) * u128::from(denominator) > exact);
        }
    }
}
