"""Record AdamW traces whose gradients hit the edges of f32 (adamw-trace/1).

usage: python tools/record_edge_traces.py [RECORDER_DIR] [OUTDIR]
  RECORDER_DIR  directory of record_torch_trace.py (default: ../shared/tools from the repo root)
  OUTDIR        where the traces go (default: tests/data of this repo)

Uses the shared recorder unchanged except for two monkeypatches:
- `draw_grad`: every gradient is drawn by the original function (so the RNG stream is the
  recorder's own), then the (step, element) entries of EDGES[case] on the `edge` tensor are
  overwritten. The recorder calls draw_grad once per tensor per step, in registration order
  (no `accumulate` here), so call number c of a case is step c // T + 1, tensor c % T.
- `optimizer_step`: the recorder skips any step whose gradients are non-finite, even without
  loss scaling; plain `torch.optim.AdamW.step()` does not skip. These cases have no loss scaling,
  so every step runs `opt.step()` (the +-inf gradients of `f32_edges` reach AdamW).
"""
import importlib, json, os, sys
import numpy as np
from safetensors import safe_open

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def f32(x):
    return float(np.float32(x))


FMAX = f32(np.finfo(np.float32).max)                         # 3.4028235e38, 0x7f7fffff
F7FF8 = float(np.array([0x7F7FF800], np.uint32).view(np.float32)[0])  # 3.4024083e38
INF = float("inf")
EDGE, NORMAL = ("edge", 64), ("w", 37)

BASE = {"groups": [{"params": [list(NORMAL), list(EDGE)]}], "steps": 6}
CASES = [
    dict(BASE, name="f32_edges", seed=7001, schedule={"kind": "constant"},
         optimizer={"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01,
                    "amsgrad": False, "maximize": False}),
    dict(BASE, name="f32_edges_lerp_big", seed=7002,
         schedule={"kind": "cosine", "t_max": 6, "eta_min": 1e-4},
         optimizer={"lr": 1e-3, "betas": [0.3, 0.999], "eps": 1e-8, "weight_decay": 0.1,
                    "amsgrad": True, "maximize": False}),
]
# case -> [(step, element of `edge`, value)]; values are rounded to f32 when injected
EDGES = {
    "f32_edges": [
        (1, 0, FMAX), (2, 0, -FMAX),          # opposite signs, consecutive: g - m overflows
        (2, 7, -F7FF8), (3, 7, F7FF8),
        (3, 11, 3.4025e38), (4, 11, -3.4025e38),
        (4, 15, -3.0e38), (5, 15, 3.0e38),    # 1.1 * 3e38 stays finite with beta1 = 0.9
        (1, 20, 3.0e38), (2, 21, -1e38), (6, 30, 1e38),
        (2, 50, 1.9e19), (3, 50, -1.9e19),    # g*g overflows
        (3, 25, 1.9e19), (5, 26, -1.9e19),
        (4, 40, INF), (4, 41, -INF),
        (5, 45, FMAX), (6, 45, FMAX),         # same sign twice
        (6, 60, -FMAX),
    ],
    "f32_edges_lerp_big": [
        (1, 0, FMAX), (2, 0, -FMAX),
        (2, 5, -F7FF8), (3, 5, F7FF8),
        (3, 9, 3.4025e38), (4, 9, -3.4025e38),
        (4, 13, -3.0e38), (5, 13, 3.0e38),    # 1.7 * 3e38 overflows with beta1 = 0.3
        (5, 17, 1e38), (6, 17, -1e38),        # 1.7e38: finite
        (1, 22, 1.9e19), (2, 22, -1.9e19),
        (2, 40, 1e38), (3, 33, -3.0e38), (6, 30, FMAX),
        (5, 44, FMAX), (6, 44, FMAX),
    ],
}


def bits(x):
    return "0x%08x" % int(np.array([x], np.float32).view(np.uint32)[0])


def main():
    rec_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "../shared/tools"))
    outdir = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "tests/data"))
    sys.path.insert(0, rec_dir)
    rtt = importlib.import_module("record_torch_trace")
    orig_draw, orig_step = rtt.draw_grad, rtt.optimizer_step
    calls = {}

    def draw_grad(cfg, g, n):
        gr = orig_draw(cfg, g, n)  # always draw: keeps the RNG stream the recorder's
        names = [p for grp in cfg["groups"] for p in grp["params"]]
        c = calls[cfg["name"]] = calls.get(cfg["name"], 0) + 1
        step, (name, numel) = (c - 1) // len(names) + 1, names[(c - 1) % len(names)]
        assert n == numel, (cfg["name"], c, name, n)
        if name == EDGE[0]:
            for s, i, v in EDGES[cfg["name"]]:
                if s == step:
                    gr[i] = np.float32(v)
        return gr

    def optimizer_step(cfg, opt, params, scaler, amp_scale):
        assert scaler is None and amp_scale is None and cfg.get("max_grad_norm") is None
        opt.step()
        return False

    rtt.draw_grad, rtt.optimizer_step = draw_grad, optimizer_step
    os.makedirs(outdir, exist_ok=True)
    for cfg in CASES:
        cfg = dict(cfg, grad_edges=[[s, EDGE[0], i, bits(v)] for s, i, v in EDGES[cfg["name"]]])
        path = os.path.join(outdir, cfg["name"] + ".safetensors")
        rtt.record(cfg, path, seed=cfg["seed"])
        assert calls[cfg["name"]] == cfg["steps"] * 2
        report(cfg, path)


def report(cfg, path):
    with safe_open(path, "np") as f:
        meta = f.metadata()
        assert meta["format"] == "adamw-trace/1", meta["format"]
        json.loads(meta["config"])  # strict JSON (no Infinity)
        print(f"\n{path}  ({os.path.getsize(path)} bytes)  format={meta['format']}  {meta['source']}")
        for s, i, v in EDGES[cfg["name"]]:  # the stored gradients carry the injected values
            assert f.get_tensor(f"grad/{s}/{EDGE[0]}")[i] == np.float32(v)
        print("skipped:", f.get_tensor("skipped").tolist())
        keys = ["final", "final_exp_avg", "final_exp_avg_sq"]
        keys += ["final_max_exp_avg_sq"] if cfg["optimizer"]["amsgrad"] else []
        t = {k: f.get_tensor(f"{k}/{EDGE[0]}") for k in keys}
        print("%4s  %-34s " % ("elem", "injected (step:value)") + " ".join("%15s" % (k[6:] or "param") for k in keys))
        for i in sorted({i for _, i, _ in EDGES[cfg["name"]]}):
            hits = ",".join(f"{s}:{np.float32(v):.5g}" for s, j, v in EDGES[cfg["name"]] if j == i)
            print("%4d  %-34s " % (i, hits) + " ".join("%15.7g" % t[k][i] for k in keys))
        others = np.setdiff1d(np.arange(EDGE[1]), [i for _, i, _ in EDGES[cfg["name"]]])
        print("other edge elements all finite:", all(np.isfinite(t[k][others]).all() for k in keys),
              "| normal tensor finite:", bool(np.isfinite(f.get_tensor(f"final/{NORMAL[0]}")).all()))


if __name__ == "__main__":
    main()
