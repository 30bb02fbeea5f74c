// Zero-copy probe (the project's shared probe, extended for issue 19's open questions):
// rows read per thread (1, 4 or all the vec4s of a row) and random rows confined to a window
// of the table (2 MiB .. the whole table: if a GPU TLB miss per 4 KiB host page is what
// bounds random reads, a window within TLB reach reads faster).
// Build: `cargo bench --bench zc_probe --no-run`; run the binary (ROWS, ZC_QUICK=1).
//
// Original notes: can a WGSL kernel read rows straight out of host memory (a MAP_READ |
// STORAGE buffer, wgpu feature MAPPABLE_PRIMARY_BUFFERS -> gpu-allocator GpuToCpu ->
// HOST_VISIBLE|HOST_COHERENT|HOST_CACHED, i.e. system RAM), and how fast, beside a
// device-local table and beside copy-engine copies from the same memory.
// ROWS (default 4,000,000) x 128 f32 table (1,953 MiB, under the H200's 2047 MiB binding);
// the first loop copies the same random rows every iteration, the second ("ZC2") fresh rows
// each iteration (random or sequential, 512- and 256-byte rows), the last ("CE") contiguous
// copy_buffer_to_buffer from the host buffer. Measured on an H100 (2026-12-06), first loop:
// 8,192 rows 43 GB/s, 16,384 19, 65,536 13 GB/s; device-local table up to 680 GB/s.
use std::time::Instant;

const D: u64 = 128;
const SRC: &str = r#"
struct P { seed: u32, n: u32, mode: u32, v: u32, rows: u32, per: u32, window: u32, pad: u32 }
@group(0) @binding(0) var<storage, read> table: array<vec4<f32>>;
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(2) var<storage, read_write> cache: array<vec4<f32>>;
fn hash(x0: u32) -> u32 { var x = x0; x ^= x >> 16u; x *= 0x7feb352du; x ^= x >> 15u; x *= 0x846ca68bu; x ^= x >> 16u; return x; }
// Thread t copies `per` consecutive vec4s of one row (per = v: a whole row per thread).
@compute @workgroup_size(256) fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let t = g.x + g.y * nw.x * 256u;
  let chunks = p.v / p.per;
  let row = t / chunks; let c0 = (t % chunks) * p.per;
  if row < p.n {
    var id: u32;
    if p.mode == 0u { id = hash(p.seed * 2654435761u + row) % p.rows; }
    else if p.mode == 1u { id = (p.seed * p.n + row) % p.rows; }
    else { let base = (hash(p.seed) % (p.rows / p.window)) * p.window; id = base + hash(p.seed * 2654435761u + row) % p.window; }
    for (var k = 0u; k < p.per; k++) { cache[row * p.v + c0 + k] = table[id * p.v + c0 + k]; }
  }
}"#;

