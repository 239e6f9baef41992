//! What `--model X` names — the one place that answers it for every subcommand.
//!
//! In order: a preset name (`stories260k`, …) or a `.toml`/`.json` config file is a shape to
//! initialise at random; a directory is a Hugging Face model folder (`config.json` plus
//! safetensors weights, see [`super::hf`]); a `.ckpt` is a training checkpoint; a `.bin`, or
//! any other existing file, is a llama2.c model file (legacy or version 1; the header tells them apart when it
//! is read). Reading the weights is the loader's job ([`crate::train::load_params`]): this
//! module only classifies, so it reads no file.

use super::config::{Config, PRESETS};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Where a model's shape, and perhaps its weights, come from.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    /// A preset shape (random initialisation).
    Preset(Config),
    /// A TOML or JSON config file (random initialisation).
    ConfigFile(PathBuf),
    /// A llama2.c model file.
    Llama2c(PathBuf),
    /// A training checkpoint (the project's `.ckpt`).
    Checkpoint(PathBuf),
    /// A Hugging Face model folder (`config.json` + `model.safetensors` or shards).
    HfDir(PathBuf),
}

impl ModelSource {
    /// Classifies a `--model` argument (see the module doc for the order of the rules).
    pub fn resolve(spec: &str) -> Result<ModelSource> {
        if let Some(c) = Config::preset(spec) {
            return Ok(ModelSource::Preset(c));
        }
        let p = Path::new(spec);
        if p.is_dir() {
            return ModelSource::dir(p);
        }
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        Ok(match ext {
            "ckpt" => ModelSource::Checkpoint(p.to_path_buf()),
            "toml" | "json" => ModelSource::ConfigFile(p.to_path_buf()),
            "bin" => ModelSource::Llama2c(p.to_path_buf()),
            _ if p.is_file() => ModelSource::Llama2c(p.to_path_buf()),
            _ => bail!(
                "unknown model '{spec}': expected a preset ({}), a .toml/.json config file, a \
                 llama2.c .bin model, a .ckpt checkpoint or a Hugging Face model folder",
                PRESETS.join(", ")
            ),
        })
    }

    /// A file that holds weights (for `eval`, `grad`, `generate`): a `.ckpt` checkpoint, else
    /// a llama2.c model file whatever its name.
    pub fn with_weights(path: &Path) -> ModelSource {
        if path.is_dir() {
            return ModelSource::HfDir(path.to_path_buf());
        }
        if path.extension().is_some_and(|e| e == "ckpt") {
            ModelSource::Checkpoint(path.to_path_buf())
        } else {
            ModelSource::Llama2c(path.to_path_buf())
        }
    }

    /// A directory: a Hugging Face model folder, which must hold a `config.json`.
    fn dir(p: &Path) -> Result<ModelSource> {
        if !p.join("config.json").is_file() {
            bail!(
                "{}: a directory given as a model must be a Hugging Face model folder, but it \
                 has no config.json",
                p.display()
            );
        }
        Ok(ModelSource::HfDir(p.to_path_buf()))
    }

    /// Whether the source carries trained weights (else it is a shape to initialise).
    pub fn has_weights(&self) -> bool {
        matches!(
            self,
            ModelSource::Llama2c(_) | ModelSource::Checkpoint(_) | ModelSource::HfDir(_)
        )
    }

    /// The checkpoint's path, if the source is one.
    pub fn checkpoint(&self) -> Option<&Path> {
        match self {
            ModelSource::Checkpoint(p) => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_spec() {
        assert!(matches!(
            ModelSource::resolve("stories260k").unwrap(),
            ModelSource::Preset(c) if c == Config::preset("stories260k").unwrap()
        ));
        assert_eq!(
            ModelSource::resolve("a/b.ckpt").unwrap(),
            ModelSource::Checkpoint("a/b.ckpt".into())
        );
        assert_eq!(
            ModelSource::resolve("m.toml").unwrap(),
            ModelSource::ConfigFile("m.toml".into())
        );
        assert_eq!(
            ModelSource::resolve("missing.bin").unwrap(),
            ModelSource::Llama2c("missing.bin".into())
        );
        let e = ModelSource::resolve("nonsense").unwrap_err().to_string();
        assert!(e.contains("stories260k") && e.contains(".ckpt"), "{e}");
        assert!(!ModelSource::resolve("m.json").unwrap().has_weights());
        assert_eq!(
            ModelSource::with_weights(Path::new("x")),
            ModelSource::Llama2c("x".into())
        );
    }
}
