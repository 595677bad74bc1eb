//! glibc's malloc, set for a long-running gateway: large blocks given back,
//! and two arenas.
//!
//! - **Large blocks go back to the system.** glibc serves a request of
//!   [`MMAP_THRESHOLD`] bytes or more with a mapping of its own, which
//!   `free` unmaps. By default the threshold is not fixed: each time such a
//!   block is freed it rises to that block's size (up to 32 MiB on 64-bit),
//!   so that the next ones come from the heap instead. A gateway grows a few
//!   large vectors as it learns its series (the store's heads, the
//!   dictionary, the live view), and each growth frees the vector it
//!   outgrew: after the heads' vector moved from 5.8 to 11.5 MB, every block
//!   under 5.8 MB came from the heap, and what the heap held after those
//!   were freed stayed in the process. Fixing the threshold at glibc's own
//!   starting value keeps large blocks in mappings: under `modbus_load`
//!   (100 000 series, 10% changing) the gateway's anonymous memory at 60 s
//!   went from 48.5-50.6 to 41.0-43.1 MiB, and from 44.8 to 36.6 with
//!   values steady, at no CPU the bench resolves (about 45 more page faults
//!   a second).
//! - **Two arenas** ([`ARENAS`]). glibc gives each thread that allocates
//!   under contention an arena of its own, up to eight per core, and memory
//!   freed in one stays there while another grows. The systemd unit and the
//!   container image have set `MALLOC_ARENA_MAX=2` since docs/deploy.md's
//!   measurements (122-126 against 141-149 MiB at 300 s); a bare binary now
//!   gets the same.
//!
//! docs/gateway.md, "Where the memory goes", has the runs. Each setting
//! gives way to the environment: `MALLOC_MMAP_THRESHOLD_` and
//! `MALLOC_ARENA_MAX`, or `glibc.malloc.mmap_threshold` and
//! `glibc.malloc.arena_max` in `GLIBC_TUNABLES`, are left to glibc.
//!
//! Only glibc has these knobs; on other C libraries [`tune`] does nothing.
//!
//! **The one `unsafe` in the crate.** `mallopt` is a C function, so calling
//! it takes an `unsafe` block; no safe binding of it is well kept, and the
//! settings cannot be made from outside the process once it runs (glibc
//! reads its environment before `main`). The call passes two integers and
//! touches no memory of ours. The crate denies `unsafe_code` (the workspace
//! forbids it) so that this module alone can allow it.

use std::ffi::c_int;

/// glibc's starting threshold, 128 KiB, kept fixed (a C `int`, as
/// `mallopt` takes it).
pub const MMAP_THRESHOLD: c_int = 128 * 1024;

/// Malloc arenas: the main heap and one more.
pub const ARENAS: c_int = 2;

/// One of glibc's settings, as [`tune`] makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `M_MMAP_THRESHOLD`, to [`MMAP_THRESHOLD`].
    MmapThreshold,
    /// `M_ARENA_MAX`, to [`ARENAS`].
    ArenaMax,
}

impl Setting {
    /// Every setting, in the order [`tune`] makes them.
    pub const ALL: [Setting; 2] = [Setting::MmapThreshold, Setting::ArenaMax];

    /// The environment variable and the `GLIBC_TUNABLES` name that set it.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Setting::MmapThreshold => ("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
            Setting::ArenaMax => ("MALLOC_ARENA_MAX", "glibc.malloc.arena_max"),
        }
    }

    fn value(self) -> c_int {
        match self {
            Setting::MmapThreshold => MMAP_THRESHOLD,
            Setting::ArenaMax => ARENAS,
        }
    }

    /// Whether the environment already makes this setting.
    fn set_by(self, var: impl Fn(&str) -> Option<String>) -> bool {
        let (variable, tunable) = self.names();
        var(variable).is_some() || var("GLIBC_TUNABLES").is_some_and(|t| t.contains(tunable))
    }
}

/// What [`tune`] did with one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuned {
    /// Made.
    Made,
    /// The environment makes it itself: left alone.
    LeftToTheEnvironment,
    /// The allocator refused it, or is not glibc's.
    NotAvailable,
}

/// Makes each [`Setting`] the environment does not. Call it first thing in
/// `main`, before any thread starts.
pub fn tune() -> [(Setting, Tuned); 2] {
    Setting::ALL.map(|setting| {
        let tuned = if setting.set_by(|name| std::env::var(name).ok()) {
            Tuned::LeftToTheEnvironment
        } else {
            make(setting)
        };
        (setting, tuned)
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn make(setting: Setting) -> Tuned {
    let parameter = match setting {
        Setting::MmapThreshold => libc::M_MMAP_THRESHOLD,
        Setting::ArenaMax => libc::M_ARENA_MAX,
    };
    // SAFETY: mallopt takes two ints and changes the allocator's settings
    // under its own lock; no memory is handed over.
    match unsafe { libc::mallopt(parameter, setting.value()) } {
        1 => Tuned::Made,
        _ => Tuned::NotAvailable,
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn make(_: Setting) -> Tuned {
    Tuned::NotAvailable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_environment_s_own_settings_win() {
        use Setting::*;
        for setting in Setting::ALL {
            assert!(!setting.set_by(env(&[])));
        }
        assert!(MmapThreshold.set_by(env(&[("MALLOC_MMAP_THRESHOLD_", "65536")])));
        assert!(!ArenaMax.set_by(env(&[("MALLOC_MMAP_THRESHOLD_", "65536")])));
        assert!(ArenaMax.set_by(env(&[("MALLOC_ARENA_MAX", "8")])));
        assert!(!MmapThreshold.set_by(env(&[("MALLOC_ARENA_MAX", "8")])));
        let tunables = env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=65536",
        )]);
        assert!(MmapThreshold.set_by(&tunables));
        assert!(ArenaMax.set_by(&tunables));
        let arenas_only = env(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")]);
        assert!(!MmapThreshold.set_by(&arenas_only));
        assert!(ArenaMax.set_by(&arenas_only));
    }

    /// After a large block is freed, a smaller large block is still a
    /// mapping of its own (glibc's default would take it from the heap,
    /// and keep the heap's pages once it is freed).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_large_block_is_mapped_after_a_larger_one_was_freed() {
        let tuned = tune();
        if tuned[0].1 == Tuned::LeftToTheEnvironment {
            return; // the environment chose; nothing to check
        }
        assert_eq!(tuned[0], (Setting::MmapThreshold, Tuned::Made));
        // SAFETY: mallinfo2 returns a struct by value and touches nothing.
        #[allow(unsafe_code)]
        let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
        // Other tests allocate beside this one; one clean try of a few
        // is enough, and with the threshold left dynamic none passes.
        let mut tries = Vec::new();
        for _ in 0..5 {
            // Raises glibc's dynamic threshold to 8 MiB, were it dynamic.
            drop(std::hint::black_box(vec![1u8; 8 << 20]));
            let before = mapped();
            let block = std::hint::black_box(vec![1u8; 1 << 20]);
            let after = mapped();
            drop(block);
            if after >= before + (1 << 20) {
                return;
            }
            tries.push((before, after));
        }
        panic!(
            "a 1 MiB block is never a mapping of its own: mapped bytes before and after {tries:?}"
        );
    }
}
