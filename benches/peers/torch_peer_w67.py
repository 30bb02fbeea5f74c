"""PyTorch peer figures for W6 (many tables) and W7 (training step) of ../WORKLOADS.md.

Usage: python3 torch_peer_w67.py [--small] [--w6-only] [--json out.json]
--small divides rows by 64 and batch sizes by 16 (a check that it runs, not a figure);
--w6-only skips W7. (hotrow's copy of the shared peer; the GPU is warmed up for a second
before W6's timed loops, as the other peer does.)
"""
import json, sys, time
import numpy as np
import torch
import torch.nn.functional as F

small = "--small" in sys.argv
w6_only = "--w6-only" in sys.argv
jpath = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
dev = "cuda"
S = 1.05
out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
       "torch_threads": torch.get_num_threads()}
rng = np.random.default_rng(6)


def zipf_sampler(n, s, rng):
    ranks = np.arange(1, n + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -s); cdf /= cdf[-1]
    perm = rng.permutation(n)
    return lambda count: perm[np.minimum(np.searchsorted(cdf, rng.random(count)), n - 1)]


def median_wall(step, iters, warm):
    for _ in range(warm): step()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t = time.perf_counter(); step(); torch.cuda.synchronize()
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


# ---------------- W6: 26 tables, dim 64, 2,048 bags x 8 ids per table, sum ----------------
div_rows, div_b = (64, 16) if small else (1, 1)
rows = [4_000_000] * 4 + [1_000_000] * 6 + [100_000] * 8 + [10_000] * 8
rows = [max(64, r // div_rows) for r in rows]
D6, BAGS6, L6 = 64, 2048 // div_b, 8
steps6 = 60
samplers = [zipf_sampler(n, S, rng) for n in rows]
ids6 = [[torch.from_numpy(f(BAGS6 * L6).astype(np.int64)) for f in samplers] for _ in range(steps6)]
offs6 = torch.arange(0, BAGS6 * L6, L6, dtype=torch.int64)
t0 = time.perf_counter()
host6 = [torch.randn(n, D6) for n in rows]
out["W6_table_build_s"] = time.perf_counter() - t0
out["W6_total_rows"] = sum(rows)
out["W6_table_bytes"] = sum(rows) * D6 * 4

gpu6 = [h.to(dev) for h in host6]
ids6g = [[i.to(dev) for i in step] for step in ids6]
offs6g = offs6.to(dev)
k = [0]
heat = torch.randn(4096, 4096, device=dev)
t_heat = time.perf_counter()
while time.perf_counter() - t_heat < 1.0:  # GPU clocks up before the timed loop
    heat = heat @ heat / 4096.0
torch.cuda.synchronize()
def w6_gpu():
    k[0] = (k[0] + 1) % steps6
    return torch.cat([F.embedding_bag(ids6g[k[0]][t], gpu6[t], offs6g, mode="sum")
                      for t in range(len(rows))], dim=1)
out["W6_torch_gpu_resident_step_ms"] = median_wall(w6_gpu, 40, 10)
out["W6_gpu_resident_bytes"] = out["W6_table_bytes"]

# W6 training (issue 20): the same step, then the gradient of sum(out * G) (G a fixed random
# B x 26*64) back to every table with sparse gradients, row-wise Adagrad by hand (lr 0.01,
# eps 1e-8) per table: the GPU-resident peer of hotrow's w6train.
for t in gpu6:
    t.requires_grad_(True)
acc6 = [torch.zeros(t.shape[0], device=dev) for t in gpu6]
G6 = torch.randn(BAGS6, len(rows) * D6, device=dev)
def w6_train():
    k[0] = (k[0] + 1) % steps6
    o = torch.cat([F.embedding_bag(ids6g[k[0]][t], gpu6[t], offs6g, mode="sum", sparse=True)
                   for t in range(len(rows))], dim=1)
    (o * G6).sum().backward()
    with torch.no_grad():
        for t in range(len(rows)):
            g = gpu6[t].grad.coalesce(); gpu6[t].grad = None
            idx, val = g.indices()[0], g.values()
            acc6[t][idx] += val.pow(2).mean(1)
            gpu6[t][idx] -= 0.01 * val / torch.sqrt(acc6[t][idx] + 1e-8).unsqueeze(1)
out["W6T_torch_gpu_resident_step_ms"] = median_wall(w6_train, 40, 10)
out["W6T_gpu_resident_bytes"] = out["W6_table_bytes"] + sum(rows) * 4
del gpu6, ids6g, acc6, G6
torch.cuda.empty_cache()

pin6 = torch.empty(len(rows) * BAGS6 * L6, D6).pin_memory()
def w6_naive():
    k[0] = (k[0] + 1) % steps6
    n = BAGS6 * L6
    for t in range(len(rows)):
        torch.index_select(host6[t], 0, ids6[k[0]][t], out=pin6[t * n:(t + 1) * n])
    g = pin6.to(dev, non_blocking=True)
    return g.view(len(rows), BAGS6, L6, D6).sum(2).permute(1, 0, 2).reshape(BAGS6, -1)
out["W6_torch_naive_host_step_ms"] = median_wall(w6_naive, 20, 3)
uniq = np.mean([sum(len(torch.unique(i)) for i in step) / (len(rows) * BAGS6 * L6) for step in ids6[:5]])
out["W6_unique_frac"] = float(uniq)
del host6, pin6

if not w6_only:
    # ---------------- W7: training step, W2's table, W3's bags, row-wise Adagrad ----------------
    N7 = (8 << 20) // div_rows
    D7, BAGS7, L7 = 128, 4096 // div_b, 32
    lr, eps = 0.01, 1e-8
    f7 = zipf_sampler(N7, S, rng)
    steps7 = 40
    ids7 = [torch.from_numpy(f7(BAGS7 * L7).astype(np.int64)) for _ in range(steps7)]
    psw7 = [torch.rand(BAGS7 * L7) for _ in range(steps7)]
    offs7 = torch.arange(0, BAGS7 * L7, L7, dtype=torch.int64)
    G = torch.randn(BAGS7, D7)

    # (a) whole table on the GPU, sparse gradient, row-wise Adagrad by hand
    W = torch.randn(N7, D7, device=dev).requires_grad_(True)
    acc = torch.zeros(N7, device=dev)
    Gg, offs7g = G.to(dev), offs7.to(dev)
    ids7g = [i.to(dev) for i in ids7]; psw7g = [p.to(dev) for p in psw7]
    def w7_gpu():
        k[0] = (k[0] + 1) % steps7
        o = F.embedding_bag(ids7g[k[0]], W, offs7g, mode="sum",
                            per_sample_weights=psw7g[k[0]], sparse=True)
        (o * Gg).sum().backward()
        g = W.grad.coalesce(); W.grad = None
        idx, val = g.indices()[0], g.values()
        with torch.no_grad():
            acc[idx] += val.pow(2).mean(1)
            W[idx] -= lr * val / torch.sqrt(acc[idx] + eps).unsqueeze(1)
    out["W7_torch_gpu_resident_step_ms"] = median_wall(w7_gpu, 30, 10)
    out["W7_gpu_resident_bytes"] = N7 * D7 * 4 + N7 * 4
    del W, acc, ids7g, psw7g
    torch.cuda.empty_cache()

    # (b) table and state in host memory: gather the batch's rows, train them on the GPU, copy back
    Wh = torch.randn(N7, D7); acch = torch.zeros(N7)
    pin7 = torch.empty(BAGS7 * L7, D7).pin_memory()
    def w7_naive():
        k[0] = (k[0] + 1) % steps7
        u, inv = torch.unique(ids7[k[0]], return_inverse=True)
        torch.index_select(Wh, 0, u, out=pin7[:len(u)])
        rows_g = pin7[:len(u)].to(dev, non_blocking=True).requires_grad_(True)
        a = acch.index_select(0, u).to(dev, non_blocking=True)
        o = F.embedding_bag(inv.to(dev), rows_g, offs7g, mode="sum",
                            per_sample_weights=psw7[k[0]].to(dev))
        (o * Gg).sum().backward()
        with torch.no_grad():
            g = rows_g.grad
            a += g.pow(2).mean(1)
            new = rows_g - lr * g / torch.sqrt(a + eps).unsqueeze(1)
        Wh.index_copy_(0, u, new.cpu()); acch.index_copy_(0, u, a.cpu())
    out["W7_torch_naive_host_step_ms"] = median_wall(w7_naive, 20, 3)
    out["W7_unique_frac"] = float(np.mean([len(torch.unique(i)) for i in ids7[:5]]) / (BAGS7 * L7))

print(json.dumps(out, indent=1), flush=True)
if jpath:
    json.dump(out, open(jpath, "w"), indent=1)
