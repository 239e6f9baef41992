//! The model: its shape ([`Config`]), its parameters as one arena ([`Params`], [`Layout`]),
//! what `--model X` names ([`ModelSource`]), llama2.c's model file formats ([`llama2c`]) and
//! gradient/parameter dumps as safetensors ([`safetensors`]) and Hugging Face model folders
//! ([`hf`]).

pub mod config;
pub mod hf;
pub mod llama2c;
pub mod params;
pub mod safetensors;
pub mod source;

pub use config::{Config, StepFlops};
pub use params::{LayerTensor, Layout, Params};
pub use source::ModelSource;
