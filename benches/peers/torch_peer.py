"""PyTorch peer figures for hotrow's workloads (see WORKLOADS.md of the project's shared
definitions; W1-W5). Run on the same CUDA GPU, in the same command as `benches/workloads`.

    python3 benches/peers/torch_peer.py --workloads limits,w1,w2,w3,w4 [--json out.json]

Same id generator as hotrow's bench: bounded Zipf (s = 1.05) over ranks, mapped to ids
through a fixed random permutation. Times: CUDA-event medians (GPU) or wall medians with a
synchronize (host paths), after warm-up.
"""
import argparse, json, os, time
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

dev = "cuda"
D, B, S = 128, 65536, 1.05
N1, N2 = 1 << 20, 8 << 20
L, BAGS = 32, 4096
M, C = 256, 16384


def zipf_ids(n, count, s, rng, perm):
    ranks = np.arange(1, n + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -s); cdf /= cdf[-1]
    r = np.searchsorted(cdf, rng.random(count))
    return perm[np.minimum(r, n - 1)]


def cuda_time(fn, iters=50, warm=5, heat_s=1.0):
    # At least heat_s seconds of back-to-back calls first: the GPU's SM clock falls to a
    # fraction under light load and takes a moment to come back (hotrow's bench does the same).
    t, n = time.perf_counter(), 0
    while n < warm or time.perf_counter() - t < heat_s:
        fn(); n += 1
        if n % 64 == 0: torch.cuda.synchronize()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b))
    return float(np.median(ts))


def wall_time(fn, iters=20, warm=3):
    for _ in range(warm): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


def limits(out, rng):
    x = torch.empty(1 << 30, dtype=torch.uint8, device=dev); y = torch.empty_like(x)
    out["d2d_GBps_rw"] = 2 * x.numel() / cuda_time(lambda: y.copy_(x), iters=20) / 1e6
    del x, y
    h = torch.empty(1 << 28, dtype=torch.uint8).pin_memory(); g = torch.empty(1 << 28, dtype=torch.uint8, device=dev)
    out["h2d_pinned_GBps"] = h.numel() / cuda_time(lambda: g.copy_(h, non_blocking=True), iters=10) / 1e6
    hp = torch.empty(1 << 28, dtype=torch.uint8)
    out["h2d_pageable_GBps"] = hp.numel() / wall_time(lambda: g.copy_(hp), iters=10) / 1e6


def w1(out, rng):
    perm1 = rng.permutation(N1)
    W = torch.randn(N1, D, device=dev)
    idsets = [torch.from_numpy(zipf_ids(N1, B, S, rng, perm1)).to(dev) for _ in range(16)]
    k = [0]
    def f():
        k[0] = (k[0] + 1) % len(idsets); return F.embedding(idsets[k[0]], W)
    ms = cuda_time(f)
    out["W1_torch_ms"] = ms
    out["W1_torch_GBps_rw"] = 2 * B * D * 4 / ms / 1e6
    # stream wall time, like hotrow's: launch 200 batches, synchronize once
    for _ in range(10): f()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(200): f()
    torch.cuda.synchronize()
    out["W1_torch_stream_wall_ms"] = (time.perf_counter() - t) * 1e3 / 200
    out["W1_unique_frac"] = float(np.mean([len(torch.unique(t)) for t in idsets]) / B)


def _lru_hit_rate(stream, cap):
    lru = OrderedDict(); hits = tot = 0
    for s in stream:
        for r in np.unique(s):
            tot += 1
            if r in lru: hits += 1; lru.move_to_end(r)
            else:
                lru[r] = 1
                if len(lru) > cap: lru.popitem(last=False)
    return hits / tot


