//! cgroup v1: one directory per controller (`memory`, `pids`, `cpu`, `cpuacct`).
//!
//! Files used: `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (when swap accounting
//! is on), `memory.max_usage_in_bytes` (reset by writing 0), `memory.usage_in_bytes`,
//! `memory.oom_control` (`oom_kill` counter), `pids.max`, `cpu.cfs_quota_us`/`cfs_period_us`,
//! `cpuacct.usage` (nanoseconds) and `cgroup.procs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    Baseline, CgroupError, CgroupLimits, Control, Usage, mkdir, remove_stale_instances,
    remove_tree, write,
};

const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "cpuacct"];
const CFS_PERIOD_US: u64 = 100_000;

/// Checks that every controller cod needs is mounted under `root`.
pub(super) fn usable(root: &Path) -> Result<(), String> {
    for c in CONTROLLERS {
        let dir = root.join(c);
        if !dir.join("cgroup.procs").exists() {
            return Err(format!(
                "controller {c} is not mounted at {}",
                dir.display()
            ));
        }
    }
    Ok(())
}

/// The instance directories, one per controller.
#[derive(Debug)]
pub struct Tree {
    /// `<root>/<controller>/<name>/<instance>`, in `CONTROLLERS` order.
    dirs: [PathBuf; 4],
    cpus: u32,
}

/// One slot's control files (kept open, see [`Control`]).
#[derive(Debug)]
pub struct Slot {
    usage: Control,
    stat: Control,
    limit: Control,
    /// `memory.memsw.limit_in_bytes` and `memory.memsw.max_usage_in_bytes`, when swap
    /// accounting is on.
    memsw: Option<(Control, Control)>,
    peak: Control,
    oom: Control,
    pids_current: Control,
    pids_max: Control,
    cpu: Control,
    procs: Control,
    /// Directories to write a pid into to attach it: `cpu` and `cpuacct` may be one
    /// co-mounted hierarchy.
    attach: Vec<PathBuf>,
}

impl Tree {
    pub(super) fn create(
        root: &Path,
        name: &str,
        instance: u32,
        cpus: u32,
    ) -> Result<Tree, CgroupError> {
        let dirs = CONTROLLERS.map(|c| root.join(c).join(name).join(instance.to_string()));
        for c in CONTROLLERS {
            let parent = root.join(c).join(name);
            mkdir(&parent)?;
            remove_stale_instances(&parent, instance, "cgroup.procs");
        }
        for d in &dirs {
            // A leftover directory with our own pid belongs to a dead earlier process.
            remove_tree(d, "cgroup.procs")?;
            mkdir(d)?;
        }
        Ok(Tree { dirs, cpus })
    }

    pub(super) fn instance_dirs(&self) -> Vec<PathBuf> {
        self.dirs.to_vec()
    }

    pub(super) fn slot(&self, n: u32) -> Result<Slot, CgroupError> {
        let name = format!("slot-{n}");
        let [memory, pids, cpu, cpuacct] = self.dirs.clone().map(|d| d.join(&name));
        let fresh = !cpu.exists();
        for d in [&memory, &pids, &cpu, &cpuacct] {
            mkdir(d)?;
        }
        if fresh {
            // A quota of `cpus` CPUs, or none (-1): then slots share the CPUs by their equal
            // weights, each getting one CPU's worth under contention and more when CPUs idle.
            write(&cpu.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
            let quota = match self.cpus {
                0 => "-1".to_owned(),
                n => (CFS_PERIOD_US * u64::from(n)).to_string(),
            };
            write(&cpu.join("cpu.cfs_quota_us"), &quota)?;
        }
        let same_cpu = cpu.canonicalize().ok() == cpuacct.canonicalize().ok();
        let mut attach = vec![memory.clone(), pids.clone(), cpu.clone()];
        if !same_cpu {
            attach.push(cpuacct.clone());
        }
        let memsw = memory
            .join("memory.memsw.limit_in_bytes")
            .exists()
            .then(|| {
                (
                    Control::writable(memory.join("memory.memsw.limit_in_bytes")),
                    Control::writable(memory.join("memory.memsw.max_usage_in_bytes")),
                )
            });
        Ok(Slot {
            usage: Control::read_only(memory.join("memory.usage_in_bytes")),
            stat: Control::read_only(memory.join("memory.stat")),
            limit: Control::writable(memory.join("memory.limit_in_bytes")),
            memsw,
            peak: Control::writable(memory.join("memory.max_usage_in_bytes")),
            oom: Control::read_only(memory.join("memory.oom_control")),
            pids_current: Control::read_only(pids.join("pids.current")),
            pids_max: Control::writable(pids.join("pids.max")),
            cpu: Control::read_only(cpuacct.join("cpuacct.usage")),
            procs: Control::read_only(pids.join("cgroup.procs")),
            attach,
        })
    }

    pub(super) fn remove(&self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            remove_tree(d, "cgroup.procs")?;
        }
        Ok(())
    }
}

