//! Tables from files and half-precision host tables: real `.npy` and `.safetensors` files
//! (f32, f16, bf16) written here, read back row by row and through the cache against the
//! CPU reference; every kind of bad file is a typed error naming the file.

mod common;

use std::path::{Path, PathBuf};

use common::workload::{random_values, Rng, ZipfIds};
use common::{assert_rows_eq, ctx, seed};
use half::{bf16, f16};
use hotrow::{
    reference, BatchPath, CacheConfig, Capacity, EmbeddingCache, Embeddings, FileProblem,
    FileTable, HostTable, HotrowError, Resolution, RowSource, ValueType,
};
use safetensors::{Dtype, View};

/// A fresh directory for this test's files.
fn dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("hotrow-{tag}-"))
        .tempdir()
        .unwrap()
}

/// Stored values of a table, and the f32 values they stand for (the reference conversion).
fn values(ty: ValueType, n: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let f = random_values(n, seed);
    match ty {
        ValueType::F32 => (bytemuck::cast_slice(&f).to_vec(), f),
        ValueType::F16 => {
            let h: Vec<f16> = f.iter().map(|&x| f16::from_f32(x)).collect();
            let back = h.iter().map(|x| x.to_f32()).collect();
            (bytemuck::cast_slice(&h).to_vec(), back)
        }
        ValueType::BF16 => {
            let h: Vec<bf16> = f.iter().map(|&x| bf16::from_f32(x)).collect();
            let back = h.iter().map(|x| x.to_f32()).collect();
            (bytemuck::cast_slice(&h).to_vec(), back)
        }
    }
}

/// A `.npy` file as numpy writes it (format 1.0), with the given header fields and data.
fn write_npy(path: &Path, descr: &str, fortran: bool, shape: &str, data: &[u8]) {
    let fortran = if fortran { "True" } else { "False" };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((h.len() as u16).to_le_bytes());
    bytes.extend(h.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

struct Tensor<'a>(Dtype, Vec<usize>, &'a [u8]);

impl View for &Tensor<'_> {
    fn dtype(&self) -> Dtype {
        self.0
    }
    fn shape(&self) -> &[usize] {
        &self.1
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        self.2.into()
    }
    fn data_len(&self) -> usize {
        self.2.len()
    }
}

