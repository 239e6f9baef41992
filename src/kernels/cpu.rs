//! The `cpu` backend: the six kernels in fp32.
pub struct CpuKernels;
impl CpuKernels { pub fn new() -> Self { CpuKernels } }
