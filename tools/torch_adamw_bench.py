"""PyTorch side of the benchmark: AdamW step time on the workloads the crate's bench uses.

usage: python torch_adamw_bench.py [--device cuda|cpu] [--quick] [--json OUT] [--no-extra]
                                   [--mixed-only] [--iters N] [WORKLOAD ...]
Times torch.optim.AdamW with fused=True, foreach=True and the single-tensor loop, plus a
device copy that moves the same bytes per parameter (28, 36 with amsgrad), and prints one row
per workload. Bare words keep only the workloads whose names contain one of them.
Extra columns (skip with --no-extra):
  fused_bf16_ms   fused=True on bf16 params and grads (PyTorch keeps bf16 moments: 14 B/param);
                  where this build has no fused bf16 kernel, foreach=True instead, reported as
                  foreach_bf16_ms (and fused_bf16_ms absent)
  copy_bf16_ms    a copy moving those 14 B/param
  copy_bf16_f32m_ms  a copy moving 22 B/param: the bytes of bf16 params and grads with f32
                  moments (the crate's `bf16-f32m` row). PyTorch has no such optimizer (its
                  AdamW keeps the moments in the parameters' dtype), so no step is timed
  master_bf16_ms  bf16 params and grads with f32 master weights, as PyTorch code does it
                  (not built into torch.optim): per step torch._foreach_copy_ of the bf16
                  grads into the f32 masters' .grad, AdamW(fused=True) on the f32 masters, and
                  torch._foreach_copy_ of the masters into the bf16 params. Three passes:
                  6 + 28 + 6 = 40 B/param, where the crate's fused `bf16-master` step moves 28
  copy_bf16_master_ms  a copy moving 28 B/param (the crate's `bf16-master` row)
  clip_amp_ms     the usual mixed-precision loop on f32 params, fused=True: GradScaler.unscale_,
                  clip_grad_norm_, GradScaler.step, GradScaler.update (scale held at 1 and the
                  norm limit huge, so the gradients stay the same from step to step)
--mixed-only skips the f32 modes (fused/foreach/single and the f32 copy) and clip_amp_ms.
"""
import argparse, json, time
import torch


def gpt2_shapes(d=768, layers=12, vocab=50257, ctx=1024):
    s = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        s += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return s + [(d,), (d,)]


def workloads(quick):
    """(name, shapes, amsgrad), named as the crate's benchmark names them."""
    if quick:
        return [("flat_2^20", [(1 << 20,)], False), ("flat_2^22", [(1 << 22,)], False),
                ("gpt2_d256", gpt2_shapes(d=256, layers=4, vocab=8192, ctx=256), False),
                ("flat_2^22_amsgrad", [(1 << 22,)], True)]
    return [("flat_2^20", [(1 << 20,)], False), ("flat_2^24", [(1 << 24,)], False),
            ("flat_2^26", [(1 << 26,)], False), ("gpt2_small", gpt2_shapes(), False),
            ("flat_2^26_amsgrad", [(1 << 26,)], True)]


def make_params(shapes, dev, dtype=torch.float32):
    params = [torch.nn.Parameter((torch.randn(*s, device=dev) * 0.02).to(dtype)) for s in shapes]
    for p in params:
        p.grad = (torch.randn_like(p, dtype=torch.float32) * 1e-3).to(dtype)
    return params


def copy_ms(n_floats, dev, iters, dtype=torch.float32):
    """A device copy of n_floats elements read once and written once."""
    src = torch.empty(n_floats, device=dev, dtype=dtype); dst = torch.empty_like(src)
    return timed(lambda: dst.copy_(src), dev, iters)


