use anyhow::{bail, Result};
#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Not built yet.
    Info,
}
#[derive(clap::Args)]
pub struct TokenizeArgs {}
pub fn run(_c: DataCommand) -> Result<()> {
    bail!("data: not built yet")
}
pub fn run_tokenize(_a: TokenizeArgs) -> Result<()> {
    bail!("tokenize: not built yet")
}
