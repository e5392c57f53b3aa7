"""Peak memory and first-predict cost of a predict loop, fastconv against PyTorch and ONNX
Runtime, each backend in its own fresh process (peak resident memory is per process).

    python benchmarks/memory_and_startup.py [resnet50] [--threads 2] [--runs 50]

The parent writes one set of weights in each backend's own format (a fastconv .safetensors
model, a torch state_dict, an ONNX export). Each child imports only its backend, loads the file
the way a user would, runs one predict (the first, which for fastconv includes making the plan
and packing the weights), then `runs` more at batch 1, and reports: resident memory after the
imports, after loading, and at its peak (ru_maxrss, the kernel's high-water mark), the load
time, the first predict and the median of the steady ones.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


CHILD = r'''
import json, sys, time

import numpy as np

def peak_mb():
    # VmHWM: the high-water mark of this process image (ru_maxrss would include the parent's,
    # as Linux keeps it across exec).
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

backend, path, name, threads, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
if backend == "fastconv":
    import fastconv
    fastconv.set_num_threads(threads)
    after_import = rss_mb(); start = time.perf_counter()
    model = fastconv.load(path)
    run = lambda: model.predict(x)
elif backend.startswith("torch"):
    import torch, torchvision
    torch.set_num_threads(threads)
    after_import = rss_mb(); start = time.perf_counter()
    net = getattr(torchvision.models, name)(weights=None).eval()
    net.load_state_dict(torch.load(path, weights_only=True))
    tx = torch.from_numpy(x)
    if backend == "torch_cl":
        net = net.to(memory_format=torch.channels_last)
        tx = tx.contiguous(memory_format=torch.channels_last)
    def run():
        with torch.inference_mode():
            return net(tx)
else:
    import onnxruntime as ort
    after_import = rss_mb(); start = time.perf_counter()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    run = lambda: session.run(None, {session.get_inputs()[0].name: x})
load_s = time.perf_counter() - start
after_load = rss_mb()
start = time.perf_counter(); run(); first = time.perf_counter() - start
times = []
for _ in range(runs):
    start = time.perf_counter(); run(); times.append(time.perf_counter() - start)
print(json.dumps({"after_import_mb": after_import, "after_load_mb": after_load,
                  "peak_mb": peak_mb(),
                  "end_mb": rss_mb(), "load_ms": load_s * 1e3, "first_ms": first * 1e3,
                  "steady_ms": float(np.median(times)) * 1e3}))
'''


def write_files(name, directory):
    import torch
    import torchvision

    from fastconv.convert import from_torch

    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    paths = {"torch": os.path.join(directory, f"{name}.pt"),
             "fastconv": os.path.join(directory, f"{name}.safetensors"),
             "onnxruntime": os.path.join(directory, f"{name}.onnx")}
    torch.save(net.state_dict(), paths["torch"])
    from_torch(net.state_dict(), arch=name).save(paths["fastconv"])
    with torch.inference_mode():
        torch.onnx.export(net, torch.zeros(1, 3, 224, 224), paths["onnxruntime"], opset_version=17,
                          dynamo=False, input_names=["input"], output_names=["output"])
    paths["torch_cl"] = paths["torch"]
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("network", nargs="?", default="resnet50")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        paths = write_files(args.network, directory)
        for backend in ("fastconv", "torch", "torch_cl", "onnxruntime"):
            out = subprocess.run([sys.executable, "-c", CHILD, backend, paths[backend], args.network,
                                  str(args.threads), str(args.runs)],
                                 capture_output=True, text=True, check=True)
            results[backend] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.network}, batch 1, {args.threads} threads, {args.runs} steady runs")
    print(f"{'backend':12s} {'import MB':>9s} {'loaded MB':>9s} {'peak MB':>8s} {'load ms':>8s} "
          f"{'first ms':>9s} {'steady ms':>9s} {'first/steady':>12s}")
    for backend, r in results.items():
        print(f"{backend:12s} {r['after_import_mb']:9.0f} {r['after_load_mb']:9.0f} "
              f"{r['peak_mb']:8.0f} {r['load_ms']:8.1f} {r['first_ms']:9.1f} "
              f"{r['steady_ms']:9.1f} {r['first_ms'] / r['steady_ms']:12.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"network": args.network, "threads": args.threads, "runs": args.runs,
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