def copy_bytes_ms(bytes_per_param, n, dev, iters):
    """A copy moving bytes_per_param * n bytes: half of them read, half written."""
    return copy_ms(bytes_per_param * n // 8, dev, iters)


def timed(fn, dev, iters):
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        if dev == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); fn(); b.record(); torch.cuda.synchronize(); times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter(); fn(); times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def mixed(row, shapes, dev, iters):
    """The bf16 columns of one workload: pure bf16 (fused, else foreach), bf16 params with
    f32 master weights (composed: not built into torch), and the copies of the crate's three
    mixed-precision rows."""
    n = row["params"]
    p16 = make_params(shapes, dev, torch.bfloat16)
    try:
        opt = torch.optim.AdamW(p16, lr=1e-3, fused=True)
        row["fused_bf16_ms"] = timed(opt.step, dev, iters)
    except Exception as e:  # a build without fused bf16: foreach, labelled as such
        print(f"  fused bf16: {e}; timing foreach=True instead")
        try:
            opt = torch.optim.AdamW(p16, lr=1e-3, foreach=True)
            row["foreach_bf16_ms"] = timed(opt.step, dev, iters)
        except Exception as e2:
            print(f"  foreach bf16: {e2}")
    row["copy_bf16_ms"] = copy_ms(14 * n // 4, dev, iters, torch.bfloat16)
    # bf16 params and grads, f32 moments: no such optimizer in torch; the copy only.
    row["copy_bf16_f32m_ms"] = copy_bytes_ms(22, n, dev, iters)
    try:
        masters = [torch.nn.Parameter(p.detach().float()) for p in p16]
        for m in masters:
            m.grad = torch.empty_like(m)
        grads16 = [p.grad for p in p16]
        mgrads = [m.grad for m in masters]
        opt = torch.optim.AdamW(masters, lr=1e-3, fused=True)
        def master_step():
            torch._foreach_copy_(mgrads, grads16)
            opt.step()
            with torch.no_grad():
                torch._foreach_copy_(p16, masters)
        row["master_bf16_ms"] = timed(master_step, dev, iters)
    except Exception as e:
        print(f"  bf16 + master: {e}")
    row["copy_bf16_master_ms"] = copy_bytes_ms(28, n, dev, iters)
    del p16


def extra(row, shapes, params, dev, iters, clip=True):
    """The bf16 and the clip + loss-scaling columns of one f32 workload."""
    try:
        mixed(row, shapes, dev, iters)
    except Exception as e:
        print(f"  bf16: {e}")
    if not clip:
        return
    try:
        opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
        sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
        scaler = torch.amp.GradScaler(dev, init_scale=1.0, growth_interval=1 << 30)
        one = torch.ones((), device=dev)
        def loop():
            scaler.scale(one)  # what the loss goes through each step; makes the scale exist
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1e30)
            scaler.step(opt); scaler.update(); sch.step()
        row["clip_amp_ms"] = timed(loop, dev, iters)
    except Exception as e:
        print(f"  clip+amp: {e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json")
    ap.add_argument("--no-extra", action="store_true", help="skip the bf16 and clip+AMP columns")
    ap.add_argument("--mixed-only", action="store_true",
                    help="only the bf16 columns (no f32 modes, f32 copy or clip+AMP)")
    ap.add_argument("filter", nargs="*", help="workload names (substrings) to run")
    a = ap.parse_args()
    dev = a.device
    rows = []
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}")
    for wname, shapes, amsgrad in workloads(a.quick):
        if a.filter and not any(f in wname for f in a.filter):
            continue
        if a.mixed_only and amsgrad:
            continue
        params = make_params(shapes, dev)
        n = sum(p.numel() for p in params)
        bpp = 36 if amsgrad else 28
        row = {"name": wname, "params": n, "tensors": len(params), "bytes_per_step": bpp * n}
        for mode in (() if a.mixed_only else ("fused", "foreach", "single")):
            kw = {"fused": True} if mode == "fused" else {"foreach": mode == "foreach"}
            try:
                opt = torch.optim.AdamW(params, lr=1e-3, amsgrad=amsgrad, **kw)
                sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
                def step():
                    opt.step(); sch.step()
                row[f"{mode}_ms"] = timed(step, dev, a.iters)
            except Exception as e:  # a mode this build does not have
                row[f"{mode}_ms"] = None
                print(f"  {mode}: {e}")
        # bpp B/param counted as bpp/2 read + bpp/2 written
        if not a.mixed_only:
            row["copy_ms"] = copy_ms(bpp * n // 8, dev, a.iters)
        if (a.mixed_only or not a.no_extra) and not amsgrad:
            extra(row, shapes, params, dev, a.iters, clip=not a.mixed_only)
        row["fused_gbps"] = row["bytes_per_step"] / (row["fused_ms"] * 1e6) if row.get("fused_ms") else None
        row["copy_gbps"] = row["bytes_per_step"] / (row["copy_ms"] * 1e6) if row.get("copy_ms") else None
        rows.append(row)
        print(f"{wname:12s} params={n:>11,d} tensors={len(params):4d} " +
              " ".join(f"{k}={row[k]:.3f}" for k in ("fused_ms", "foreach_ms", "single_ms", "copy_ms", "fused_bf16_ms", "foreach_bf16_ms", "copy_bf16_ms", "copy_bf16_f32m_ms", "master_bf16_ms", "copy_bf16_master_ms", "clip_amp_ms") if row.get(k) is not None) +
              (f" fused={row['fused_gbps']:.1f}GB/s" if row.get("fused_gbps") else "") +
              (f" copy={row['copy_gbps']:.1f}GB/s" if row.get("copy_gbps") else ""))
        del params
    if a.json:
        json.dump({"adapter": {"name": name, "backend": "torch-" + dev}, "torch": torch.__version__, "workloads": rows},
                  open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