impl Slot {
    pub(super) fn controls(&self) -> impl Iterator<Item = &Control> {
        let memsw = self.memsw.iter().flat_map(|(a, b)| [a, b]);
        [
            &self.usage,
            &self.stat,
            &self.limit,
            &self.peak,
            &self.oom,
            &self.pids_current,
            &self.pids_max,
            &self.cpu,
            &self.procs,
        ]
        .into_iter()
        .chain(memsw)
    }

    pub(super) fn prepare(&self, limits: CgroupLimits) -> Result<Baseline, CgroupError> {
        // What cod's own processes (and a zygote) hold, apart from reclaimable page cache,
        // is not the run's: the run may use its limit on top of it.
        let usage = self.usage.read_u64()?;
        let cache = self.stat.read_keyed("total_cache").unwrap_or(0);
        let held = usage.saturating_sub(cache);
        let limit = limits.memory.saturating_add(held).to_string();
        if let Some((memsw_limit, memsw_peak)) = &self.memsw {
            // memsw must stay >= the memory limit at every step: lift it, set memory, then
            // set memsw to the same value so that swap adds nothing.
            memsw_limit.write("-1")?;
            self.limit.write(&limit)?;
            memsw_limit.write(&limit)?;
            memsw_peak.write("0")?;
        } else {
            self.limit.write(&limit)?;
        }
        self.peak.write("0")?;
        // The tasks already there (cod's own, or one still exiting) do not eat into the
        // run's allowance.
        let current = self.pids_current.read_u64()?;
        self.pids_max
            .write(&current.saturating_add(limits.pids).to_string())?;
        Ok(Baseline {
            cpu: self.cpu_total()?,
            memory: self.usage.read_u64()?,
            oom_kills: self.oom.read_keyed("oom_kill")?,
        })
    }