fn write_safetensors(path: &Path, tensors: &[(&str, Tensor<'_>)]) {
    let views: Vec<(&str, &Tensor<'_>)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn dtype(ty: ValueType) -> Dtype {
    match ty {
        ValueType::F32 => Dtype::F32,
        ValueType::F16 => Dtype::F16,
        ValueType::BF16 => Dtype::BF16,
    }
}

/// Reads `table` row by row against `want`, then streams Zipf batches (repeats, evictions,
/// a moving hot set) through a small cache and checks every output.
fn check_source<S: RowSource>(table: S, want: &[f32], rng: &mut Rng, what: &str) {
    let (rows, dim) = (table.rows(), table.dim());
    // f16 storage is also copied as it is (for f16 slots); other storage says it cannot.
    let ids: Vec<u32> = (0..20).map(|_| rng.below(rows as u64) as u32).collect();
    let mut halves = vec![f16::NAN; ids.len() * dim];
    if table.read_rows_f16(&ids, &mut halves).unwrap() {
        let got: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
        assert_rows_eq(&got, &reference::gather(want, dim, &ids), dim, what);
    } else {
        assert!(halves.iter().all(|h| h.is_nan()), "{what}: nothing written");
    }
    for _ in 0..20 {
        let ids: Vec<u32> = (0..1 + rng.below(50))
            .map(|_| rng.below(rows as u64) as u32)
            .collect();
        let mut out = vec![f32::NAN; ids.len() * dim];
        table.read_rows(&ids, &mut out).unwrap();
        assert_rows_eq(&out, &reference::gather(want, dim, &ids), dim, what);
    }
    for resolution in [Resolution::Host, Resolution::Device] {
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(rows / 8))
            .resolution(resolution);
        let mut cache = EmbeddingCache::new(ctx(), &table, config).unwrap();
        let mut zipf = ZipfIds::new(rows, 1.05, rng.next_u64());
        let mut out = Embeddings::new(ctx(), 1, dim).unwrap();
        for b in 0..12 {
            if b == 6 {
                zipf.reshuffle(rng.next_u64());
            }
            let ids = zipf.batch(50 + rng.below(200) as usize, rng);
            out.fill(f32::NAN).unwrap();
            cache.lookup_into(&ids, &mut out).unwrap();
            let want = reference::gather(want, dim, &ids);
            assert_rows_eq(&out.to_host().unwrap(), &want, dim, &format!("{what} {b}"));
        }
        assert!(cache.stats().evictions > 0, "{what}: the stream must evict");
    }
}

#[test]
fn files_of_every_format_serve_the_cache() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("tables_files"));
    let d = dir("formats");
    for ty in [ValueType::F32, ValueType::F16, ValueType::BF16] {
        let (rows, dim) = (300 + rng.below(300) as usize, 1 + rng.below(40) as usize);
        let (bytes, want) = values(ty, rows * dim, rng.next_u64());
        let what = format!("{ty:?} {rows} x {dim}");
        // .safetensors, with another tensor before it in the file
        let path = d.path().join(format!("t-{ty:?}.safetensors"));
        let other = [7u8; 24];
        write_safetensors(
            &path,
            &[
                ("a.bias", Tensor(Dtype::F32, vec![6], &other)),
                ("emb.weight", Tensor(dtype(ty), vec![rows, dim], &bytes)),
            ],
        );
        let t = FileTable::open_safetensors(&path, "emb.weight").unwrap();
        assert_eq!((t.rows(), t.dim(), t.value_type()), (rows, dim, ty));
        assert_eq!(t.path(), path.as_path());
        check_source(t, &want, &mut rng, &format!("safetensors {what}"));
        // .npy (numpy has no bfloat16)
        if ty != ValueType::BF16 {
            let path = d.path().join(format!("t-{ty:?}.npy"));
            let descr = if ty == ValueType::F32 { "<f4" } else { "<f2" };
            write_npy(&path, descr, false, &format!("({rows}, {dim})"), &bytes);
            let t = FileTable::open_npy(&path).unwrap();
            assert_eq!((t.rows(), t.dim(), t.value_type()), (rows, dim, ty));
            check_source(t, &want, &mut rng, &format!("npy {what}"));
        }
    }
}

#[test]
fn half_precision_host_tables_and_save_npy() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("tables_host"));
    let d = dir("host");
    let (rows, dim) = (400, 12);
    let (_, want16) = values(ValueType::F16, rows * dim, rng.next_u64());
    let h: Vec<f16> = want16.iter().map(|&x| f16::from_f32(x)).collect();
    let t = HostTable::borrowed_f16(&h, dim).unwrap();
    assert_eq!(t.value_type(), ValueType::F16);
    assert!(t.data().is_none());
    check_source(t.clone(), &want16, &mut rng, "host f16");
    // saved and read back, by this crate and by the .npy header's promise
    let path = d.path().join("saved.npy");
    t.save_npy(&path).unwrap();
    check_source(
        FileTable::open_npy(&path).unwrap(),
        &want16,
        &mut rng,
        "saved f16",
    );
    let (_, want_b) = values(ValueType::BF16, rows * dim, rng.next_u64());
    let b: Vec<bf16> = want_b.iter().map(|&x| bf16::from_f32(x)).collect();
    let tb = HostTable::owned_bf16(b, dim).unwrap();
    check_source(tb.clone(), &want_b, &mut rng, "host bf16");
    assert!(matches!(
        tb.save_npy(d.path().join("b.npy")),
        Err(HotrowError::File {
            problem: FileProblem::UnsupportedDtype(_),
            ..
        })
    ));
    let f = random_values(rows * dim, rng.next_u64());
    HostTable::borrowed(&f, dim)
        .unwrap()
        .save_npy(&path)
        .unwrap();
    check_source(
        FileTable::open_npy(&path).unwrap(),
        &f,
        &mut rng,
        "saved f32",
    );
    // one row, and one past the end
    assert_eq!(
        HostTable::borrowed(&f, dim).unwrap().read_row(3).unwrap(),
        &f[3 * dim..4 * dim]
    );
    assert!(matches!(
        HostTable::borrowed(&f, dim).unwrap().read_row(rows as u32),
        Err(HotrowError::IdOutOfRange { .. })
    ));
}