fn main() {
    let inst = {
        let mut d = wgpu::InstanceDescriptor::new_without_display_handle();
        d.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        wgpu::Instance::new(d)
    };
    let adapter = pollster::block_on(inst.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .expect("no adapter");
    println!("adapter: {:?}", adapter.get_info());
    let af = adapter.features();
    println!(
        "MAPPABLE_PRIMARY_BUFFERS={} TIMESTAMP_QUERY={}",
        af.contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
        af.contains(wgpu::Features::TIMESTAMP_QUERY)
    );
    let al = adapter.limits();
    println!(
        "max_storage_buffer_binding_size={} max_buffer_size={}",
        al.max_storage_buffer_binding_size, al.max_buffer_size
    );
    let feats = wgpu::Features::MAPPABLE_PRIMARY_BUFFERS
        | (af
            & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS));
    // With VK_EXT_external_memory_host (Vulkan), tables can also be made over host memory
    // the probe allocates itself: 4 KiB pages, or 2 MiB transparent huge pages.
    let (device, queue, import) = match unsafe { import::open(&adapter, feats, &al) } {
        Some((d, q)) => (d, q, std::env::var_os("ZC_NO_IMPORT").is_none()),
        None => {
            let (d, q) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                required_limits: al.clone(),
                required_features: feats,
                ..Default::default()
            }))
            .expect("device");
            (d, q, false)
        }
    };
    println!("VK_EXT_external_memory_host import: {import}");
    let ts = feats.contains(wgpu::Features::TIMESTAMP_QUERY);
    // Span test (ZC_SPAN=<page kind>): random rows over 1..=4 imported tables at once.
    if let Some(kind) = std::env::var("ZC_SPAN")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        span_test(&device, &queue, kind);
        return;
    }
    let rows: u64 = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000_000);
    let bytes = rows * D * 4;

    // Host-memory table: mapped at creation, filled by the CPU, then unmapped.
    let t0 = Instant::now();
    let host = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host table"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::MAP_READ
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: true,
    });
    {
        let mut m = host.slice(..).get_mapped_range_mut().unwrap();
        let mut w = m.slice(..);
        let mut ptr = w.as_raw_ptr();
        // SAFETY: the mapped range is ours until `m` drops; we only write.
        let bytes_mut: &mut [u8] = unsafe { ptr.as_mut() };
        let f: &mut [f32] = bytemuck::cast_slice_mut(bytes_mut);
        for (r, row) in f.chunks_mut(D as usize).enumerate() {
            row.fill(r as f32);
        }
    }
    host.unmap();
    println!(
        "host table {} MiB created+filled in {:.2} s",
        bytes >> 20,
        t0.elapsed().as_secs_f64()
    );

    // The same rows in imported host memory, 4 KiB pages and 2 MiB pages.
    let fill = |f: &mut [f32]| {
        for (r, row) in f.chunks_mut(D as usize).enumerate() {
            row.fill(r as f32);
        }
    };
    let imported: Vec<(&str, wgpu::Buffer)> = if import {
        [("imp4k", 0u32), ("imp2m", 1)]
            .into_iter()
            .filter_map(|(name, huge)| {
                let t = Instant::now();
                let b = unsafe { import::table(&device, bytes, huge, &fill) };
                println!(
                    "{name}: {} in {:.2} s; AnonHugePages now {} MiB",
                    if b.is_some() { "imported" } else { "refused" },
                    t.elapsed().as_secs_f64(),
                    import::anon_huge_mib()
                );
                b.map(|b| (name, b))
            })
            .collect()
    } else {
        Vec::new()
    };

    // Device-local table with the same rows.
    let dev = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("device table"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let chunk = 1u64 << 16;
    let mut r0 = 0;
    while r0 < rows {
        let n = chunk.min(rows - r0);
        let v: Vec<f32> = (0..n * D).map(|i| (r0 + i / D) as f32).collect();
        queue.write_buffer(&dev, r0 * D * 4, bytemuck::cast_slice(&v));
        r0 += n;
    }
    queue.submit([]);
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();

    let m = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(SRC.into()),
    });
    let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &m,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let maxn: u64 = 65536;
    let cache = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: maxn * D * 4,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let timer = ts.then(|| Timer::new(&device));
    let ub = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 32,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let enc_ts = device
        .features()
        .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS);
    let hash = |x0: u32| {
        let mut x = x0;
        x ^= x >> 16;
        x = x.wrapping_mul(0x7feb352d);
        x ^= x >> 15;
        x = x.wrapping_mul(0x846ca68b);
        x ^= x >> 16;
        x
    };
    // Fetch-like variants (ZC_FETCH=1): the library's fetch reads each row's id from a list,
    // writes it to a scattered slot of a large device buffer, over a capped grid whose
    // threads stride over `count x words` (count read from the GPU): each step from the
    // probe's kernel toward the fetch, to find which one halves the rate.
    if std::env::var_os("ZC_FETCH").is_some() {
        fetch_like(&device, &queue, &host, &imported, rows);
        return;
    }
    let quick = std::env::var_os("ZC_QUICK").is_some();
    let sizes: &[u64] = if quick { &[2048] } else { &[8192, 32768] };
    let iters = if quick { 8u32 } else { 30 };
    for (v, row_bytes) in [(32u32, 512u64), (16u32, 256u64)] {
        let trows = (bytes / row_bytes) as u32;
        for &n in sizes {
            if n * row_bytes > maxn * D * 4 {
                continue;
            }
            // (name, table, mode, vec4s per thread, window in rows)
            let mib = |m: u64| ((m << 20) / row_bytes).min(trows as u64) as u32;
            let mut cases: Vec<(String, &wgpu::Buffer, u32, u32, u32)> = vec![
                ("host_rand".into(), &host, 0, 1, trows),
                ("host_seq".into(), &host, 1, 1, trows),
                ("dev_rand".into(), &dev, 0, 1, trows),
                ("host_rand_per4".into(), &host, 0, 4, trows),
                (format!("host_rand_per{v}"), &host, 0, v, trows),
            ];
            for w in [2u64, 32, 256] {
                if mib(w) < trows && mib(w) >= n as u32 {
                    cases.push((format!("host_win{w}MiB"), &host, 2, 1, mib(w)));
                }
            }
            for (name, b) in &imported {
                cases.push((format!("{name}_rand"), b, 0, 1, trows));
                cases.push((format!("{name}_seq"), b, 1, 1, trows));
                for w in [32u64, 256] {
                    if mib(w) < trows && mib(w) >= n as u32 {
                        cases.push((format!("{name}_win{w}MiB"), b, 2, 1, mib(w)));
                    }
                }
            }
            for (name, table, mode, per, window) in cases {
                let bg = bind_group(&device, &p, &[table, &ub, &cache]);
                let wgs = (n * (v / per) as u64).div_ceil(256);
                let mut gpu = vec![];
                let mut seed = 1u32;
                for i in 0..iters {
                    seed = 1000 + i * 7 + n as u32;
                    queue.write_buffer(
                        &ub,
                        0,
                        bytemuck::cast_slice(&[seed, n as u32, mode, v, trows, per, window, 0]),
                    );
                    let t = run(&device, &queue, &p, &bg, wgs, timer.as_ref());
                    if i >= 3 {
                        gpu.push(t);
                    }
                }
                let med = median(gpu);
                // check the last iteration's rows
                let rb = device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: n * row_bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut enc = device.create_command_encoder(&Default::default());
                enc.copy_buffer_to_buffer(&cache, 0, &rb, 0, n * row_bytes);
                queue.submit([enc.finish()]);
                rb.slice(..).map_async(wgpu::MapMode::Read, |r| r.unwrap());
                device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
                let ok = {
                    let out = rb.slice(..).get_mapped_range().unwrap();
                    let out: &[f32] = bytemuck::cast_slice(&out);
                    let fl = (row_bytes / 4) as usize;
                    (0..n as u32).all(|r| {
                        let id = match mode {
                            0 => hash(seed.wrapping_mul(2654435761).wrapping_add(r)) % trows,
                            1 => (seed.wrapping_mul(n as u32).wrapping_add(r)) % trows,
                            _ => {
                                (hash(seed) % (trows / window)) * window
                                    + hash(seed.wrapping_mul(2654435761).wrapping_add(r)) % window
                            }
                        };
                        let want = (id as u64 * row_bytes / 512) as f32;
                        out[r as usize * fl] == want && out[r as usize * fl + fl - 1] == want
                    })
                };
                println!("ZC2 row_bytes={row_bytes} {name:16} rows={n:6} MB={:.1} gpu_median_us={:.1} GB/s={:.1} Mrows/s={:.1} correct={ok}", (n * row_bytes) as f64 / 1e6, med / 1e3, (n * row_bytes) as f64 / med, n as f64 * 1e3 / med);
            }
        }
    }
    // Copy engine: contiguous host -> device copies of the same sizes, fresh offsets.
    if let (true, Some(timer)) = (enc_ts, &timer) {
        for mb in [2u64, 4, 8, 16, 32] {
            let len = mb << 20;
            if len * 2 > bytes {
                continue;
            }
            let mut t = vec![];
            for i in 0..30u64 {
                let off = ((i * 97) % ((bytes - len) >> 20)) << 20;
                let mut enc = device.create_command_encoder(&Default::default());
                enc.write_timestamp(&timer.qs, 0);
                enc.copy_buffer_to_buffer(&host, off, &cache, 0, len);
                enc.write_timestamp(&timer.qs, 1);
                timer.resolve(&mut enc);
                queue.submit([enc.finish()]);
                let x = timer.read(&device, &queue);
                if i >= 5 {
                    t.push(x);
                }
            }
            let med = median(t);
            println!(
                "CE host->device MB={mb} gpu_median_us={:.1} GB/s={:.1}",
                med / 1e3,
                len as f64 / med
            );
        }
    } else {
        println!("CE: no TIMESTAMP_QUERY_INSIDE_ENCODERS");
    }
}

