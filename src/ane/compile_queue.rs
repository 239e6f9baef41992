//! Compiles off the critical path: the static pipeline bakes weights into its programs, so
//! every weight update recompiles them. A [`CompileQueue`] runs a device's
//! [`Compiler`] on a thread of its own; the backend submits a new weight version's programs in
//! the order the step will need them and waits for each only when it is about to evaluate it,
//! so a program compiles while the ones before it evaluate.
//!
//! Two clocks say how much of the compile time stayed on the critical path:
//! - the wall clock: how long the backend actually blocked in [`CompileQueue::wait`];
//! - the Neural Engine's [`Timeline`], in the device's own estimates (the simulator's cost
//!   model: evaluation and compile milliseconds of the hardware, not of the simulator), which
//!   makes the overlap visible and deterministic on a machine without a Neural Engine. It
//!   counts only Neural Engine time (the CPU work between kernels would hide more), so its
//!   exposed compile time is an upper bound.

use crate::ane::device::{Compiled, Compiler};
use crate::ane::mil::Program;
use anyhow::{anyhow, Result};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

/// The Neural Engine's time line in estimated milliseconds: evaluations run one after
/// another; a compiler compiles one program at a time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    /// Where the device is (end of its last evaluation or wait).
    pub now_ms: f64,
    /// When the compiler finishes what it was given so far.
    compiler_free_ms: f64,
    /// Compile time in all.
    pub compile_ms: f64,
    /// Compile time the device spent waiting.
    pub exposed_ms: f64,
}

impl Timeline {
    /// An evaluation of `ms`.
    pub fn eval(&mut self, ms: f64) {
        self.now_ms += ms;
    }

    /// A compile on the critical path (no background compiler): all of it is exposed.
    pub fn serial_compile(&mut self, ms: f64) {
        self.compile_ms += ms;
        self.exposed_ms += ms;
        self.now_ms += ms;
    }

    /// A background compile of `ms` submitted at `submitted_ms`: when it is done.
    pub fn background_compile(&mut self, submitted_ms: f64, ms: f64) -> f64 {
        let start = submitted_ms.max(self.compiler_free_ms);
        self.compiler_free_ms = start + ms;
        self.compile_ms += ms;
        self.compiler_free_ms
    }

    /// The device needs a program that is ready at `ready_ms`.
    pub fn need(&mut self, ready_ms: f64) {
        if ready_ms > self.now_ms {
            self.exposed_ms += ready_ms - self.now_ms;
            self.now_ms = ready_ms;
        }
    }
}

/// A submitted compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

struct Done {
    ticket: u64,
    result: Result<Compiled>,
    wall_ms: f64,
}

/// What [`CompileQueue::wait`] hands back.
pub struct Ready {
    pub compiled: Compiled,
    /// Wall time of the compile on the background thread.
    pub compile_wall_ms: f64,
    /// Wall time the caller blocked waiting for it.
    pub waited_ms: f64,
}

/// A background compile thread (see the module doc). Programs compile in submission order.
pub struct CompileQueue {
    jobs: Option<mpsc::Sender<(u64, Program)>>,
    done: mpsc::Receiver<Done>,
    worker: Option<JoinHandle<()>>,
    next: u64,
    /// Finished, not yet collected.
    finished: BTreeMap<u64, Done>,
    /// Virtual submission time of each ticket not yet placed on the time line.
    submitted_ms: BTreeMap<u64, f64>,
    /// Virtual completion times of the tickets placed so far.
    ready_ms: BTreeMap<u64, f64>,
    /// Compile wall time of every program so far.
    pub compile_wall_ms: f64,
    /// Wall time the caller blocked in `wait`.
    pub waited_ms: f64,
}

