//! The Redis row tier (feature `redis`): tables loaded with the library's loader into a
//! real `redis-server` (standalone and a 3-node Cluster) that each test starts on loopback
//! itself, so it can kill and restart it; lookups through GPU cache -> host tier -> Redis
//! against the CPU reference; integrity errors name the row and leave no phantom row.
//!
//! Needs `redis-server` and `redis-cli` on PATH (Debian: `apt-get install redis-server`);
//! CI installs them.
#![cfg(feature = "redis")]

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::workload::{random_values, Rng, ZipfIds};
use common::{assert_rows_eq, ctx, seed};
use hotrow::{
    reference, CacheConfig, Capacity, EmbeddingCache, HostTable, HostTier, HotrowError,
    RedisOptions, RedisTable, RedisTarget, RemoteProblem, RowFormat, RowSource, ValueType,
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `redis-server` on loopback, owned by the test (killed on drop).
struct Server {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
}

impl Server {
    fn start(cluster: bool) -> Self {
        let mut s = Server {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            cluster,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        let conf = format!("nodes-{port}.conf");
        if self.cluster {
            args.extend(["--cluster-enabled", "yes", "--cluster-config-file", &conf]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        self.child = Some(child);
        let t = Instant::now();
        while redis_ping(&self.url()).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_ping(url: &str) -> redis::RedisResult<()> {
    let c = redis::Client::open(url)?;
    let mut con = c.get_connection_with_timeout(Duration::from_millis(200))?;
    redis::cmd("PING").query::<String>(&mut con).map(|_| ())
}

fn raw(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

fn options() -> RedisOptions {
    RedisOptions {
        connections: 3,
        min_keys_per_connection: 64,
        keys_per_command: 50,
        timeout: Duration::from_secs(2),
    }
}

#[test]
fn loads_and_serves_through_the_gpu_the_host_tier_and_redis() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("redis tiers"));
    let server = Server::start(false);
    let target = RedisTarget::Standalone(server.url());
    let (rows, dim) = (3000, 12);
    let data = random_values(rows * dim, rng.next_u64());
    let table = HostTable::borrowed(&data, dim).unwrap();
    let redis = RedisTable::load(&table, &target, "t:a", options(), ValueType::F32, false).unwrap();
    assert_eq!((redis.rows(), redis.dim()), (rows, dim));
    // straight reads, repeats included, across the connections
    let ids: Vec<u32> = (0..500).map(|_| rng.below(rows as u64) as u32).collect();
    let mut got = vec![f32::NAN; ids.len() * dim];
    redis.read_rows(&ids, &mut got).unwrap();
    assert_rows_eq(&got, &reference::gather(&data, dim, &ids), dim, "read_rows");
    let s = redis.stats();
    assert_eq!((s.calls, s.round_trips, s.rows), (1, 3, 500), "{s:?}");
    // GPU cache (300 rows) -> host tier (900 rows) -> Redis
    let tier = HostTier::new(redis, 900).unwrap();
    let config = CacheConfig::default().capacity(Capacity::Rows(300));
    let mut cache = EmbeddingCache::new(ctx(), tier, config).unwrap();
    let z = ZipfIds::new(rows, 1.05, rng.next_u64());
    for k in 0..12 {
        let ids = z.batch([50, 400, 1, 200][k % 4], &mut rng);
        let out = cache.lookup(&ids).unwrap();
        assert_rows_eq(
            &out.to_host().unwrap(),
            &reference::gather(&data, dim, &ids),
            dim,
            "through the tiers",
        );
    }
    let (c, t, r) = (
        cache.stats().clone(),
        cache.source().stats(),
        cache.source().source().stats(),
    );
    assert!(
        c.hits > 0 && t.host_hits > 0 && r.rows > 500,
        "{c:?} {t:?} {r:?}"
    );
    // one request to Redis per pass with misses at most, one round trip per connection
    assert!(t.source_calls <= c.passes, "{t:?} {c:?}");
    assert_eq!(r.calls, 1 + t.source_calls);
    assert!(r.round_trips <= 3 * r.calls);
    assert_eq!(
        t.rows_requested, c.rows_uploaded,
        "the tier sees only the GPU's misses"
    );
    assert_eq!(t.host_hits + t.source_rows, t.rows_requested);
}

#[test]
fn f16_rows_go_into_f16_slots_as_stored() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("redis f16"));
    let server = Server::start(false);
    let target = RedisTarget::Standalone(server.url());
    let (rows, dim) = (800, 6);
    let data = random_values(rows * dim, rng.next_u64());
    let halves: Vec<f32> = data
        .iter()
        .map(|&v| hotrow::half::f16::from_f32(v).to_f32())
        .collect();
    let table = HostTable::borrowed(&data, dim).unwrap();
    let redis = RedisTable::load(&table, &target, "t:h", options(), ValueType::F16, false).unwrap();
    assert_eq!(redis.value_type(), ValueType::F16);
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(100))
        .row_format(RowFormat::F16);
    let mut cache = EmbeddingCache::new(ctx(), redis, config).unwrap();
    let z = ZipfIds::new(rows, 1.05, rng.next_u64());
    for _ in 0..6 {
        let ids = z.batch(150, &mut rng);
        let out = cache.lookup(&ids).unwrap();
        assert_rows_eq(
            &out.to_host().unwrap(),
            &reference::gather(&halves, dim, &ids),
            dim,
            "f16 rows",
        );
    }
}

fn remote_problem(r: hotrow::Result<hotrow::Embeddings>) -> (Option<u32>, RemoteProblem) {
    match r {
        Err(HotrowError::Remote { id, problem }) => (id, problem),
        other => panic!("expected a Remote error, got {other:?}"),
    }
}

#[test]
fn bad_values_name_the_row_and_leave_no_phantom_row() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("redis integrity"));
    let server = Server::start(false);
    let target = RedisTarget::Standalone(server.url());
    let (rows, dim) = (400, 4);
    let data = random_values(rows * dim, rng.next_u64());
    let table = HostTable::borrowed(&data, dim).unwrap();
    let redis = RedisTable::load(&table, &target, "t:i", options(), ValueType::F32, false).unwrap();
    let (short, gone) = (17u32, 230u32);
    let mut con = raw(&server.url());
    redis::cmd("SET")
        .arg(redis.key(short))
        .arg(&[1u8, 2, 3][..])
        .query::<()>(&mut con)
        .unwrap();
    redis::cmd("DEL")
        .arg(redis.key(gone))
        .query::<()>(&mut con)
        .unwrap();
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(64))
        .resolution(hotrow::Resolution::Device);
    let mut cache = EmbeddingCache::new(ctx(), redis, config).unwrap();
    let good = cache.lookup(&[1, 2, 3]).unwrap().to_host().unwrap();
    assert_rows_eq(
        &good,
        &reference::gather(&data, dim, &[1, 2, 3]),
        dim,
        "good rows",
    );
    let (id, problem) = remote_problem(cache.lookup(&[5, short, 6]));
    assert_eq!(id, Some(short));
    assert!(
        matches!(
            problem,
            RemoteProblem::WrongLength {
                got: 3,
                want: 16,
                ..
            }
        ),
        "{problem:?}"
    );
    let (id, problem) = remote_problem(cache.lookup(&[gone, 9]));
    assert_eq!(id, Some(gone));
    assert!(
        matches!(problem, RemoteProblem::MissingKey { .. }),
        "{problem:?}"
    );
    for id in [5, short, 6, gone, 9] {
        assert_eq!(cache.slot_map().slot_of(id), None, "no phantom row {id}");
    }
    cache.check_device_table().unwrap();
    // repaired: served right
    let row = |id: u32| -> Vec<u8> {
        data[id as usize * dim..(id as usize + 1) * dim]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    };
    for id in [short, gone] {
        redis::cmd("SET")
            .arg(cache.source().key(id))
            .arg(row(id))
            .query::<()>(&mut con)
            .unwrap();
    }
    let ids = [short, 5, gone, 1];
    let out = cache.lookup(&ids).unwrap().to_host().unwrap();
    assert_rows_eq(&out, &reference::gather(&data, dim, &ids), dim, "repaired");
}