const FETCH_SRC: &str = r#"
struct F { rows: u32, n: u32, words: u32, slots: u32, scatter: u32, stride_grid: u32, groups_x: u32, seed: u32, hashed: u32 }
@group(0) @binding(0) var<storage, read> table: array<vec4<f32>>;
@group(0) @binding(1) var<uniform> p: F;
@group(0) @binding(2) var<storage, read_write> slots: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> list: array<u32>;
fn hash(x0: u32) -> u32 { var x = x0; x ^= x >> 16u; x *= 0x7feb352du; x ^= x >> 15u; x *= 0x846ca68bu; x ^= x >> 16u; return x; }
@compute @workgroup_size(256) fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nw: vec3<u32>) {
  let t0 = (wid.x + wid.y * p.groups_x) * 256u + lid;
  var total = p.n * p.words;
  var stride = 0xffffffffu;
  if (p.stride_grid != 0u) { total = list[0] * p.words; stride = nw.x * nw.y * 256u; }
  for (var t = t0; t < total; t += stride) {
    let v = t / p.words; let w = t - v * p.words;
    var id = list[1u + v];
    if (p.hashed != 0u) { id = hash(p.seed * 2654435761u + v) % p.rows; }
    var s = v;
    if (p.scatter != 0u) { s = list[1u + p.n + v]; }
    slots[s * p.words + w] = table[id * p.words + w];
    if (stride == 0xffffffffu) { break; }
  }
}"#;

