//! Checking a worker's usage report before it is booked.
//!
//! The worker reports the tokens of a request in adjusted units (`tokensUsed`: four categories
//! and their total, already scaled by its coefficient and the price multipliers). Booked as
//! it comes, an inflated report would pay the worker for tokens nobody received, so the
//! report is audited against what the proxy knows on its own (pure function, the
//! caller decides what to do with the verdict):
//!
//! 1. **Impossible values** are a protocol violation and are never booked: a negative count, a
//!    total that is not the sum of its categories, or more completion tokens than the request's
//!    limit allowed at the coefficient the proxy quoted when it routed the request (the worker
//!    bills at that coefficient; one changed afterwards does not apply to a running request).
//! 2. **The proxy's own count**: where the answer carried usage the proxy saw go by (the final
//!    SSE chunk, or the JSON body) and the request completed, the proxy recomputes the adjusted
//!    tokens at the quoted coefficient. A report above that count by more than the tolerance is
//!    a mismatch: the lower figure is booked and the worker's reputation suffers.
//! 3. **The reservation** bounds what is booked: a request that ends over it is booked at the
//!    reservation (the client reserved, and was told, no more).

use cocoon_openai::usage::adjust_tokens;
use cocoon_openai::{PriceTable, Usage};
use cocoon_tl::types::TokensUsed;

use crate::meter::Charge;

/// What the proxy promised when it routed the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quote {
    /// The worker's coefficient when the request was routed (thousandths).
    pub coefficient: i32,
    pub prices: PriceTable,
    /// Adjusted tokens reserved for the request.
    pub reserved: u64,
    /// Completion tokens (all sequences) the request allowed, as written into its body.
    pub completion_limit: u64,
}

/// The audit's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Audit {
    /// What to book (never above the reservation).
    pub book: Charge,
    /// The report cannot be true: not booked; the worker broke the protocol.
    pub violation: Option<String>,
    /// The report exceeds the proxy's own count: the lower figure is booked.
    pub mismatch: Option<String>,
    /// The booked usage was cut to the reservation.
    pub capped: bool,
}

/// Adjusted tokens the two counts may differ by without a finding: 1% plus two raw tokens per
/// category at the quoted coefficient (engines round cached and reasoning counts differently
/// between their chunks and their final usage).
fn tolerance(own_total: u64, coefficient: u64, prices: &PriceTable) -> u64 {
    let m = prices.multipliers;
    let max_mult = [m.prompt, m.cached, m.completion, m.reasoning]
        .into_iter()
        .max()
        .unwrap_or(10_000);
    own_total / 100 + 4 * adjust_tokens(2, coefficient, u64::from(max_mult))
}

/// `u` adjusted at `coefficient` with `prices`, by category.
pub(crate) fn charge_of_adjusted(u: &Usage, coefficient: u64, prices: &PriceTable) -> Charge {
    let a = prices.adjust(u, coefficient);
    Charge {
        prompt: a.categories.prompt,
        cached: a.categories.cached,
        completion: a.categories.completion,
        reasoning: a.categories.reasoning,
        total: a.total,
    }
}

/// `c` with its total cut to `max`, the categories lowered (completion first) to match.
pub(crate) fn cap(mut c: Charge, max: u64) -> (Charge, bool) {
    if c.total <= max {
        return (c, false);
    }
    let mut over = c.total - max;
    for cat in [
        &mut c.completion,
        &mut c.reasoning,
        &mut c.prompt,
        &mut c.cached,
    ] {
        let cut = over.min(*cat);
        *cat -= cut;
        over -= cut;
    }
    c.total = max;
    (c, true)
}

