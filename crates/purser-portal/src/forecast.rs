//! When the credits run out at the current burn rate: integer arithmetic on
//! micro-credits and microseconds, no floats.

use purser_core::Timestamp;

/// How far back the burn rate looks.
pub const WINDOW_DAYS: i64 = 7;
const MICROS_PER_DAY: i128 = 86_400_000_000;
/// Less history than this and the rate says too little to forecast from.
const MIN_WINDOW_MICROS: i64 = 3_600_000_000;

/// What the forecast is computed from.
#[derive(Clone, Copy, Debug)]
pub struct Inputs {
    pub now: Timestamp,
    /// Credits consumed (net of reversals) over `window_micros` before `now`.
    pub consumed: i128,
    pub window_micros: i64,
    /// Budget and rollover credits available now (spent first).
    pub period_available: i128,
    /// Promo and package credits available now (spent after them).
    pub backup_available: i128,
    pub debt: i128,
    /// When the budget renews.
    pub period_end: Timestamp,
}

/// The forecast, in terms the page words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forecast {
    /// The account owes credits: new credits pay that first.
    InDebt,
    /// Too little history to tell.
    NotEnoughHistory,
    /// Nothing spent in the window.
    Idle,
    /// The period's credits last until it renews.
    LastsUntilRenewal { per_day: i128 },
    /// The period's credits run out at `at` (before renewal); the backup
    /// credits then cover about `backup_days` more days (`None`: past
    /// the renewal, so the budget is back before they are gone).
    RunsOut {
        per_day: i128,
        at: Timestamp,
        backup_days: Option<i128>,
        backup_available: i128,
    },
}

pub fn forecast(inputs: &Inputs) -> Forecast {
    if inputs.debt > 0 {
        return Forecast::InDebt;
    }
    if inputs.window_micros < MIN_WINDOW_MICROS {
        return Forecast::NotEnoughHistory;
    }
    if inputs.consumed <= 0 {
        return Forecast::Idle;
    }
    let window = i128::from(inputs.window_micros);
    let per_day = inputs.consumed * MICROS_PER_DAY / window;
    // Micros until the period's credits are gone: available ÷ (consumed ÷ window).
    let lasts = inputs.period_available.max(0) * window / inputs.consumed;
    let until_renewal = i128::from(inputs.period_end.micros_since(inputs.now));
    if lasts >= until_renewal {
        return Forecast::LastsUntilRenewal { per_day };
    }
    let at = Timestamp::from_micros(
        inputs
            .now
            .micros()
            .saturating_add(i64::try_from(lasts).unwrap_or(i64::MAX)),
    );
    let backup_lasts = inputs.backup_available.max(0) * window / inputs.consumed;
    let backup_days = (lasts + backup_lasts < until_renewal || inputs.backup_available == 0)
        .then_some(backup_lasts / MICROS_PER_DAY);
    Forecast::RunsOut {
        per_day,
        at,
        backup_days,
        backup_available: inputs.backup_available,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;
    const CREDIT: i128 = 1_000_000;

    fn inputs(consumed: i128, period: i128, backup: i128) -> Inputs {
        Inputs {
            now: Timestamp::from_micros(100 * DAY),
            consumed: consumed * CREDIT,
            window_micros: 7 * DAY,
            period_available: period * CREDIT,
            backup_available: backup * CREDIT,
            debt: 0,
            period_end: Timestamp::from_micros(120 * DAY),
        }
    }

    #[test]
    fn a_slow_burn_lasts_the_period() {
        // 7 credits a week, 100 left, 20 days to go.
        assert_eq!(
            forecast(&inputs(7, 100, 0)),
            Forecast::LastsUntilRenewal { per_day: CREDIT }
        );
    }

    #[test]
    fn a_fast_burn_runs_out_then_packages_cover_some_days() {
        // 70 credits a week = 10 a day; 50 left lasts 5 days; 30 package credits 3 more.
        assert_eq!(
            forecast(&inputs(70, 50, 30)),
            Forecast::RunsOut {
                per_day: 10 * CREDIT,
                at: Timestamp::from_micros(105 * DAY),
                backup_days: Some(3),
                backup_available: 30 * CREDIT,
            }
        );
        // Enough packages to reach the renewal: no day count.
        let Forecast::RunsOut { backup_days, .. } = forecast(&inputs(70, 50, 1_000)) else {
            panic!("runs out");
        };
        assert_eq!(backup_days, None);
        // No packages at all: zero days.
        let Forecast::RunsOut { backup_days, .. } = forecast(&inputs(70, 50, 0)) else {
            panic!("runs out");
        };
        assert_eq!(backup_days, Some(0));
    }

    #[test]
    fn debt_idleness_and_new_accounts_are_said_plainly() {
        assert_eq!(forecast(&inputs(0, 100, 0)), Forecast::Idle);
        let mut young = inputs(5, 100, 0);
        young.window_micros = 60_000_000;
        assert_eq!(forecast(&young), Forecast::NotEnoughHistory);
        let mut owing = inputs(5, 0, 0);
        owing.debt = CREDIT;
        assert_eq!(forecast(&owing), Forecast::InDebt);
    }
}
