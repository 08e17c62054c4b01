//! What the root's params say a request costs: the network price table and the
//! reservation a request holds while it runs. Pure functions of `CocoonParams`.

use cocoon_ton::root::CocoonParams;

pub(crate) use cocoon_service::chain::price_table;

/// Adjusted tokens to reserve for a request.
pub(crate) fn reservation(
    max_tokens: i32,
    query_len: usize,
    max_coefficient: i32,
    p: &CocoonParams,
) -> u64 {
    let mult = [
        p.prompt_tokens_price_multiplier,
        p.cached_tokens_price_multiplier,
        p.completion_tokens_price_multiplier,
        p.reasoning_tokens_price_multiplier,
    ]
    .into_iter()
    .max()
    .unwrap_or(10_000);
    let base = u128::try_from(max_tokens.max(0)).unwrap_or(0) + query_len as u128;
    let coef = u128::try_from(max_coefficient.max(0)).unwrap_or(0);
    let v = base * coef * u128::from(mult) / (1000 * 10_000);
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_covers_the_highest_multiplier() {
        let mut p = CocoonParams::default();
        assert_eq!(reservation(1000, 200, 4000, &p), 4800);
        p.completion_tokens_price_multiplier = 20_000;
        assert_eq!(reservation(1000, 200, 4000, &p), 9600);
        assert_eq!(reservation(-5, 0, 4000, &p), 0);
        assert_eq!(reservation(i32::MAX, usize::MAX, i32::MAX, &p), u64::MAX);
    }
}