#[test]
fn a_server_killed_mid_stream_fails_batches_cleanly_and_is_reconnected() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("redis restart"));
    let mut server = Server::start(false);
    let target = RedisTarget::Standalone(server.url());
    let (rows, dim) = (2000, 8);
    let data = random_values(rows * dim, rng.next_u64());
    let table = HostTable::borrowed(&data, dim).unwrap();
    let redis = RedisTable::load(&table, &target, "t:k", options(), ValueType::F32, false).unwrap();
    let tier = HostTier::new(redis, 200).unwrap();
    let config = CacheConfig::default().capacity(Capacity::Rows(100));
    let mut cache = EmbeddingCache::new(ctx(), tier, config).unwrap();
    let z = ZipfIds::new(rows, 1.05, rng.next_u64());
    let check = |cache: &mut EmbeddingCache<HostTier<RedisTable>>, ids: &[u32]| {
        cache.lookup(ids).map(|out| {
            assert_rows_eq(
                &out.to_host().unwrap(),
                &reference::gather(&data, dim, ids),
                dim,
                "lookup",
            )
        })
    };
    for _ in 0..4 {
        check(&mut cache, &z.batch(300, &mut rng)).unwrap();
    }
    server.kill();
    let mut failed = 0;
    for _ in 0..4 {
        // fresh rows: they must come from Redis
        let ids: Vec<u32> = (0..50).map(|_| rng.below(rows as u64) as u32).collect();
        match check(&mut cache, &ids) {
            Ok(()) => {} // every row was in the GPU cache or the host tier
            Err(HotrowError::Remote { id, problem }) => {
                assert!(id.is_some(), "the row is named");
                assert!(
                    matches!(
                        problem,
                        RemoteProblem::Connection(_) | RemoteProblem::Timeout(_)
                    ),
                    "{problem:?}"
                );
                failed += 1;
            }
            Err(e) => panic!("{e:?}"),
        }
        cache.check_device_table().unwrap();
    }
    assert!(failed > 0, "a dead server was noticed");
    // back, empty: reload it, and the same cache reconnects and serves right
    server.restart();
    let connects = cache.source().source().stats().connects;
    RedisTable::load(&table, &target, "t:k", options(), ValueType::F32, false).unwrap();
    for _ in 0..4 {
        check(&mut cache, &z.batch(300, &mut rng)).unwrap();
    }
    assert!(
        cache.source().source().stats().connects > connects,
        "reconnected"
    );
}

