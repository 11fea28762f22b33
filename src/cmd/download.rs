//! `vw download`: fetch a diffusers-layout model from the Hugging Face Hub into the local cache.

use clap::Args;

/// Arguments of `vw download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Hub repo id.
    #[arg(default_value = "nvidia/Cosmos-Predict2-2B-Video2World")]
    pub repo: String,
    /// Skip the (large) T5 text encoder, e.g. when prompt embeddings are precomputed.
    #[arg(long)]
    pub no_text_encoder: bool,
}

/// Runs `vw download`.
pub fn run(args: DownloadArgs) -> anyhow::Result<()> {
    let dirs = vw_diffusion::hub::download_all(&args.repo, !args.no_text_encoder)?;
    for d in dirs {
        println!("{}", d.display());
    }
    Ok(())
}