fn file_problem(r: hotrow::Result<FileTable>, path: &Path) -> FileProblem {
    match r {
        Err(HotrowError::File { path: p, problem }) => {
            assert_eq!(p, path, "the error names the file");
            problem
        }
        other => panic!("{}: expected a file error, got {other:?}", path.display()),
    }
}

#[test]
fn bad_files_are_typed_errors_naming_the_file() {
    let _serial = common::serial();
    let d = dir("bad");
    let p = |name: &str| -> PathBuf { d.path().join(name) };
    let data = bytemuck::cast_slice::<f32, u8>(&random_values(6 * 4, 3)).to_vec();
    // missing
    let missing = p("nope.npy");
    assert_eq!(
        file_problem(FileTable::open_npy(&missing), &missing),
        FileProblem::Missing
    );
    // truncated: the shape says 8 rows, the file holds 6
    let t = p("truncated.npy");
    write_npy(&t, "<f4", false, "(8, 4)", &data);
    assert!(matches!(
        file_problem(FileTable::open_npy(&t), &t),
        FileProblem::Truncated { need, have } if need == have + 2 * 16
    ));
    // wrong dtypes
    for (name, descr) in [("f8.npy", "<f8"), ("i4.npy", "<i4"), ("be.npy", ">f4")] {
        let f = p(name);
        write_npy(&f, descr, false, "(6, 4)", &data);
        assert_eq!(
            file_problem(FileTable::open_npy(&f), &f),
            FileProblem::UnsupportedDtype(descr.into())
        );
    }
    // Fortran order
    let f = p("fortran.npy");
    write_npy(&f, "<f4", true, "(6, 4)", &data);
    assert_eq!(
        file_problem(FileTable::open_npy(&f), &f),
        FileProblem::FortranOrder
    );
    // not 2-D
    for (name, shape, dims) in [
        ("1d.npy", "(24,)", vec![24]),
        ("3d.npy", "(2, 3, 4)", vec![2, 3, 4]),
        ("empty.npy", "(0, 4)", vec![0, 4]),
    ] {
        let f = p(name);
        write_npy(&f, "<f4", false, shape, &data);
        assert_eq!(
            file_problem(FileTable::open_npy(&f), &f),
            FileProblem::NotTwoD(dims)
        );
    }
    // a shape whose byte size overflows
    let f = p("huge-shape.npy");
    write_npy(&f, "<f4", false, "(18446744073709551615, 4)", &data);
    assert!(matches!(
        file_problem(FileTable::open_npy(&f), &f),
        FileProblem::CorruptHeader(_)
    ));
    // corrupt headers: not numpy, damaged dict, too short, random bytes
    let mut rng = Rng::new(seed("tables_bad"));
    let garbage: Vec<u8> = (0..300).map(|_| rng.below(256) as u8).collect();
    for (name, bytes) in [
        ("zip.npy", b"PK\x03\x04 this is a zip".to_vec()),
        ("short.npy", b"\x93NU".to_vec()),
        (
            "dict.npy",
            b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'".to_vec(),
        ),
        ("random.npy", garbage.clone()),
    ] {
        let f = p(name);
        std::fs::write(&f, bytes).unwrap();
        assert!(
            matches!(
                file_problem(FileTable::open_npy(&f), &f),
                FileProblem::CorruptHeader(_)
            ),
            "{name}"
        );
    }
    // safetensors: unknown tensor (names listed), dtype, shape, truncated, corrupt
    let s = p("t.safetensors");
    write_safetensors(
        &s,
        &[
            ("emb", Tensor(Dtype::F32, vec![6, 4], &data)),
            ("ints", Tensor(Dtype::I32, vec![6, 4], &data)),
            ("flat", Tensor(Dtype::F32, vec![24], &data)),
        ],
    );
    assert_eq!(
        file_problem(FileTable::open_safetensors(&s, "embedding"), &s),
        FileProblem::UnknownTensor {
            name: "embedding".into(),
            available: vec!["emb".into(), "flat".into(), "ints".into()],
        }
    );
    assert_eq!(
        file_problem(FileTable::open_safetensors(&s, "ints"), &s),
        FileProblem::UnsupportedDtype("I32".into())
    );
    assert_eq!(
        file_problem(FileTable::open_safetensors(&s, "flat"), &s),
        FileProblem::NotTwoD(vec![24])
    );
    let whole = std::fs::read(&s).unwrap();
    let cut = p("cut.safetensors");
    std::fs::write(&cut, &whole[..whole.len() - 10]).unwrap();
    assert!(matches!(
        file_problem(FileTable::open_safetensors(&cut, "emb"), &cut),
        FileProblem::Truncated { need, have } if need == have + 10
    ));
    for (name, bytes) in [
        ("junk.safetensors", garbage),
        ("json.safetensors", {
            let mut v = 12u64.to_le_bytes().to_vec();
            v.extend(b"{not json!!}");
            v
        }),
    ] {
        let f = p(name);
        std::fs::write(&f, bytes).unwrap();
        assert!(
            matches!(
                file_problem(FileTable::open_safetensors(&f, "emb"), &f),
                FileProblem::CorruptHeader(_)
            ),
            "{name}"
        );
    }
}