/// A buffer of `size` bytes the queue writes, bound as `usage`.
fn written(device: &wgpu::Device, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size,
        usage: usage | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Random u64s (xorshift64) from a non-zero `seed`.
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// A bind group of `pipe`'s group 0 binding `buffers[i]` whole at binding `i`.
fn bind_group(
    device: &wgpu::Device,
    pipe: &wgpu::ComputePipeline,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipe.get_bind_group_layout(0),
        entries: &entries,
    })
}

/// A compute pipeline of `src`'s `main` (its layout from the shader).
fn pipeline(device: &wgpu::Device, src: &str) -> wgpu::ComputePipeline {
    let m = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &m,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    })
}

/// W2's slots (838,861 x 512 B, 430 MB; fewer where the binding limit is lower), written
/// by the fetch-like kernels: (the buffer, its slots).
fn slot_buffer(device: &wgpu::Device) -> (wgpu::Buffer, u32) {
    let count = 838_861.min(device.limits().max_storage_buffer_binding_size / 512) as u32;
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: count as u64 * 512,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    (buffer, count)
}

/// One dispatch timed by timestamps (the GPU time of its pass).
struct Timer {
    qs: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
}

impl Timer {
    fn new(device: &wgpu::Device) -> Self {
        let buffer = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        Self {
            qs: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: None,
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            read: buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
        }
    }

    /// Records the copy of the two timestamps to where [`Timer::read`] maps them.
    fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        enc.resolve_query_set(&self.qs, 0..2, &self.resolve, 0);
        enc.copy_buffer_to_buffer(&self.resolve, 0, &self.read, 0, 16);
    }

    /// Waits for the submissions so far and returns the time between the two
    /// timestamps, in ns.
    fn read(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> f64 {
        self.read
            .slice(..)
            .map_async(wgpu::MapMode::Read, |r| r.unwrap());
        device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
        let v: Vec<u64> =
            bytemuck::cast_slice(&self.read.slice(..).get_mapped_range().unwrap()).to_vec();
        self.read.unmap();
        (v[1] - v[0]) as f64 * queue.get_timestamp_period() as f64
    }
}

/// Runs `pipe` over `groups` workgroups (a grid past 65,535 folds into y) with `bg` and
/// waits: its GPU time in ns by `timer`'s timestamps, or 1.0 without a timer.
fn run(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    pipe: &wgpu::ComputePipeline,
    bg: &wgpu::BindGroup,
    groups: u64,
    timer: Option<&Timer>,
) -> f64 {
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: timer.map(|t| wgpu::ComputePassTimestampWrites {
                query_set: &t.qs,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            }),
        });
        pass.set_pipeline(pipe);
        pass.set_bind_group(0, bg, &[]);
        pass.dispatch_workgroups(groups.min(65535) as u32, groups.div_ceil(65535) as u32, 1);
    }
    if let Some(t) = timer {
        t.resolve(&mut enc);
    }
    queue.submit([enc.finish()]);
    match timer {
        Some(t) => t.read(device, queue),
        None => {
            device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
            1.0
        }
    }
}

/// The median of `times` (not empty).
fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