    pub(super) fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        for d in &self.attach {
            write(&d.join("cgroup.procs"), &pid)?;
        }
        Ok(())
    }

    pub(super) fn cpu_total(&self) -> Result<Duration, CgroupError> {
        self.cpu.read_u64().map(Duration::from_nanos)
    }

    pub(super) fn usage(&self, base: &Baseline) -> Result<Usage, CgroupError> {
        let peak = match &self.memsw {
            Some((_, memsw_peak)) => memsw_peak.read_u64()?.max(self.peak.read_u64()?),
            None => self.peak.read_u64()?,
        };
        Ok(Usage {
            cpu: self.cpu_total()?.saturating_sub(base.cpu),
            memory_peak: peak.saturating_sub(base.memory),
            oom_kills: self
                .oom
                .read_keyed("oom_kill")?
                .saturating_sub(base.oom_kills),
        })
    }

    pub(super) fn procs(&self) -> &Control {
        &self.procs
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CgroupMode, CgroupTree, SlotCgroup};
    use super::*;
    use std::fs;

    /// A fake v1 cgroupfs: directories for each controller whose new children get the
    /// control files the kernel would create.
    fn fake_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for c in CONTROLLERS {
            fs::create_dir_all(d.path().join(c)).unwrap();
            fs::write(d.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        d
    }

    fn populate(slot: &Path, controller: &str) {
        let files: &[(&str, &str)] = match controller {
            "memory" => &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.memsw.limit_in_bytes", "9223372036854771712\n"),
                ("memory.max_usage_in_bytes", "0\n"),
                ("memory.memsw.max_usage_in_bytes", "0\n"),
                ("memory.usage_in_bytes", "1048576\n"),
                // 768 KiB held by cod's processes, 256 KiB of page cache.
                (
                    "memory.stat",
                    "cache 262144\nrss 786432\ntotal_cache 262144\ntotal_rss 786432\n",
                ),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n",
                ),
            ],
            "pids" => &[("pids.max", "max\n"), ("pids.current", "2\n")],
            "cpuacct" => &[("cpuacct.usage", "5000000\n")],
            _ => &[],
        };
        for (f, v) in files {
            fs::write(slot.join(f), v).unwrap();
        }
        fs::write(slot.join("cgroup.procs"), "").unwrap();
    }

    #[test]
    fn v1_slot_limits_attach_and_usage_on_fake_tree() {
        let root = fake_root();
        let tree = CgroupTree::create(CgroupMode::V1, root.path(), "cod", 4242, 1).unwrap();
        assert_eq!(tree.mode(), CgroupMode::V1);
        let _ = tree.slot(3).unwrap();
        for c in CONTROLLERS {
            populate(&root.path().join(c).join("cod/4242/slot-3"), c);
        }
        let slot = tree.slot(3).unwrap();
        let SlotCgroup::V1(ref s) = slot else {
            panic!("expected v1")
        };
        assert!(s.memsw.is_some());
        let base = slot
            .prepare(CgroupLimits {
                memory: 256 << 20,
                pids: 65,
            })
            .unwrap();
        let mem = root.path().join("memory/cod/4242/slot-3");
        // The run's allowance comes on top of what is held already (not page cache).
        assert_eq!(
            fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            ((256u64 << 20) + 786432).to_string()
        );
        assert_eq!(
            fs::read_to_string(mem.join("memory.memsw.limit_in_bytes")).unwrap(),
            ((256u64 << 20) + 786432).to_string()
        );
        assert_eq!(
            fs::read_to_string(root.path().join("pids/cod/4242/slot-3/pids.max")).unwrap(),
            "67"
        );
        let cpu = root.path().join("cpu/cod/4242/slot-3");
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap(),
            "100000"
        );

        slot.attach(777).unwrap();
        for c in CONTROLLERS {
            let p = root.path().join(c).join("cod/4242/slot-3/cgroup.procs");
            assert_eq!(fs::read_to_string(p).unwrap(), "777", "{c}");
        }

        // The stage ran: 20 ms more CPU, a 5 MiB peak over the 1 MiB baseline, one OOM kill.
        fs::write(
            root.path().join("cpuacct/cod/4242/slot-3/cpuacct.usage"),
            "25000000",
        )
        .unwrap();
        fs::write(
            mem.join("memory.max_usage_in_bytes"),
            (6u64 << 20).to_string(),
        )
        .unwrap();
        fs::write(
            mem.join("memory.memsw.max_usage_in_bytes"),
            (6u64 << 20).to_string(),
        )
        .unwrap();
        fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
        )
        .unwrap();
        let u = slot.usage(&base).unwrap();
        assert_eq!(u.cpu, Duration::from_millis(20));
        assert_eq!(u.memory_peak, 5 << 20);
        assert_eq!(u.oom_kills, 1);

        tree.remove().unwrap();
        for c in CONTROLLERS {
            assert!(!root.path().join(c).join("cod/4242").exists());
        }
    }

    #[test]
    fn no_quota_when_cpus_is_zero() {
        let root = fake_root();
        let tree = CgroupTree::create(CgroupMode::V1, root.path(), "cod", 4244, 0).unwrap();
        let _ = tree.slot(0).unwrap();
        let quota = root.path().join("cpu/cod/4244/slot-0/cpu.cfs_quota_us");
        assert_eq!(fs::read_to_string(quota).unwrap(), "-1");
        tree.remove().unwrap();
    }

    #[test]
    fn stale_instances_are_removed() {
        let root = fake_root();
        // pid 0 never names a live process.
        fs::create_dir_all(root.path().join("memory/cod/0/slot-0")).unwrap();
        let tree = CgroupTree::create(CgroupMode::V1, root.path(), "cod", 4243, 1).unwrap();
        assert!(!root.path().join("memory/cod/0").exists());
        assert!(root.path().join("memory/cod/4243").exists());
        tree.remove().unwrap();
    }
}
