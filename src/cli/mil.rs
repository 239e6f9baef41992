use anyhow::{bail, Result};
#[derive(clap::Args)]
pub struct Args {}
pub fn run(_a: Args) -> Result<()> {
    bail!("mil: not built yet")
}