/// The fetch-like variants (see the call): GPU time per batch of `n` random rows.
fn fetch_like(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    host: &wgpu::Buffer,
    imported: &[(&str, wgpu::Buffer)],
    rows: u64,
) {
    if !device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        println!("FL: no timestamps");
        return;
    }
    let timer = Timer::new(device);
    let pipe = pipeline(device, FETCH_SRC);
    let (slots, slot_count) = slot_buffer(device);
    let maxn = 32768u64;
    let list = written(device, (1 + 2 * maxn) * 4, wgpu::BufferUsages::STORAGE);
    let ub = written(device, 48, wgpu::BufferUsages::UNIFORM);
    let mut rnd = xorshift(0x9e3779b97f4a7c15);
    let mut tables: Vec<(&str, &wgpu::Buffer)> = vec![("host", host)];
    for (name, b) in imported {
        tables.push((name, b));
    }
    // (name, scatter, stride grid, id hashed as the probe's kernel does)
    let variants = [
        ("hash_contig_exact", 0u32, 0u32, 1u32),
        ("list_contig_exact", 0, 0, 0),
        ("list_scatter_exact", 1, 0, 0),
        ("list_contig_capped", 0, 1, 0),
        ("list_scatter_capped", 1, 1, 0),
    ];
    for (tname, table) in tables {
        let bg = bind_group(device, &pipe, &[table, &ub, &slots, &list]);
        for n in [9000u64, 32768] {
            for (vname, scatter, capped, hashed) in variants {
                let threads = if capped != 0 { 4096 * 256 } else { n * 32 };
                let wgs = threads.div_ceil(256);
                let gx = wgs.min(65535) as u32;
                let mut gpu = vec![];
                for i in 0..30 {
                    // Fresh distinct-enough ids and slots each batch.
                    let mut l = vec![n as u32];
                    l.extend((0..n).map(|_| (rnd() % rows) as u32));
                    l.extend((0..n).map(|_| (rnd() % slot_count as u64) as u32));
                    queue.write_buffer(&list, 0, bytemuck::cast_slice(&l));
                    let f = [
                        rows as u32,
                        n as u32,
                        32,
                        slot_count,
                        scatter,
                        capped,
                        gx,
                        1000 + i,
                        hashed,
                    ];
                    queue.write_buffer(&ub, 0, bytemuck::cast_slice(&f));
                    let t = run(device, queue, &pipe, &bg, wgs, Some(&timer));
                    if i >= 3 {
                        gpu.push(t);
                    }
                }
                let med = median(gpu);
                println!(
                    "FL table={tname:6} {vname:20} rows={n:6} gpu_median_us={:.1} Mrows/s={:.1} GB/s={:.1}",
                    med / 1e3,
                    n as f64 * 1e3 / med,
                    (n * 512) as f64 / med
                );
            }
        }
    }
}

/// Host memory the probe allocates itself, imported into Vulkan (VK_EXT_external_memory_host).
mod import {
    use ash::vk;
    use wgpu::hal::api::Vulkan;

    const NAME: &std::ffi::CStr = ash::ext::external_memory_host::NAME;

    /// A device with VK_EXT_external_memory_host enabled, when the adapter is Vulkan and has it.
    pub unsafe fn open(
        adapter: &wgpu::Adapter,
        feats: wgpu::Features,
        limits: &wgpu::Limits,
    ) -> Option<(wgpu::Device, wgpu::Queue)> {
        unsafe {
            let hal = adapter.as_hal::<Vulkan>()?;
            let inst = hal.shared_instance().raw_instance();
            let exts = inst
                .enumerate_device_extension_properties(hal.raw_physical_device())
                .ok()?;
            if !exts.iter().any(|e| e.extension_name_as_c_str() == Ok(NAME)) {
                println!("adapter lacks VK_EXT_external_memory_host");
                return None;
            }
            let cb: Box<wgpu::hal::vulkan::CreateDeviceCallback<'static>> =
                Box::new(|args| args.extensions.push(NAME));
            let open = hal
                .open_with_callback(feats, limits, &wgpu::MemoryHints::Performance, Some(cb))
                .ok()?;
            drop(hal);
            adapter
                .create_device_from_hal::<Vulkan>(
                    open,
                    &wgpu::DeviceDescriptor {
                        required_features: feats,
                        required_limits: limits.clone(),
                        ..Default::default()
                    },
                )
                .ok()
        }
    }