#[test]
fn a_frozen_server_is_a_timeout_naming_the_row() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("redis timeout"));
    let server = Server::start(false);
    let target = RedisTarget::Standalone(server.url());
    let (rows, dim) = (600, 4);
    let data = random_values(rows * dim, rng.next_u64());
    let table = HostTable::borrowed(&data, dim).unwrap();
    let quick = RedisOptions {
        timeout: Duration::from_millis(300),
        ..options()
    };
    let redis = RedisTable::load(&table, &target, "t:t", quick, ValueType::F32, false).unwrap();
    let config = CacheConfig::default().capacity(Capacity::Rows(50));
    let mut cache = EmbeddingCache::new(ctx(), redis, config).unwrap();
    cache.lookup(&[1, 2]).unwrap();
    // SIGSTOP: the server keeps its connections open but answers nothing
    let pid = server.child.as_ref().unwrap().id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let t = Instant::now();
    let r = cache.lookup(&[7, 8, 9]);
    signal("-CONT");
    let (id, problem) = remote_problem(r);
    assert_eq!(id, Some(7));
    assert!(matches!(problem, RemoteProblem::Timeout(_)), "{problem:?}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "bounded by the timeout"
    );
    for id in [7, 8, 9] {
        assert_eq!(cache.slot_map().slot_of(id), None, "no phantom row {id}");
    }
    let ids = [7, 8, 9, 1];
    let out = cache.lookup(&ids).unwrap().to_host().unwrap();
    assert_rows_eq(
        &out,
        &reference::gather(&data, dim, &ids),
        dim,
        "after the pause",
    );
}