/// Audits `reported` (the worker's final `tokensUsed`) against `own` (usage the proxy saw in
/// the answer, `Some` only for an answer that completed) and the request's quote.
pub(crate) fn audit(reported: &TokensUsed, own: Option<&Usage>, q: &Quote) -> Audit {
    let coefficient = u64::try_from(q.coefficient).unwrap_or(0);
    let own = own.map(|u| charge_of_adjusted(u, coefficient, &q.prices));
    let refused = |reason: String| {
        let (book, capped) = cap(own.unwrap_or_default(), q.reserved);
        Audit {
            book,
            violation: Some(reason),
            mismatch: None,
            capped,
        }
    };
    let fields = [
        reported.prompt_tokens_used,
        reported.cached_tokens_used,
        reported.completion_tokens_used,
        reported.reasoning_tokens_used,
        reported.total_tokens_used,
    ];
    if fields.iter().any(|v| *v < 0) {
        return refused("negative token count in the usage report".into());
    }
    let u = |v: i64| v as u64; // non-negative, checked above
    let c = Charge {
        prompt: u(reported.prompt_tokens_used),
        cached: u(reported.cached_tokens_used),
        completion: u(reported.completion_tokens_used),
        reasoning: u(reported.reasoning_tokens_used),
        total: u(reported.total_tokens_used),
    };
    let sum = c
        .prompt
        .checked_add(c.cached)
        .and_then(|s| s.checked_add(c.completion))
        .and_then(|s| s.checked_add(c.reasoning));
    if sum != Some(c.total) {
        return refused(format!(
            "usage total {} is not the sum of its categories",
            c.total
        ));
    }
    let m = q.prices.multipliers;
    let completion_mult = u64::from(m.completion.max(m.reasoning));
    let allowed = adjust_tokens(q.completion_limit, coefficient, completion_mult);
    let generated = c.completion.saturating_add(c.reasoning);
    // Workers may adjust in floating point: a category may come out one higher.
    if generated > allowed.saturating_add(2) {
        return refused(format!(
            "{generated} adjusted completion tokens reported; the request allowed {} tokens \
             ({allowed} adjusted at coefficient {})",
            q.completion_limit, q.coefficient
        ));
    }
    let mut mismatch = None;
    let mut chosen = c;
    if let Some(own) = own
        && c.total
            > own
                .total
                .saturating_add(tolerance(own.total, coefficient, &q.prices))
    {
        mismatch = Some(format!(
            "worker reported {} adjusted tokens, the answer's own usage gives {}",
            c.total, own.total
        ));
        chosen = own;
    }
    let (book, capped) = cap(chosen, q.reserved);
    Audit {
        book,
        violation: None,
        mismatch,
        capped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_openai::Multipliers;

    fn prices() -> PriceTable {
        PriceTable {
            price_per_token: 20,
            worker_fee_per_token: 15,
            multipliers: Multipliers {
                prompt: 10_000,
                cached: 1_000,
                completion: 20_000,
                reasoning: 10_000,
            },
        }
    }

    fn quote() -> Quote {
        Quote {
            coefficient: 1500,
            prices: prices(),
            reserved: 10_000,
            completion_limit: 100,
        }
    }

    fn report(u: &Usage, coefficient: u64) -> TokensUsed {
        let a = prices().adjust(u, coefficient);
        TokensUsed {
            prompt_tokens_used: a.categories.prompt as i64,
            cached_tokens_used: a.categories.cached as i64,
            completion_tokens_used: a.categories.completion as i64,
            reasoning_tokens_used: a.categories.reasoning as i64,
            total_tokens_used: a.total as i64,
        }
    }

    #[test]
    fn an_honest_report_is_booked_as_is() {
        let u = Usage::new(200, 80);
        let r = report(&u, 1500);
        let a = audit(&r, Some(&u), &quote());
        assert_eq!(a.violation, None);
        assert_eq!(a.mismatch, None);
        assert!(!a.capped);
        assert_eq!(a.book.total, r.total_tokens_used as u64);
        // Without an own count too.
        assert_eq!(audit(&r, None, &quote()).book, a.book);
    }

    #[test]
    fn impossible_values_are_violations_and_book_only_the_own_count() {
        let u = Usage::new(200, 80);
        let mut r = report(&u, 1500);
        r.cached_tokens_used = -1;
        let a = audit(&r, None, &quote());
        assert!(a.violation.unwrap().contains("negative"));
        assert_eq!(a.book, Charge::default());

        let mut r = report(&u, 1500);
        r.total_tokens_used += 1000;
        let a = audit(&r, Some(&u), &quote());
        assert!(a.violation.unwrap().contains("sum"));
        assert_eq!(a.book.total, report(&u, 1500).total_tokens_used as u64);

        // 101 completion tokens where 100 were allowed.
        let r = report(&Usage::new(10, 101), 1500);
        assert!(
            audit(&r, None, &quote())
                .violation
                .unwrap()
                .contains("allowed")
        );
        // Exactly the limit is fine.
        let r = report(&Usage::new(10, 100), 1500);
        assert_eq!(audit(&r, None, &quote()).violation, None);

        let r = TokensUsed {
            prompt_tokens_used: i64::MAX,
            cached_tokens_used: i64::MAX,
            completion_tokens_used: 0,
            reasoning_tokens_used: 0,
            total_tokens_used: -2,
        };
        assert!(audit(&r, None, &quote()).violation.is_some());
    }

    #[test]
    fn a_higher_coefficient_than_quoted_is_caught_by_the_own_count() {
        // The worker raised its coefficient after routing and billed at the new one.
        let u = Usage::new(200, 40);
        let r = report(&u, 3000);
        let a = audit(&r, Some(&u), &quote());
        assert_eq!(a.violation, None);
        assert!(a.mismatch.is_some());
        assert_eq!(a.book.total, report(&u, 1500).total_tokens_used as u64);
    }

    #[test]
    fn small_differences_are_tolerated_and_lower_reports_kept() {
        let u = Usage::new(200, 80);
        let mut r = report(&u, 1500);
        r.prompt_tokens_used += 2;
        r.total_tokens_used += 2;
        let a = audit(&r, Some(&u), &quote());
        assert_eq!(a.mismatch, None);
        assert_eq!(a.book.total, r.total_tokens_used as u64);
        // A report below the own count is the worker's loss, not a finding.
        let r = report(&Usage::new(100, 40), 1500);
        let a = audit(&r, Some(&u), &quote());
        assert_eq!(a.mismatch, None);
        assert_eq!(a.book.total, r.total_tokens_used as u64);
    }

    #[test]
    fn bookings_never_pass_the_reservation() {
        let u = Usage::new(9000, 100);
        let r = report(&u, 1500);
        let a = audit(&r, Some(&u), &quote());
        assert!(a.capped);
        assert_eq!(a.book.total, 10_000);
        assert_eq!(
            a.book.prompt + a.book.cached + a.book.completion + a.book.reasoning,
            10_000
        );
    }
}