    /// Anonymous memory in 2 MiB-aligned chunks (huge pages advised or refused), filled,
    /// then imported as a storage buffer. The memory is never unmapped (a probe).
    pub unsafe fn table(
        device: &wgpu::Device,
        bytes: u64,
        pages: u32,
        fill: &dyn Fn(&mut [f32]),
    ) -> Option<wgpu::Buffer> {
        unsafe {
            // pages: 0 = 4 KiB, 1 = transparent 2 MiB, 2 = hugetlb 1 GiB (reserved pages).
            let align = if pages == 2 { 1u64 << 30 } else { 2u64 << 20 };
            let size = bytes.next_multiple_of(align);
            let flags = if pages == 2 {
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_HUGETLB
                    | (30 << libc::MAP_HUGE_SHIFT)
            } else {
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
            };
            let span = if pages == 2 { size } else { size + align };
            let raw = libc::mmap(
                std::ptr::null_mut(),
                span as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            );
            if raw == libc::MAP_FAILED {
                println!(
                    "mmap (pages {pages}) failed: {}",
                    std::io::Error::last_os_error()
                );
                return None;
            }
            let ptr = (raw as usize).next_multiple_of(align as usize) as *mut u8;
            if pages != 2 {
                let advice = if pages == 1 {
                    libc::MADV_HUGEPAGE
                } else {
                    libc::MADV_NOHUGEPAGE
                };
                libc::madvise(ptr.cast(), size as usize, advice);
            }
            fill(std::slice::from_raw_parts_mut(
                ptr.cast::<f32>(),
                (bytes / 4) as usize,
            ));
            let hal = device.as_hal::<Vulkan>()?;
            let dev = hal.raw_device();
            let inst = hal.shared_instance().raw_instance();
            let ext = ash::ext::external_memory_host::Device::new(inst, dev);
            let mut props = vk::MemoryHostPointerPropertiesEXT::default();
            let r = (ext.fp().get_memory_host_pointer_properties_ext)(
                dev.handle(),
                vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT,
                ptr.cast(),
                &mut props,
            );
            if r != vk::Result::SUCCESS {
                println!("vkGetMemoryHostPointerPropertiesEXT: {r:?}");
                return None;
            }
            let mut ext_info = vk::ExternalMemoryBufferCreateInfo::default()
                .handle_types(vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT);
            // The buffer is the table's size (within the binding limit); the memory is whole
            // pages.
            let info = vk::BufferCreateInfo::default()
                .size(bytes)
                .usage(
                    vk::BufferUsageFlags::STORAGE_BUFFER
                        | vk::BufferUsageFlags::TRANSFER_SRC
                        | vk::BufferUsageFlags::TRANSFER_DST,
                )
                .sharing_mode(vk::SharingMode::EXCLUSIVE)
                .push_next(&mut ext_info);
            let buffer = dev.create_buffer(&info, None).ok()?;
            let req = dev.get_buffer_memory_requirements(buffer);
            let mp = inst.get_physical_device_memory_properties(hal.raw_physical_device());
            let bits = req.memory_type_bits & props.memory_type_bits;
            let types = mp.memory_types_as_slice();
            let cached = vk::MemoryPropertyFlags::HOST_CACHED;
            let ty = (0..types.len())
                .filter(|&i| bits & (1 << i) != 0)
                .max_by_key(|&i| types[i].property_flags.contains(cached))?;
            println!(
                "import: host pointer types {:#x}, buffer types {:#x}, chose {ty} ({:?}), alignment of size {}",
                props.memory_type_bits, req.memory_type_bits, types[ty].property_flags, req.alignment
            );
            let mut imp = vk::ImportMemoryHostPointerInfoEXT::default()
                .handle_type(vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT)
                .host_pointer(ptr.cast());
            let alloc = vk::MemoryAllocateInfo::default()
                .allocation_size(size)
                .memory_type_index(ty as u32)
                .push_next(&mut imp);
            let memory = match dev.allocate_memory(&alloc, None) {
                Ok(m) => m,
                Err(e) => {
                    println!("vkAllocateMemory (import): {e:?}");
                    dev.destroy_buffer(buffer, None);
                    return None;
                }
            };
            dev.bind_buffer_memory(buffer, memory, 0).ok()?;
            drop(hal);
            let hal_buffer = wgpu::hal::vulkan::Buffer::from_raw_managed(buffer, memory, 0, bytes);
            Some(device.create_buffer_from_hal::<Vulkan>(
                hal_buffer,
                &wgpu::BufferDescriptor {
                    label: Some("imported table"),
                    size: bytes,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                },
            ))
        }
    }

