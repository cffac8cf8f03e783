//! `oxrl import`: GGUF file to Hugging Face directory.

use std::path::PathBuf;

use crate::gguf::{to_hf, GgufFile};
use crate::pretrained::write_hf_dir;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// The .gguf file.
    gguf: PathBuf,
    /// Output directory (created if needed).
    out: PathBuf,
}

pub(super) fn run(args: Args) -> anyhow::Result<()> {
    let hf = to_hf(&GgufFile::open(&args.gguf)?)?;
    write_hf_dir(&hf, &args.out)?;
    eprintln!(
        "wrote {} ({} tensors, {} layers) to {}",
        hf.config.architectures[0],
        hf.tensors.len(),
        hf.config.num_hidden_layers,
        args.out.display()
    );
    Ok(())
}