/// A file changed under an open table: the next read is `Changed` and the failed batch
/// leaves nothing behind; a file replaced by rename keeps serving the old rows.
#[test]
fn a_changed_file_fails_cleanly_and_a_replaced_one_keeps_its_rows() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("tables_changed"));
    let d = dir("changed");
    let (rows, dim) = (500, 8);
    let f = random_values(rows * dim, rng.next_u64());
    let path = d.path().join("live.npy");
    HostTable::borrowed(&f, dim)
        .unwrap()
        .save_npy(&path)
        .unwrap();
    let config = CacheConfig::default().capacity(Capacity::Rows(64));
    let mut cache =
        EmbeddingCache::new(ctx(), FileTable::open_npy(&path).unwrap(), config).unwrap();
    let ids: Vec<u32> = (0..40).map(|_| rng.below(rows as u64) as u32).collect();
    let out = cache.lookup(&ids).unwrap();
    assert_rows_eq(
        &out.to_host().unwrap(),
        &reference::gather(&f, dim, &ids),
        dim,
        "before",
    );
    // replaced atomically: the open table still reads the old file
    let newer = random_values(rows * dim, rng.next_u64());
    let tmp = d.path().join("next.npy");
    HostTable::borrowed(&newer, dim)
        .unwrap()
        .save_npy(&tmp)
        .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let fresh: Vec<u32> = (0..rows as u32)
        .filter(|i| !ids.contains(i))
        .take(30)
        .collect();
    let out = cache.lookup(&fresh).unwrap();
    assert_rows_eq(
        &out.to_host().unwrap(),
        &reference::gather(&f, dim, &fresh),
        dim,
        "renamed",
    );
    // changed in place (grown): reads stop with a typed error, nothing is kept
    let mut cache = EmbeddingCache::new(
        ctx(),
        FileTable::open_npy(&path).unwrap(),
        CacheConfig::default()
            .path(BatchPath::Host)
            .capacity(Capacity::Rows(64)),
    )
    .unwrap();
    cache.lookup(&ids[..10]).unwrap();
    let resident = cache.slot_map().resident();
    let stats = cache.stats().clone();
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[0u8; 64])
        .unwrap();
    match cache.lookup(&fresh) {
        Err(HotrowError::File { path: p, problem }) => {
            assert_eq!((p, problem), (path.clone(), FileProblem::Changed))
        }
        other => panic!("expected Changed, got {other:?}"),
    }
    assert_eq!(cache.slot_map().len(), resident.len(), "no phantom rows");
    assert_eq!(cache.stats().rows_uploaded, stats.rows_uploaded);
    cache.slot_map().check_invariants().unwrap();
    // rows already resident are still served (no read needed)
    let out = cache.lookup(&resident).unwrap();
    assert_rows_eq(
        &out.to_host().unwrap(),
        &reference::gather(&newer, dim, &resident),
        dim,
        "resident",
    );
}

