//! The seam between the Neural Engine backend and a device: the real one through the private
//! runtime ([`crate::ane::private`]) or the simulated one ([`crate::ane::sim`]).
//!
//! The trait mirrors the runtime's own model: programs are compiled from MIL text plus a
//! weight dictionary and loaded; fp16 surfaces are created once and written/read under a
//! lock; a request binds one input and one output surface to a program and evaluates it
//! synchronously. Everything above this trait (MIL generation, blobs, packing, the compile
//! budget) is shared by `ane` and `ane-sim`.

use crate::ane::mil::Program;
use anyhow::{anyhow, bail, Result};
use half::f16;
use std::any::Any;

/// A program compiled and loaded away from the device's thread, waiting for
/// [`Device::install`] to give it a [`ProgramId`].
pub struct Compiled {
    program: Box<dyn Any + Send>,
    /// The device's estimate of the compile + load time (the simulator's cost model);
    /// `None` on hardware.
    pub est_compile_ms: Option<f64>,
}

impl Compiled {
    pub fn new<T: Any + Send>(program: T, est_compile_ms: Option<f64>) -> Compiled {
        Compiled {
            program: Box::new(program),
            est_compile_ms,
        }
    }
    /// The device's own representation (a device installs only what its compiler made).
    pub fn take<T: Any>(self) -> Result<T> {
        self.program
            .downcast::<T>()
            .map(|b| *b)
            .map_err(|_| anyhow!("a program compiled for another kind of device"))
    }
}

/// Compiles programs on a thread of its own while the device evaluates others (the static
/// pipeline's background compiles, [`crate::ane::compile_queue`]).
pub trait Compiler: Send {
    fn compile(&mut self, p: &Program) -> Result<Compiled>;
}

/// A compiled and loaded program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProgramId(pub usize);

/// An fp16 I/O surface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SurfaceId(pub usize);

/// The hardware's per-process compile budget: after about this many in-memory compiles the
/// compiler fails (it leaks resources); a process must restart itself to compile more.
pub const DEFAULT_COMPILE_BUDGET: u64 = crate::ane::chip::COMPILE_LIMIT;

/// A Neural Engine, real or simulated.
pub trait Device: Send {
    /// `ane` or `ane-sim`.
    fn name(&self) -> &str;

    /// Compiles and loads `p` (MIL text + weight dictionary). Counts against the compile
    /// budget when it succeeds.
    fn compile(&mut self, p: &Program) -> Result<ProgramId>;

    /// A compiler that runs beside evaluations, where the device has one.
    fn background_compiler(&self) -> Option<Box<dyn Compiler>> {
        None
    }

    /// Gives a program from [`Device::background_compiler`] its id; counts against the
    /// compile budget (refused when the budget is spent).
    fn install(&mut self, _c: Compiled) -> Result<ProgramId> {
        bail!("{} has no background compiler", self.name())
    }

    /// Unloads a program and releases what it holds.
    fn free(&mut self, p: ProgramId) -> Result<()>;

    /// A zero-filled fp16 surface of `elems` values (`[1, C, 1, W]` → `C·W`).
    fn create_surface(&mut self, elems: usize) -> Result<SurfaceId>;

    /// Writes a surface in place: `f` gets all of its fp16 values, in `[1, C, 1, W]` order.
    fn write_surface(&mut self, s: SurfaceId, f: &mut dyn FnMut(&mut [f16])) -> Result<()>;

    /// Reads a surface: `f` gets all of its fp16 values.
    fn read_surface(&mut self, s: SurfaceId, f: &mut dyn FnMut(&[f16])) -> Result<()>;

    /// Evaluates `p` with a request binding `inputs` and `outputs` (the hardware accepts
    /// exactly one of each); synchronous.
    fn evaluate(&mut self, p: ProgramId, inputs: &[SurfaceId], outputs: &[SurfaceId])
        -> Result<()>;

    /// Successful compiles so far in this device's process.
    fn compiles(&self) -> u64;

    /// Compiles this process may make in all.
    fn compile_budget(&self) -> u64;

    /// Estimated Neural Engine milliseconds of one evaluation of `p`, where the device has a
    /// cost model (the simulator); `None` for the real device.
    fn estimated_eval_ms(&self, _p: ProgramId) -> Option<f64> {
        None
    }

    /// Estimated compile + load milliseconds of `p`, where the device has a cost model (the
    /// simulator); `None` for the real device, whose compile time is measured.
    fn estimated_compile_ms(&self, _p: ProgramId) -> Option<f64> {
        None
    }

    /// The chip profile the device enforces (the strict simulator), if any; the backend
    /// plans against it.
    fn profile(&self) -> Option<crate::ane::chip::Profile> {
        None
    }
}