    /// AnonHugePages of this process, MiB.
    pub fn anon_huge_mib() -> u64 {
        std::fs::read_to_string("/proc/self/smaps_rollup")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("AnonHugePages:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024)
    }
}

const SPAN_SRC: &str = r#"
struct S { rows: u32, n: u32, k: u32, seed: u32 }
@group(0) @binding(0) var<uniform> p: S;
@group(0) @binding(1) var<storage, read_write> slots: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> list: array<u32>;
@group(0) @binding(3) var<storage, read> t0: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> t1: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> t2: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> t3: array<vec4<f32>>;
@compute @workgroup_size(256) fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nw: vec3<u32>) {
  let t = (wid.x + wid.y * nw.x) * 256u + lid;
  if (t >= p.n * 32u) { return; }
  let v = t / 32u; let w = t % 32u;
  let id = list[v] % (p.rows * p.k);
  let k = id / p.rows; let r = id - k * p.rows;
  let s = list[p.n + v];
  var x: vec4<f32>;
  switch k {
    case 0u: { x = t0[r * 32u + w]; }
    case 1u: { x = t1[r * 32u + w]; }
    case 2u: { x = t2[r * 32u + w]; }
    default: { x = t3[r * 32u + w]; }
  }
  slots[s * 32u + w] = x;
}"#;

/// Random 512-byte rows read across 1..=4 imported tables of ROWS rows each (the span of
/// host memory a batch's misses fall in), into scattered slots, as the library's fetch does.
fn span_test(device: &wgpu::Device, queue: &wgpu::Queue, pages: u32) {
    let rows: u64 = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000_000);
    let bytes = rows * D * 4;
    let fill = |f: &mut [f32]| {
        for (r, row) in f.chunks_mut(D as usize).enumerate() {
            row.fill(r as f32);
        }
    };
    let mut tables = Vec::new();
    for i in 0..4 {
        let t = Instant::now();
        match unsafe { import::table(device, bytes, pages, &fill) } {
            Some(b) => tables.push(b),
            None => {
                println!("SPAN table {i} (pages {pages}) refused");
                break;
            }
        }
        println!(
            "SPAN table {i} pages {pages} in {:.2} s; AnonHugePages {} MiB; {}",
            t.elapsed().as_secs_f64(),
            import::anon_huge_mib(),
            std::fs::read_to_string("/proc/meminfo")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("HugePages_Free") || l.starts_with("Hugetlb"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    if tables.is_empty() {
        return;
    }
    let timer = Timer::new(device);
    let pipe = pipeline(device, SPAN_SRC);
    let (slots, slot_count) = slot_buffer(device);
    let maxn = 32768u64;
    let list = written(device, 2 * maxn * 4, wgpu::BufferUsages::STORAGE);
    let ub = written(device, 16, wgpu::BufferUsages::UNIFORM);
    let last = tables.len() - 1;
    let shard = |i: usize| &tables[i.min(last)];
    let bg = bind_group(
        device,
        &pipe,
        &[&ub, &slots, &list, shard(0), shard(1), shard(2), shard(3)],
    );
    let mut rnd = xorshift(0x2545f4914f6cdd1d);
    for k in 1..=tables.len() as u32 {
        for n in [9000u32, 32768] {
            let mut gpu = vec![];
            for i in 0..30u32 {
                let mut l: Vec<u32> = (0..n).map(|_| rnd() as u32).collect();
                l.extend((0..n).map(|_| (rnd() % slot_count as u64) as u32));
                queue.write_buffer(&list, 0, bytemuck::cast_slice(&l));
                queue.write_buffer(&ub, 0, bytemuck::cast_slice(&[rows as u32, n, k, i]));
                let groups = (n as u64 * 32).div_ceil(256);
                let t = run(device, queue, &pipe, &bg, groups, Some(&timer));
                if i >= 3 {
                    gpu.push(t);
                }
            }
            let med = median(gpu);
            println!(
                "SPAN pages={pages} tables={k} span_GiB={:.1} rows={n:6} gpu_median_us={:.1} Mrows/s={:.1}",
                (bytes * k as u64) as f64 / (1u64 << 30) as f64,
                med / 1e3,
                n as f64 * 1e3 / med
            );
        }
    }
}