/// Opening reads only the header: a table far bigger than this machine's memory (a sparse
/// file) opens at once, and reading a few rows touches only their pages.
#[test]
fn a_huge_file_opens_at_once() {
    let _serial = common::serial();
    let d = dir("huge");
    let path = d.path().join("huge.npy");
    let dim = 256u64;
    let rows = (50u64 << 30) / 4 / dim; // 50 GiB of f32 rows
    write_npy(&path, "<f4", false, &format!("({rows}, 256)"), &[]);
    let header = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(header + rows * dim * 4)
        .unwrap();
    let t = std::time::Instant::now();
    let table = FileTable::open_npy(&path).unwrap();
    let opened = t.elapsed();
    assert_eq!((table.rows() as u64, table.dim()), (rows, 256));
    assert!(opened.as_secs_f64() < 1.0, "opening took {opened:?}");
    let mut out = vec![f32::NAN; 3 * 256];
    table
        .read_rows(&[0, rows as u32 - 1, 12345], &mut out)
        .unwrap();
    assert!(out.iter().all(|&v| v == 0.0), "a sparse file reads zeros");
}

/// Damaged files, at random (proptest shrinks a failure to the smallest damage): a valid
/// `.npy` or `.safetensors` file truncated anywhere, or with bytes of its header replaced.
/// Opening gives a typed error naming the file, or a table whose every row reads within the
/// file (a header that still parses); never a panic.
#[test]
fn damaged_files_never_panic() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let _serial = common::serial();
    let dir = dir("damaged");
    let cases = std::env::var("HOTROW_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let damage = (
        any::<bool>(),
        0usize..3,
        1usize..40,
        1usize..9,
        any::<bool>(),
        proptest::collection::vec((any::<u16>(), any::<u8>()), 1..6),
        any::<u16>(),
    );
    let path = dir.path().join("t");
    let result = runner.run(&damage, |(npy, ty, rows, dim, truncate, flips, cut)| {
        let ty = [ValueType::F32, ValueType::F16, ValueType::BF16][ty];
        let ty = if npy && ty == ValueType::BF16 {
            ValueType::F16
        } else {
            ty
        };
        let (bytes, _) = values(ty, rows * dim, rows as u64);
        let shape = format!("({rows}, {dim})");
        let descr = if ty == ValueType::F32 { "<f4" } else { "<f2" };
        if npy {
            write_npy(&path, descr, false, &shape, &bytes);
        } else {
            let t = Tensor(dtype(ty), vec![rows, dim], &bytes);
            write_safetensors(&path, &[("w", t)]);
        }
        let mut file = std::fs::read(&path).unwrap();
        let data_start = file.len() - bytes.len();
        if truncate {
            file.truncate(cut as usize % file.len());
        } else {
            for (at, b) in flips {
                let at = at as usize % data_start;
                file[at] = b;
            }
        }
        std::fs::write(&path, &file).unwrap();
        let opened = if npy {
            FileTable::open_npy(&path)
        } else {
            FileTable::open_safetensors(&path, "w")
        };
        match opened {
            Err(HotrowError::File { path: p, .. }) => {
                prop_assert_eq!(p, path.clone());
            }
            Err(other) => {
                return Err(TestCaseError::fail(format!("untyped: {other:?}")));
            }
            Ok(table) => {
                prop_assert!(!truncate, "a truncated file opened");
                let need = table.rows() * table.dim() * table.value_type().bytes();
                prop_assert!(need <= file.len(), "rows past the end of the file");
                for id in 0..table.rows().min(64) as u32 {
                    table
                        .read_row(id)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
