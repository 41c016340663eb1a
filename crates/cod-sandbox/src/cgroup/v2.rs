//! cgroup v2: one directory in the unified hierarchy.
//!
//! Files used: `cgroup.controllers`, `cgroup.subtree_control`, `memory.max`,
//! `memory.swap.max` (0: swap adds nothing to the memory limit), `memory.current`,
//! `memory.peak` (reset per open file, Linux 6.12+), `memory.events` (`oom_kill`),
//! `pids.max`, `cpu.max`, `cpu.stat` (`usage_usec`), `cgroup.procs` and `cgroup.kill`.
//!
//! This machine's v2 mount has no controllers, so these paths are tested against a fake tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    Baseline, CgroupError, CgroupLimits, Control, Usage, kill_and_wait, mkdir, read_string,
    remove_stale_instances, remove_tree, write,
};

const NEEDED: [&str; 3] = ["memory", "pids", "cpu"];
const CPU_PERIOD_US: u64 = 100_000;

/// Checks that the unified hierarchy at `root` offers every controller cod needs.
pub(super) fn usable(root: &Path) -> Result<(), String> {
    let path = root.join("cgroup.controllers");
    let have =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let missing: Vec<_> = NEEDED
        .iter()
        .filter(|c| !have.split_whitespace().any(|h| h == **c))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "controllers {missing:?} are not enabled at {}",
            root.display()
        ))
    }
}

/// `<root>/<name>/<instance>`.
#[derive(Debug)]
pub struct Tree {
    dir: PathBuf,
    cpus: u32,
}

/// `<root>/<name>/<instance>/slot-<n>` and its control files (kept open, see [`Control`]).
#[derive(Debug)]
pub struct Slot {
    dir: PathBuf,
    current: Control,
    stat: Control,
    max: Control,
    swap_max: Control,
    pids_current: Control,
    pids_max: Control,
    /// Reset and read through this one descriptor: the peak it shows is the one since its
    /// own last reset (Linux 6.12+).
    peak: Control,
    events: Control,
    cpu_stat: Control,
    procs: Control,
}

fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let current = read_string(&path).unwrap_or_default();
    let want: Vec<String> = NEEDED
        .iter()
        .filter(|c| !current.split_whitespace().any(|h| h == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if want.is_empty() {
        return Ok(());
    }
    write(&path, &want.join(" "))
}

impl Tree {
    pub(super) fn create(
        root: &Path,
        name: &str,
        instance: u32,
        cpus: u32,
    ) -> Result<Tree, CgroupError> {
        let parent = root.join(name);
        let dir = parent.join(instance.to_string());
        enable_controllers(root)?;
        mkdir(&parent)?;
        remove_stale_instances(&parent, instance, "cgroup.procs");
        enable_controllers(&parent)?;
        remove_tree(&dir, "cgroup.procs")?;
        mkdir(&dir)?;
        enable_controllers(&dir)?;
        Ok(Tree { dir, cpus })
    }

    pub(super) fn instance_dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn slot(&self, n: u32) -> Result<Slot, CgroupError> {
        let dir = self.dir.join(format!("slot-{n}"));
        if !dir.exists() {
            mkdir(&dir)?;
            let quota = match self.cpus {
                0 => "max".to_owned(),
                n => (CPU_PERIOD_US * u64::from(n)).to_string(),
            };
            write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
        }
        let read = |f: &str| Control::read_only(dir.join(f));
        let written = |f: &str| Control::writable(dir.join(f));
        Ok(Slot {
            current: read("memory.current"),
            stat: read("memory.stat"),
            max: written("memory.max"),
            swap_max: written("memory.swap.max"),
            pids_current: read("pids.current"),
            pids_max: written("pids.max"),
            peak: written("memory.peak"),
            events: read("memory.events"),
            cpu_stat: read("cpu.stat"),
            procs: read("cgroup.procs"),
            dir,
        })
    }

    pub(super) fn remove(&self) -> Result<(), CgroupError> {
        remove_tree(&self.dir, "cgroup.procs")
    }
}

impl Slot {
    pub(super) fn controls(&self) -> impl Iterator<Item = &Control> {
        [
            &self.current,
            &self.stat,
            &self.max,
            &self.swap_max,
            &self.pids_current,
            &self.pids_max,
            &self.peak,
            &self.events,
            &self.cpu_stat,
            &self.procs,
        ]
        .into_iter()
    }

    pub(super) fn prepare(&self, limits: CgroupLimits) -> Result<Baseline, CgroupError> {
        // What cod's own processes (and a zygote) hold, apart from reclaimable page cache,
        // is not the run's: the run may use its limit on top of it.
        let current = self.current.read_u64()?;
        let file = self.stat.read_keyed("file").unwrap_or(0);
        let held = current.saturating_sub(file);
        self.max
            .write(&limits.memory.saturating_add(held).to_string())?;
        self.swap_max.write("0")?;
        // The tasks already there (cod's own, or one still exiting) do not eat into the
        // run's allowance.
        let tasks = self.pids_current.read_u64()?;
        self.pids_max
            .write(&tasks.saturating_add(limits.pids).to_string())?;
        // Writing to memory.peak resets the peak seen through this open file (Linux 6.12+).
        self.peak.write("reset\n")?;
        Ok(Baseline {
            cpu: self.cpu_total()?,
            memory: self.current.read_u64()?,
            oom_kills: self.events.read_keyed("oom_kill")?,
        })
    }

    pub(super) fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    pub(super) fn cpu_total(&self) -> Result<Duration, CgroupError> {
        self.cpu_stat
            .read_keyed("usage_usec")
            .map(Duration::from_micros)
    }

    pub(super) fn usage(&self, base: &Baseline) -> Result<Usage, CgroupError> {
        Ok(Usage {
            cpu: self.cpu_total()?.saturating_sub(base.cpu),
            // The fd-local peak starts at the usage at reset time, like v1's max_usage.
            memory_peak: self.peak.read_u64()?.saturating_sub(base.memory),
            oom_kills: self
                .events
                .read_keyed("oom_kill")?
                .saturating_sub(base.oom_kills),
        })
    }

    pub(super) fn procs(&self) -> &Control {
        &self.procs
    }

    pub(super) fn kill_all(&self) -> Result<(), CgroupError> {
        write(&self.dir.join("cgroup.kill"), "1")?;
        let text = self.procs.read_string()?;
        kill_and_wait(text.split_whitespace().filter_map(|p| p.parse().ok()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CgroupMode, CgroupTree, SlotCgroup};
    use super::*;

    fn fake_root(controllers: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.controllers"), controllers).unwrap();
        fs::write(d.path().join("cgroup.subtree_control"), "").unwrap();
        fs::write(d.path().join("cgroup.procs"), "").unwrap();
        d
    }

    fn populate(slot: &Path) {
        for (f, v) in [
            ("memory.current", "2097152\n"),
            // 1 MiB held by cod's processes, 1 MiB of page cache.
            ("memory.stat", "anon 1048576\nfile 1048576\nkernel 0\n"),
            ("memory.peak", "0\n"),
            ("memory.max", "max\n"),
            ("memory.swap.max", "max\n"),
            ("pids.max", "max\n"),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
            ),
            (
                "cpu.stat",
                "usage_usec 1000\nuser_usec 800\nsystem_usec 200\n",
            ),
            ("cgroup.procs", ""),
            ("cgroup.kill", ""),
            ("pids.current", "3\n"),
        ] {
            fs::write(slot.join(f), v).unwrap();
        }
    }

    #[test]
    fn v2_is_chosen_by_auto_when_controllers_exist() {
        let root = fake_root("cpuset cpu io memory hugetlb pids rdma misc\n");
        assert_eq!(
            CgroupTree::detect(CgroupMode::Auto, root.path()).unwrap(),
            CgroupMode::V2
        );
        let bare = fake_root("cpuset io\n");
        let err = CgroupTree::detect(CgroupMode::V2, bare.path()).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn v2_no_quota_when_cpus_is_zero_on_fake_tree() {
        let root = fake_root("cpu memory pids\n");
        let tree = CgroupTree::create(CgroupMode::V2, root.path(), "cod", 556, 0).unwrap();
        let _ = tree.slot(0).unwrap();
        let max = root.path().join("cod/556/slot-0/cpu.max");
        assert_eq!(fs::read_to_string(max).unwrap(), "max 100000");
        tree.remove().unwrap();
    }

    #[test]
    fn v2_slot_limits_attach_usage_and_kill_on_fake_tree() {
        let root = fake_root("cpu memory pids\n");
        let tree = CgroupTree::create(CgroupMode::V2, root.path(), "cod", 555, 1).unwrap();
        assert_eq!(tree.mode(), CgroupMode::V2);
        assert_eq!(
            fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
            "+memory +pids +cpu"
        );
        let dir = root.path().join("cod/555/slot-0");
        let slot = tree.slot(0).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "100000 100000"
        );
        populate(&dir);
        assert!(matches!(slot, SlotCgroup::V2(_)));

        let base = slot
            .prepare(CgroupLimits {
                memory: 128 << 20,
                pids: 17,
            })
            .unwrap();
        // The run's allowance comes on top of what is held already (not page cache).
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            ((128u64 << 20) + 1048576).to_string()
        );
        assert_eq!(
            fs::read_to_string(dir.join("memory.swap.max")).unwrap(),
            "0"
        );
        assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "20");
        assert_eq!(
            fs::read_to_string(dir.join("memory.peak")).unwrap(),
            "reset\n"
        );

        slot.attach(4321).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
            "4321"
        );
        assert_eq!(slot.procs().unwrap(), vec![4321]);

        // The stage ran: 30 ms of CPU, peak 10 MiB (8 MiB above the baseline), two OOM kills.
        fs::write(
            dir.join("cpu.stat"),
            "usage_usec 31000\nuser_usec 1\nsystem_usec 1\n",
        )
        .unwrap();
        fs::write(dir.join("memory.peak"), format!("{}\n", 10u64 << 20)).unwrap();
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        let u = slot.usage(&base).unwrap();
        assert_eq!(u.cpu, Duration::from_millis(30));
        assert_eq!(u.memory_peak, 8 << 20);
        assert_eq!(u.oom_kills, 2);

        fs::write(dir.join("cgroup.procs"), "").unwrap();
        slot.kill_all().unwrap();
        assert_eq!(fs::read_to_string(dir.join("cgroup.kill")).unwrap(), "1");

        tree.remove().unwrap();
        assert!(!root.path().join("cod/555").exists());
    }
}
