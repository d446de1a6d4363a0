//! `ferrum model fetch|list|info`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use ferrum_model::gguf::GgufFile;

/// Model management.
#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Fetch the default model (SmolLM2-135M-Instruct Q4_1) into $FERRUM_HOME/models.
    Fetch {
        /// Fetch again even if present.
        #[arg(long)]
        force: bool,
    },
    /// List model files under $FERRUM_HOME/models.
    List,
    /// Print a GGUF file's metadata and tensor table.
    Info {
        /// The file (default: the default model).
        path: Option<PathBuf>,
    },
}

pub fn run(c: ModelCommand) -> Result<()> {
    match c {
        ModelCommand::Fetch { force } => {
            let p = ferrum_model::fetch::fetch_default_model(force)?;
            println!("{}", p.display());
        }
        ModelCommand::List => {
            for (p, size) in ferrum_model::fetch::list_models()? {
                println!("{:>12}  {}", size, p.display());
            }
        }
        ModelCommand::Info { path } => {
            let path = match path {
                Some(p) => p,
                None => ferrum_model::fetch::default_model_path()?,
            };
            let f = GgufFile::open(&path)?;
            println!(
                "file: {} ({} bytes), GGUF v{}, alignment {}",
                path.display(),
                f.file_size(),
                f.version,
                f.alignment
            );
            println!("metadata ({} keys):", f.metadata.len());
            for (k, v) in &f.metadata {
                println!("  {k:<45} {:<7} {v}", v.type_name());
            }
            println!("tensors ({}):", f.tensors.len());
            for t in &f.tensors {
                let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
                println!(
                    "  {:<32} {:<6} [{}] {} bytes @ {}",
                    t.name,
                    format!("{:?}", t.dtype),
                    dims.join(", "),
                    t.size,
                    t.offset
                );
            }
        }
    }
    Ok(())
}
