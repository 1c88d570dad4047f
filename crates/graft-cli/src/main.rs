//! The `graft` command. Parses arguments, dispatches to `commands/<verb>.rs`, and turns errors
//! into one line on stderr and exit code 2.

mod cli;
mod commands;
mod device;
mod errors;
mod help;
mod output;
mod reporter;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

// Activations are tens of MB each and are allocated and freed every layer. glibc's malloc hands
// such blocks back to the kernel (mmap/munmap), so every layer paid fresh page faults and page
// zeroing (~10% of forward time in a profile); mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc (v3, as libmimalloc-sys 0.1.49 builds it) still hands freed memory back to the kernel
// after a delay, and the next allocation of the same size comes back as fresh zeroed pages. A
// training loop frees and re-allocates the same buffers every iteration: 100 LeNet DANN
// iterations took ~70,000–90,000 page faults, ~600 with purging off (`MIMALLOC_PURGE_DELAY=-1`),
// 6–8% less CPU for source-only, DANN and CDAN runs, for 6–23% more peak RSS (source-only 153 →
// 189 MiB, DANN 185 → 201, CDAN 215 → 229). The same holds for inference: a Lite0 forward pass
// of 16 images spent 18% of its time in the kernel's page clearing (`perf record`), gone with
// purging off; `graft bench forward` 6,746 → 500 page faults, peak RSS 185 → 206 MB. So every
// command turns it off at start (`keep_freed_pages`), unless the user set it.
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}
/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (mimalloc.h).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Turns mimalloc's purging off unless the user set `MIMALLOC_PURGE_DELAY` themselves.
fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an option value; mimalloc reads it when it purges.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// `--max-image-pixels`, else `$GRAFT_MAX_IMAGE_PIXELS`, else the library's default.
fn image_limits(flag: Option<u64>) -> anyhow::Result<()> {
    let max_pixels = match (flag, std::env::var("GRAFT_MAX_IMAGE_PIXELS")) {
        (Some(n), _) => n,
        (None, Ok(v)) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("GRAFT_MAX_IMAGE_PIXELS=`{v}` is not a number of pixels"))?,
        (None, Err(_)) => return Ok(()),
    };
    if max_pixels == 0 {
        anyhow::bail!("--max-image-pixels must be at least 1");
    }
    graft::data::image::set_limits(graft::data::image::ImageLimits { max_pixels });
    Ok(())
}

fn main() -> ExitCode {
    let matches = cli::Cli::command().get_matches();
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cli::Cli::command()).exit());
    // Which command ran, to name a refused setting by that command's flag.
    let ran = errors::Ran::new(cli::Cli::command(), &matches);
    let out = output::Output::new(cli.json);
    keep_freed_pages();
    let result = image_limits(cli.max_image_pixels).and_then(|()| commands::run(cli.command, &out));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", ran.line(&err));
            ExitCode::from(2)
        }
    }
}