impl CompileQueue {
    /// Starts the compile thread.
    pub fn new(mut compiler: Box<dyn Compiler>) -> Result<CompileQueue> {
        let (jtx, jrx) = mpsc::channel::<(u64, Program)>();
        let (dtx, drx) = mpsc::channel::<Done>();
        let worker = std::thread::Builder::new()
            .name("ane-compile".into())
            .spawn(move || {
                for (ticket, p) in jrx {
                    let t0 = Instant::now();
                    let result = compiler.compile(&p);
                    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
                    if dtx
                        .send(Done {
                            ticket,
                            result,
                            wall_ms,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
            })
            .map_err(|e| anyhow!("cannot start the background compile thread: {e}"))?;
        Ok(CompileQueue {
            jobs: Some(jtx),
            done: drx,
            worker: Some(worker),
            next: 0,
            finished: BTreeMap::new(),
            submitted_ms: BTreeMap::new(),
            ready_ms: BTreeMap::new(),
            compile_wall_ms: 0.0,
            waited_ms: 0.0,
        })
    }

    /// Queues `p`; `tl` dates the submission on the Neural Engine's time line.
    pub fn submit(&mut self, p: Program, tl: &Timeline) -> Result<Ticket> {
        let t = self.next;
        self.next += 1;
        self.submitted_ms.insert(t, tl.now_ms);
        self.jobs
            .as_ref()
            .ok_or_else(|| anyhow!("the compile queue is closed"))?
            .send((t, p))
            .map_err(|_| anyhow!("the background compile thread has stopped"))?;
        Ok(Ticket(t))
    }

    /// Programs submitted and not yet collected.
    pub fn pending(&self) -> usize {
        self.submitted_ms.len() + self.ready_ms.len()
    }

    /// Blocks until `t` is compiled. Its estimated compile time (the device's cost model; 0
    /// on hardware) places it and every earlier submission on the time line, which then
    /// waits for it.
    pub fn wait(&mut self, t: Ticket, tl: &mut Timeline) -> Result<Ready> {
        let t0 = Instant::now();
        while !self.finished.contains_key(&t.0) {
            let d = self
                .done
                .recv()
                .map_err(|_| anyhow!("the background compile thread stopped unexpectedly"))?;
            self.compile_wall_ms += d.wall_ms;
            self.finished.insert(d.ticket, d);
        }
        let waited_ms = t0.elapsed().as_secs_f64() * 1e3;
        self.waited_ms += waited_ms;
        // Place every finished submission up to `t` on the time line, in submission order.
        let upto: Vec<u64> = self.submitted_ms.range(..=t.0).map(|(k, _)| *k).collect();
        for k in upto {
            let Some(d) = self.finished.get(&k) else {
                break;
            };
            let est = match &d.result {
                Ok(c) => c.est_compile_ms.unwrap_or(0.0),
                Err(_) => 0.0,
            };
            let sub = self.submitted_ms.remove(&k).unwrap_or(tl.now_ms);
            let ready = tl.background_compile(sub, est);
            self.ready_ms.insert(k, ready);
        }
        let d = self.finished.remove(&t.0).expect("collected above");
        if let Some(ready) = self.ready_ms.remove(&t.0) {
            tl.need(ready);
        }
        let compiled = d.result?;
        Ok(Ready {
            compiled,
            compile_wall_ms: d.wall_ms,
            waited_ms,
        })
    }
}

impl Drop for CompileQueue {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current compile; programs it
        // finishes afterwards are dropped with the receiver.
        self.jobs.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_hides_compiles_behind_evaluations() {
        // Three programs of 10 ms compile each, submitted together at t = 0; each evaluates
        // for 20 ms. Serially: 30 ms of compile exposed. In the background: program 0 ready at
        // 10 (exposed 10), evaluated until 30; program 1 ready at 20 < 30; program 2 ready
        // at 30 ≤ 50: only the first compile is exposed.
        let mut serial = Timeline::default();
        for _ in 0..3 {
            serial.serial_compile(10.0);
            serial.eval(20.0);
        }
        assert_eq!(serial.exposed_ms, 30.0);
        assert_eq!(serial.now_ms, 90.0);

        let mut bg = Timeline::default();
        let ready: Vec<f64> = (0..3).map(|_| bg.background_compile(0.0, 10.0)).collect();
        assert_eq!(ready, vec![10.0, 20.0, 30.0]);
        for r in ready {
            bg.need(r);
            bg.eval(20.0);
        }
        assert_eq!(bg.exposed_ms, 10.0);
        assert_eq!(bg.now_ms, 70.0);
        assert_eq!(bg.compile_ms, 30.0);
    }

    #[test]
    fn timeline_exposes_compiles_longer_than_the_evaluations() {
        // Compiles of 30 ms behind evaluations of 10 ms: the device waits for each.
        let mut bg = Timeline::default();
        let ready: Vec<f64> = (0..3).map(|_| bg.background_compile(0.0, 30.0)).collect();
        for r in ready {
            bg.need(r);
            bg.eval(10.0);
        }
        // ready at 30, 60, 90; device: wait 30, eval to 40, wait 20 to 60, eval to 70,
        // wait 20 to 90, eval to 100.
        assert_eq!(bg.exposed_ms, 70.0);
        assert_eq!(bg.now_ms, 100.0);
    }
}
