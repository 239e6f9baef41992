//! The `cpu` backend: the six kernels in fp32.
