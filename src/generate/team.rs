//! A fixed team of threads for the one-token forward pass, in the manner of OpenMP's
//! `parallel for`: the caller and `size − 1` helper threads run each stage together (every
//! member takes its static share: member `i` of `T` does rows `i·R/T..(i+1)·R/T`), and the
//! helpers spin between stages instead of going to sleep.
//!
//! Why not rayon here: decoding one token is ~30 short parallel regions (5 per layer plus
//! the classifier), each a few microseconds of memory-bound work. With a work-stealing pool
//! the idle worker yields and then sleeps between regions, and waking it costs a futex and a
//! scheduler pass per region; on stories15m that was ~10% of the time per token. A spinning
//! helper picks a stage up within a few hundred nanoseconds. It spins for a bounded time
//! (a few milliseconds, longer than any gap between stages or tokens) and then parks, so an
//! idle [`Team`] does not hold a core; [`Team::run`] unparks it.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle helper spins (checking for the next stage) before it parks.
const SPIN_FOR: Duration = Duration::from_millis(5);

/// One stage's job: called once per member with the member's index.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped by [`Team::run`] to start a stage (or to wake helpers for exit).
    epoch: AtomicU64,
    /// Helpers that have not finished the current stage.
    pending: AtomicUsize,
    /// Points at the current stage's [`Job`] (a fat reference on the caller's stack),
    /// valid from the epoch bump until `pending` reaches zero.
    job: AtomicPtr<()>,
    /// A helper's job panicked in the current stage.
    panicked: AtomicBool,
    quit: AtomicBool,
}

/// The caller plus spinning helper threads; see the module docs.
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
}

impl Team {
    /// A team of `size` members (the caller counts as one; `size ≤ 1` runs every stage on
    /// the caller alone).
    pub fn new(size: usize) -> Team {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            panicked: AtomicBool::new(false),
            quit: AtomicBool::new(false),
        });
        let mut helpers = Vec::new();
        for index in 1..size.max(1) {
            let sh = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("anetrain-gen-{index}"))
                .spawn(move || helper(&sh, index));
            match spawned {
                Ok(h) => helpers.push(h),
                // Fewer threads than asked is slower, not wrong.
                Err(_) => break,
            }
        }
        Team { shared, helpers }
    }

    /// Members, the caller included.
    pub fn size(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `job(i)` for every member index `i` in `0..size()`, the caller taking index 0,
    /// and returns when all have finished. A panic in a helper's share is re-raised here.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.helpers.is_empty() {
            job(0);
            return;
        }
        let sh = &*self.shared;
        let job_ref: Job = job;
        sh.job
            .store(&job_ref as *const Job as *mut (), Ordering::Relaxed);
        sh.pending.store(self.helpers.len(), Ordering::Relaxed);
        // Release: the job pointer and the pending count are visible to a helper that sees
        // the new epoch.
        sh.epoch.fetch_add(1, Ordering::Release);
        for h in &self.helpers {
            h.thread().unpark();
        }
        // The helpers may still be reading `job_ref` if our share panics: wait for them
        // before unwinding past it.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(0)));
        let mut spins = 0u32;
        while sh.pending.load(Ordering::Acquire) != 0 {
            spins = spins.saturating_add(1);
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if sh.panicked.swap(false, Ordering::Relaxed) {
            panic!("a generation worker thread panicked");
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        for h in self.helpers.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn helper(sh: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let idle_since = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            let e = sh.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) {
                std::hint::spin_loop();
            } else if idle_since.elapsed() > SPIN_FOR {
                // Woken by `run` (unpark) or spuriously; either way the loop re-checks.
                std::thread::park();
            }
        };
        seen = epoch;
        if sh.quit.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: `run` stored a pointer to a live `Job` before bumping the epoch (Acquire
        // above pairs with its Release) and keeps it alive until `pending` reaches zero,
        // which happens only after this call returns.
        let job: Job = unsafe { *(sh.job.load(Ordering::Relaxed) as *const Job) };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(index))).is_err() {
            sh.panicked.store(true, Ordering::Relaxed);
        }
        sh.pending.fetch_sub(1, Ordering::Release);
    }
}

/// A raw pointer to an output buffer whose disjoint parts the members of a stage write.
#[derive(Clone, Copy)]
pub struct SharedOut(pub *mut f32);
// SAFETY: used only to hand disjoint parts of one buffer to the members of a stage.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so that closures capture the whole `SharedOut`).
    pub fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Member `i`'s share `lo..hi` of `len` items split into `t` near-equal static parts.
pub fn share(i: usize, t: usize, len: usize) -> (usize, usize) {
    (i * len / t, (i + 1) * len / t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_member_runs_each_stage_once() {
        for size in [1, 2, 3] {
            let team = Team::new(size);
            assert_eq!(team.size(), size);
            let mut out = vec![0usize; 1000];
            for stage in 1..=50 {
                let p = SharedOut(out.as_mut_ptr() as *mut f32);
                let calls = AtomicUsize::new(0);
                team.run(&|i| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    let (lo, hi) = share(i, size, 1000);
                    for j in lo..hi {
                        // SAFETY: shares are disjoint and inside `out`.
                        unsafe { *(p.ptr() as *mut usize).add(j) += stage };
                    }
                });
                assert_eq!(calls.load(Ordering::Relaxed), size);
            }
            assert!(out.iter().all(|&v| v == 50 * 51 / 2));
        }
    }

    #[test]
    fn idle_helpers_park_and_wake() {
        let team = Team::new(2);
        std::thread::sleep(SPIN_FOR * 3);
        let hits = AtomicUsize::new(0);
        team.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_panic_in_a_helper_reaches_the_caller() {
        let team = Team::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.run(&|i| assert_ne!(i, 1, "helper share fails"))
        }));
        assert!(r.is_err());
        // The team still works afterwards.
        let hits = AtomicUsize::new(0);
        team.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }
}
