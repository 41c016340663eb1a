//! CPU sets in the kernel's list format (`0-3,8`), as `cod worker --cpu-list` takes them
//! and the local provider hands them out.

use rustix::thread::CpuSet;

/// The CPUs in `set`, ascending.
pub fn cpus_in(set: &CpuSet) -> impl Iterator<Item = usize> + '_ {
    (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c))
}

/// The CPUs this process may run on, ascending (empty if the kernel does not say).
pub fn allowed() -> Vec<usize> {
    rustix::thread::sched_getaffinity(None)
        .map(|set| cpus_in(&set).collect())
        .unwrap_or_default()
}

/// `set` in the kernel's list format.
pub fn cpu_list_text(set: &CpuSet) -> String {
    list_text(cpus_in(set))
}

/// Ascending CPU numbers in the kernel's list format: runs of consecutive CPUs as ranges.
pub fn list_text(cpus: impl IntoIterator<Item = usize>) -> String {
    let mut parts = Vec::new();
    let mut run: Option<(usize, usize)> = None;
    for c in cpus {
        run = match run {
            Some((lo, hi)) if hi + 1 == c => Some((lo, c)),
            Some(r) => {
                parts.push(r);
                Some((c, c))
            }
            None => Some((c, c)),
        };
    }
    parts.extend(run);
    parts
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The `index`-th share (from 1) of `per` CPUs of `all`: shares follow each other through
/// `all` and wrap around, so workers 1 to `all.len() / per` get CPUs of their own and the
/// next ones share. All of them when `per` is 0 or at least `all.len()`. Ascending.
pub fn share(all: &[usize], per: usize, index: u32) -> Vec<usize> {
    if per == 0 || per >= all.len() {
        return all.to_vec();
    }
    let start = (index.max(1) as usize - 1) * per;
    let mut mine: Vec<usize> = (start..start + per).map(|i| all[i % all.len()]).collect();
    mine.sort_unstable();
    mine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_print_runs_as_ranges() {
        assert_eq!(list_text([0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(list_text([5]), "5");
        assert_eq!(list_text([]), "");
    }

    #[test]
    fn shares_follow_each_other_and_wrap() {
        let all = [0, 1, 2, 3, 4, 5, 8, 9];
        assert_eq!(share(&all, 2, 1), [0, 1]);
        assert_eq!(share(&all, 2, 2), [2, 3]);
        assert_eq!(share(&all, 2, 4), [8, 9]);
        // A fifth worker on four shares shares the first one's CPUs.
        assert_eq!(share(&all, 2, 5), [0, 1]);
        // A share across the end of the list wraps to its start.
        assert_eq!(share(&all, 3, 3), [0, 8, 9]);
        assert_eq!(share(&all, 0, 3), all);
        assert_eq!(share(&all, 8, 2), all);
        assert_eq!(share(&all, 1, 7), [8]);
    }
}
