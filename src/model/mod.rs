//! The model: its shape ([`Config`]), its parameters as one arena ([`Params`], [`Layout`]),
//! and llama2.c's model file formats ([`llama2c`]).

pub mod config;
pub mod llama2c;
pub mod params;

pub use config::{Config, StepFlops};
pub use params::{LayerTensor, Layout, Params};