#[test]
fn bad_tables_and_unreachable_servers_are_typed_errors() {
    let _serial = common::serial();
    let server = Server::start(false);
    let target = RedisTarget::Standalone(server.url());
    let open = |prefix: &str| RedisTable::open(&target, prefix, options());
    assert!(matches!(
        open("nothing"),
        Err(HotrowError::Remote {
            id: None,
            problem: RemoteProblem::BadTable(_)
        })
    ));
    let mut con = raw(&server.url());
    redis::cmd("SET")
        .arg("junk:meta")
        .arg("hotrow-table v1 rows=ten dim=4 dtype=f32")
        .query::<()>(&mut con)
        .unwrap();
    assert!(matches!(
        open("junk"),
        Err(HotrowError::Remote {
            problem: RemoteProblem::BadTable(_),
            ..
        })
    ));
    let nobody = RedisTarget::Standalone(format!("redis://127.0.0.1:{}/", free_port()));
    assert!(matches!(
        RedisTable::open(&nobody, "t", options()),
        Err(HotrowError::Remote {
            problem: RemoteProblem::Connection(_),
            ..
        })
    ));
    // an interrupted load (description removed, rows half written) cannot be opened
    let data = random_values(40 * 4, 5);
    let table = HostTable::borrowed(&data, 4).unwrap();
    RedisTable::load(&table, &target, "t:p", options(), ValueType::F32, false).unwrap();
    redis::cmd("DEL")
        .arg("t:p:meta")
        .query::<()>(&mut con)
        .unwrap();
    assert!(open("t:p").is_err());
    assert!(matches!(
        RedisTable::load(&table, &target, "t:b", options(), ValueType::BF16, false),
        Err(HotrowError::InvalidArgument(_))
    ));
}

#[test]
fn a_cluster_serves_the_same_rows() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("redis cluster"));
    let nodes: Vec<Server> = (0..3).map(|_| Server::start(true)).collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let status = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .status()
        .expect("redis-cli on PATH");
    assert!(status.success(), "cluster created");
    // wait until every node agrees the cluster is up
    let t = Instant::now();
    for n in &nodes {
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut raw(&n.url()))
                .unwrap();
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "cluster state: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let target = RedisTarget::Cluster(nodes.iter().map(Server::url).collect());
    let (rows, dim) = (1500, 8);
    let data = random_values(rows * dim, rng.next_u64());
    let table = HostTable::borrowed(&data, dim).unwrap();
    let redis = RedisTable::load(&table, &target, "c:t", options(), ValueType::F32, false).unwrap();
    let config = CacheConfig::default().capacity(Capacity::Rows(200));
    let mut cache = EmbeddingCache::new(ctx(), HostTier::new(redis, 300).unwrap(), config).unwrap();
    let z = ZipfIds::new(rows, 1.05, rng.next_u64());
    for _ in 0..6 {
        let ids = z.batch(250, &mut rng);
        let out = cache.lookup(&ids).unwrap();
        assert_rows_eq(
            &out.to_host().unwrap(),
            &reference::gather(&data, dim, &ids),
            dim,
            "cluster",
        );
    }
    // the rows really are spread over the nodes
    for n in &nodes {
        let keys: i64 = redis::cmd("DBSIZE").query(&mut raw(&n.url())).unwrap();
        assert!(keys > 100, "node {} holds {keys} keys", n.port);
    }
}