def w2(out, rng):
    perm2 = rng.permutation(N2)
    stream = [zipf_ids(N2, B, S, rng, perm2) for _ in range(40)]
    k = [0]
    W2g = torch.randn(N2, D, device=dev)
    gstream = [torch.from_numpy(s).to(dev) for s in stream]
    def w2_gpu():
        k[0] = (k[0] + 1) % 40; return F.embedding(gstream[k[0]], W2g)
    out["W2_torch_fulltable_gpu_ms"] = cuda_time(w2_gpu)
    out["W2_fulltable_gpu_bytes"] = N2 * D * 4
    del W2g, gstream
    Wh = torch.randn(N2, D)
    pin = torch.empty(B, D).pin_memory()
    def w2_naive():
        k[0] = (k[0] + 1) % 40
        torch.index_select(Wh, 0, torch.from_numpy(stream[k[0]]), out=pin)
        return pin.to(dev, non_blocking=True)
    out["W2_torch_naive_host_ms"] = wall_time(w2_naive, iters=40)
    def w2_dedup():
        k[0] = (k[0] + 1) % 40
        u, inv = torch.unique(torch.from_numpy(stream[k[0]]), return_inverse=True)
        rows = Wh.index_select(0, u).pin_memory().to(dev, non_blocking=True)
        return rows.index_select(0, inv.to(dev, non_blocking=True))
    out["W2_torch_dedup_host_ms"] = wall_time(w2_dedup, iters=40)
    out["W2_unique_frac"] = float(np.mean([len(np.unique(s)) for s in stream[:10]]) / B)
    out["W2_lru10pct_unique_row_hit_rate"] = _lru_hit_rate(stream, N2 // 10)
    out["torch_threads"] = torch.get_num_threads()


def w5(out, rng):
    # plain LRU (10% of rows) on a stream whose permutation is redrawn every 50 batches
    stream = []
    for b in range(100):
        if b % 50 == 0:
            perm = rng.permutation(N2)
        stream.append(zipf_ids(N2, B, S, rng, perm))
    out["W5_torch_lru10pct_unique_row_hit_rate"] = _lru_hit_rate(stream, N2 // 10)


def w3(out, rng):
    perm2 = rng.permutation(N2)
    W2g = torch.randn(N2, D, device=dev)
    bag_ids = [torch.from_numpy(zipf_ids(N2, BAGS * L, S, rng, perm2)).to(dev).view(BAGS, L) for _ in range(8)]
    psw = torch.rand(BAGS, L, device=dev)
    k = [0]
    def f():
        k[0] = (k[0] + 1) % 8; return F.embedding_bag(bag_ids[k[0]], W2g, mode="sum", per_sample_weights=psw)
    out["W3_torch_sum_ms"] = cuda_time(f)
    for mode in ("mean", "max"):
        def g():
            k[0] = (k[0] + 1) % 8; return F.embedding_bag(bag_ids[k[0]], W2g, mode=mode)
        out[f"W3_torch_{mode}_ms"] = cuda_time(g)


def w4(out, rng):
    W2g = torch.randn(N2, D, device=dev)
    Q = torch.randn(M, D, device=dev)
    cands = [torch.from_numpy(rng.choice(N2, C, replace=False)).to(dev) for _ in range(4)]
    k = [0]
    def sub():
        k[0] = (k[0] + 1) % 4; return Q @ W2g.index_select(0, cands[k[0]]).T
    torch.backends.cuda.matmul.allow_tf32 = False
    out["W4_torch_subset_ms"] = cuda_time(sub)
    out["W4_torch_dense_full_ms"] = cuda_time(lambda: Q @ W2g.T, iters=10)
    out["W4_torch_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="limits,w1")
    ap.add_argument("--json")
    a = ap.parse_args()
    rng = np.random.default_rng(1)
    out = OrderedDict()
    out["device"] = torch.cuda.get_device_name(); out["torch"] = torch.__version__
    for w in a.workloads.split(","):
        t = time.perf_counter()
        globals()[w.strip().lower()](out, rng)
        print(f"peer {w}: {time.perf_counter() - t:.1f} s", flush=True)
    print(json.dumps(out, indent=1))
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
