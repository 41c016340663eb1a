//! The runtime mix: how a fleet's slots should be split between runtimes kept warm.
//!
//! Slots go to each runtime in proportion to its demand (runs running plus runs waiting),
//! by the largest-remainder method so that the shares add up exactly; then every runtime
//! with demand but no share takes one slot from the largest share, while it can spare one.

use std::collections::BTreeMap;

/// Splits `slots` between runtimes in proportion to `demand`; runtimes without demand get
/// nothing, and nothing is split when there is no demand at all.
pub fn split(slots: u32, demand: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
    let total: u64 = demand.values().map(|&d| u64::from(d)).sum();
    let mut out = BTreeMap::new();
    if total == 0 || slots == 0 {
        return out;
    }
    let wanted: Vec<(&String, u32)> = demand
        .iter()
        .filter(|&(_, &d)| d > 0)
        .map(|(k, &d)| (k, d))
        .collect();
    // Whole shares in proportion, then the leftover slots to the largest remainders.
    let mut given = 0u32;
    let mut remainders: Vec<(u64, &String)> = Vec::with_capacity(wanted.len());
    for (k, d) in &wanted {
        let exact = u64::from(slots) * u64::from(*d);
        let whole = u32::try_from(exact / total).expect("at most `slots`");
        given += whole;
        out.insert((*k).clone(), whole);
        remainders.push((exact % total, k));
    }
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    for (_, k) in remainders.iter().take((slots - given) as usize) {
        *out.get_mut(*k).expect("inserted above") += 1;
    }
    // A runtime in demand with no slot takes one from the largest share, while that
    // share has more than one (most demand first).
    let mut by_demand = wanted;
    by_demand.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    for (k, _) in by_demand {
        if out[k] > 0 {
            continue;
        }
        let Some((largest, &n)) = out
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        else {
            break;
        };
        if n <= 1 {
            break;
        }
        let largest = largest.clone();
        *out.get_mut(&largest).expect("found above") -= 1;
        *out.get_mut(k).expect("inserted above") += 1;
    }
    out.retain(|_, v| *v > 0);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn demand(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn shares_follow_demand() {
        let m = split(128, &demand(&[("python", 60), ("cpp", 20), ("java", 0)]));
        assert_eq!(m.get("java"), None);
        assert_eq!(m.values().sum::<u32>(), 128);
        assert_eq!(m["python"], 96);
        assert_eq!(m["cpp"], 32);
    }

    #[test]
    fn every_runtime_in_demand_gets_a_slot_while_there_are_slots() {
        let m = split(2, &demand(&[("python", 1000), ("cpp", 1), ("rust", 1)]));
        assert_eq!(m.values().sum::<u32>(), 2);
        assert_eq!(m["python"], 1);
        assert_eq!(m.len(), 2);
        let m = split(3, &demand(&[("python", 1000), ("cpp", 1), ("rust", 1)]));
        assert_eq!(m, demand(&[("python", 1), ("cpp", 1), ("rust", 1)]));
    }

    #[test]
    fn no_demand_no_split() {
        assert!(split(64, &demand(&[("python", 0)])).is_empty());
        assert!(split(0, &demand(&[("python", 5)])).is_empty());
    }

    proptest! {
        #[test]
        fn shares_add_up_and_stay_near_proportional(
            slots in 0u32..5000,
            d in proptest::collection::btree_map("[a-f]", 0u32..10_000, 0..6),
        ) {
            let m = split(slots, &d);
            let total: u64 = d.values().map(|&v| u64::from(v)).sum();
            if total == 0 || slots == 0 {
                prop_assert!(m.is_empty());
            } else {
                prop_assert_eq!(m.values().sum::<u32>(), slots);
                let with_demand = d.values().filter(|&&v| v > 0).count();
                for (k, &share) in &m {
                    let exact = f64::from(slots) * f64::from(d[k]) / total as f64;
                    // Within the one-slot minimum plus rounding of the exact share.
                    prop_assert!((f64::from(share) - exact).abs() <= with_demand as f64 + 1.0,
                        "{k}: {share} vs {exact}");
                    prop_assert!(d[k] > 0);
                }
            }
        }
    }
}
