//! A table from a file: opens a `.safetensors` tensor or a `.npy` array (memory-mapped; only
//! the rows used are read), serves a Zipf stream of pooled bags through a cache that keeps
//! its rows in f16, checks each batch against the CPU on the same f16 rows, and prints the
//! hit rate and the GPU memory held.
//!
//!     cargo run --release --example from_file                          # writes its own table
//!     cargo run --release --example from_file -- emb.npy
//!     cargo run --release --example from_file -- model.safetensors emb.weight
//!
//! Exporting a PyTorch `nn.Embedding`:
//!
//!     numpy.save("emb.npy", emb.weight.detach().cpu().numpy())
//!     safetensors.torch.save_file({"emb.weight": emb.weight.detach().cpu()}, "model.safetensors")

use hotrow_workloads as workload;

use std::path::PathBuf;

use hotrow::{
    reference, CacheConfig, Capacity, EmbeddingCache, FileTable, GpuContext, HostTable, Pooling,
    RowFormat, RowSource,
};
use workload::{random_values, Rng, ZipfIds};

fn main() -> Result<(), hotrow::HotrowError> {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scratch = std::env::temp_dir().join(format!("hotrow-from-file-{}", std::process::id()));
    let table = match args.as_slice() {
        [] => {
            // No file given: write a 100,000 x 64 f32 table as .npy, as numpy.save would.
            std::fs::create_dir_all(&scratch).map_err(|e| {
                hotrow::HotrowError::InvalidArgument(format!("{}: {e}", scratch.display()))
            })?;
            let path = scratch.join("table.npy");
            let dim = 64;
            HostTable::owned(random_values(100_000 * dim, 7), dim)?.save_npy(&path)?;
            println!("wrote {}", path.display());
            FileTable::open_npy(&path)?
        }
        [path] => FileTable::open_npy(PathBuf::from(path))?,
        [path, tensor] => FileTable::open_safetensors(PathBuf::from(path), tensor)?,
        _ => {
            eprintln!("usage: from_file [table.npy | model.safetensors tensor-name]");
            std::process::exit(2);
        }
    };
    let (rows, dim) = (table.rows(), table.dim());
    println!(
        "{}: {rows} rows x {dim} ({:?} values)",
        table.path().display(),
        table.value_type()
    );

    let ctx = GpuContext::new()?;
    println!("adapter: {}", ctx.adapter());
    let config = CacheConfig::default()
        .capacity(Capacity::Fraction(0.1))
        .row_format(RowFormat::F16);
    let mut cache = EmbeddingCache::new(&ctx, &table, config)?;

    // Bags of 16 Zipf-distributed ids (a few rows are hot), weighted sum.
    let (bags, per_bag, steps) = (1024usize, 16usize, 20);
    let zipf = ZipfIds::new(rows, 1.05, 11);
    let mut rng = Rng::new(12);
    let offsets: Vec<u32> = (0..bags as u32).map(|b| b * per_bag as u32).collect();
    let layout = cache.layout();
    let mut worst = 0f64;
    for _ in 0..steps {
        let ids = zipf.batch(bags * per_bag, &mut rng);
        let weights: Vec<f32> = (0..ids.len()).map(|_| rng.unit() as f32).collect();
        let pooled = cache.lookup_bags(&ids, &offsets, Pooling::Sum, Some(&weights))?;
        // The reference: the same bags over the rows as the cache stores them (f16).
        let mut f32_rows = vec![0f32; ids.len() * dim];
        table.read_rows(&ids, &mut f32_rows)?;
        let mut words = vec![0u32; ids.len() * layout.words_per_row()];
        layout.encode_rows(&f32_rows, &mut words);
        let mut stored = vec![0f32; f32_rows.len()];
        layout.decode_rows(&words, &mut stored);
        let positions: Vec<u32> = (0..ids.len() as u32).collect();
        let want = reference::bags(&stored, dim, &positions, &offsets, 0, Some(&weights));
        let err = reference::relative_error(&pooled.to_host()?, &want);
        worst = worst.max(err);
    }
    let st = cache.stats();
    let mem = cache.memory();
    println!(
        "{steps} steps of {bags} bags x {per_bag}: unique-row hit rate {:.1}%, {:.1} MB \
         uploaded; worst relative error against the CPU on the same f16 rows {worst:.1e}",
        100.0 * st.hit_rate(),
        st.bytes_uploaded as f64 / 1e6,
    );
    println!(
        "GPU memory: {:.1} MB ({:.1} MB of f16 slots for {} rows; the f32 table is {:.1} MB)",
        mem.total() as f64 / 1e6,
        mem.slots as f64 / 1e6,
        cache.capacity(),
        (rows * dim * 4) as f64 / 1e6,
    );
    let _ = std::fs::remove_dir_all(&scratch);
    if worst >= 1e-5 {
        eprintln!("WRONG RESULT");
        std::process::exit(1);
    }
    Ok(())
}
