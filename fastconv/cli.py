"""The ``fastconv`` command (also ``python -m fastconv``).

    fastconv bench [MODEL ...]          whole networks against PyTorch and ONNX Runtime
    fastconv summary MODEL              the layer table of a zoo model or a .safetensors file
    fastconv info                       build, ISA, kernels, threads and the optional packages
    fastconv convert SRC DST            a PyTorch / Keras / Caffe / ONNX file into .safetensors
    fastconv predict IMAGE ... --model  the top classes of images
    fastconv profile MODEL              time per plan step

A user mistake (unknown model, missing file, bad option) ends with one error line on stderr and
exit status 1 (2 for a malformed command line); ``FASTCONV_TRACEBACK=1`` shows the traceback.
"""
import argparse
import importlib.metadata
import os
import sys
import time

import numpy as np

from . import cli_bench, models
from .runtime import get_num_threads, set_num_threads, show_config

OPTIONAL_PACKAGES = {  # distribution name -> what it is used for
    "torch": "bench peer; reading .pt/.pth files",
    "torchvision": "bench peer architectures; convert --verify (torch)",
    "onnxruntime": "bench peer; convert --verify (onnx)",
    "onnx": "convert --from onnx",
    "keras": "convert --verify (keras)",
    "h5py": "convert --from keras",
    "Pillow": "predict (reading images)",
    "matplotlib": "bench --plot",
    "tqdm": "bench progress bar",
}
SOURCE_FORMATS = {".pt": "torch", ".pth": "torch", ".h5": "keras", ".keras": "keras",
                  ".caffemodel": "caffe", ".onnx": "onnx"}
PREPROCESSING = ("imagenet", "keras-caffe", "keras-tf", "keras-torch")


class CLIError(Exception):
    """A user mistake: reported as one line on stderr, exit status 1."""


# Shared helpers --------------------------------------------------------------------------------

def positive_int(text):
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def non_negative_int(text):
    """argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, received {text!r}")
    return value


def int_list(text):
    """argparse type: comma-separated positive ints ("1,8")."""
    return [positive_int(part) for part in text.split(",") if part.strip()] or \
        [positive_int(text)]


def _existing_file(path, what="file"):
    if not os.path.isfile(path):
        raise CLIError(f"no such {what}: {path}")
    return path


def _zoo_options(args):
    """The zoo constructor options given on the command line."""
    options = {}
    if getattr(args, "variant", None) is not None:
        options["variant"] = args.variant
    if getattr(args, "batch_norm", False):
        options["batch_norm"] = True
    if getattr(args, "num_classes", None) is not None:
        options["num_classes"] = args.num_classes
    return options


def _is_model_file(text):
    return text.endswith(".safetensors") or os.path.sep in text or os.path.isfile(text)


def resolve_model(text, options=None):
    """A zoo name (built with ``options``, random weights) or a fastconv .safetensors file."""
    from .weights import load

    options = options or {}
    if text in models.__all__:
        try:
            return getattr(models, text)(**options)
        except TypeError:
            given = ", ".join("--" + k.replace("_", "-") for k in options)
            raise CLIError(f"{text} does not take {given}") from None
    if _is_model_file(text):
        if options:
            raise CLIError("--variant, --batch-norm and --num-classes apply to zoo names, not files")
        return load(_existing_file(text, "model file"))
    raise CLIError(f"unknown model {text!r}; choose from {', '.join(models.__all__)}, or give a "
                   f"fastconv .safetensors file")


def _add_zoo_options(parser):
    parser.add_argument("--variant", help="zoo variant, e.g. 1998 (lenet5), caffe (alexnet, "
                                          "googlenet), v1 (resnet)")
    parser.add_argument("--batch-norm", action="store_true", help="VGG with batch normalisation")
    parser.add_argument("--num-classes", type=positive_int, help="outputs of the classifier")


# bench -----------------------------------------------------------------------------------------

def _bench_networks(names):
    """(label, zoo name or loaded Model) per MODEL argument; errors before anything runs."""
    networks = []
    for name in names:
        if name in models.__all__:
            networks.append((name, name))
        else:
            networks.append((os.path.basename(name), resolve_model(name)))
    return networks


def _peer_lines(modules, peers, status):
    """What is compared, and which peers are missing and why."""
    versions = {"torch": "torch", "torch_cl": "torch", "onnxruntime": "onnxruntime"}
    used = [f"{cli_bench.PEERS[p]} ({getattr(modules[versions[p]], '__version__', '?')})"
            for p in peers]
    lines = ["compared with: " + (", ".join(used) if used else "nothing (fastconv alone)")]
    missing = sorted({reason for p, reason in status.items() if reason is not None})
    if missing:
        names = [cli_bench.PEERS[p] for p, reason in status.items() if reason is not None]
        lines.append(f"missing peers: {', '.join(names)} ({'; '.join(missing)}); install torch, "
                     f"torchvision and onnxruntime to compare")
    return lines


def cmd_bench(args):
    """Benchmarks the networks and prints the table (plus --json / --plot)."""
    if args.plot:
        cli_bench.check_plot_support()
    networks = _bench_networks(args.models or cli_bench.CLASSIC_NETWORKS)
    modules = cli_bench.peer_modules()
    peers = cli_bench.parse_peers(args.compare, modules)
    threads = args.threads or [get_num_threads()]
    config = show_config(mode="dicts")
    print(f"fastconv {config['version']}, ISA {config['isa']}, on {cli_bench.cpu_name()} "
          f"({os.cpu_count()} cores); threads {','.join(map(str, threads))}, batch "
          f"{','.join(map(str, args.batch))}, {args.rounds} rounds")
    for line in _peer_lines(modules, peers, cli_bench.available_peers(modules)):
        print(line)
    print(flush=True)
    options = cli_bench.BenchOptions(rounds=args.rounds, warmup=args.warmup, gap=args.gap_ms / 1e3,
                                     profile=bool(args.plot or args.json),
                                     progress=not args.no_progress)
    report = cli_bench.run_bench(networks, args.batch, threads, peers, modules, options)
    report["command"] = ["fastconv"] + list(args.argv)
    print()
    for line in cli_bench.report_footer(report):
        print(line)
    if args.json:
        cli_bench.write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        cli_bench.plot_report(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


# summary, info -----------------------------------------------------------------------------------

def cmd_summary(args):
    """Prints the model's layer table (and its plan with --plan)."""
    model = resolve_model(args.model, _zoo_options(args))
    model.summary()
    if args.plan:
        print("\nPlan (the fused steps predict runs):")
        model.plan_summary()
    return 0


def package_versions():
    """{distribution: version or None} for every optional package."""
    versions = {}
    for name in OPTIONAL_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cmd_info(args):
    """Prints show_config() and which optional packages are installed."""
    show_config()
    print(f"{'cpu':<13}: {cli_bench.cpu_name()} ({os.cpu_count()} cores)")
    print("\nOptional packages:")
    for name, version in package_versions().items():
        print(f"  {name:<12} {version or 'not installed':<16} {OPTIONAL_PACKAGES[name]}")
    return 0


# convert ---------------------------------------------------------------------------------------

def source_format(path, given):
    """The converter to use: --from, else guessed from the file extension."""
    if given:
        return given
    for extension, fmt in SOURCE_FORMATS.items():
        if path.lower().endswith(extension):
            return fmt
    raise CLIError(f"cannot tell the format of {path} from its extension; give --from "
                   f"torch|keras|caffe|onnx")


def _convert(fmt, args):
    """The converted model, by source format."""
    from . import convert

    options = _zoo_options(args)
    if fmt == "torch":
        if not args.arch:
            raise CLIError(f"a PyTorch file holds weights only: give the architecture with "
                           f"--arch ({', '.join(models.__all__)})")
        return convert.from_torch(args.source, arch=args.arch, verify=args.verify, **options)
    if fmt == "keras":
        return convert.from_keras(args.source, arch=args.arch, verify=args.verify, **options)
    if args.arch or options:
        raise CLIError(f"--arch and zoo options do not apply to {fmt} files (they hold their "
                       f"architecture)")
    if fmt == "caffe":
        if not args.prototxt:
            raise CLIError("a .caffemodel holds weights only: give the deploy prototxt with "
                           "--prototxt")
        if args.verify:
            raise CLIError("--verify is not available for Caffe files (no reference runtime)")
        return convert.from_caffe(_existing_file(args.prototxt, "prototxt"), args.source)
    return convert.from_onnx(args.source, verify=args.verify)


def _preprocessing(name, model):
    from .preprocess import _model_image_shape, imagenet_preprocessing, keras_imagenet_preprocessing

    if name == "imagenet":
        return imagenet_preprocessing()
    size = _model_image_shape(model)[0] or (224, 224)
    return keras_imagenet_preprocessing(name.split("-", 1)[1], size=tuple(size))


def _verification_line(verification):
    reference = verification.get("reference", "the source framework")
    line = f"verification against {reference}: largest difference " \
           f"{verification['max_abs_difference']:.3g}"
    if "output_scale" in verification:
        line += f" (output scale {verification['output_scale']:.3g})"
    return line


def cmd_convert(args):
    """Converts SRC into a fastconv .safetensors file DST."""
    _existing_file(args.source, "source file")
    fmt = source_format(args.source, args.source_format)
    target_dir = os.path.dirname(os.path.abspath(args.destination))
    if not os.path.isdir(target_dir):
        raise CLIError(f"no such directory for the output: {target_dir}")
    model = _convert(fmt, args)
    if args.preprocessing:
        model.info["preprocessing"] = _preprocessing(args.preprocessing, model)
    if args.labels:
        with open(_existing_file(args.labels, "labels file"), encoding="utf-8") as f:
            model.info["labels"] = [line.strip() for line in f if line.strip()]
    model.save(args.destination)
    print(f"wrote {args.destination}: {model.name} from {fmt}, {model.count_params():,} "
          f"parameters, {len(model.layers)} layers")
    if "verification" in model.info:
        print(_verification_line(model.info["verification"]))
    if "preprocessing" not in model.info:
        print("note: no preprocessing recorded; `fastconv predict` will scale pixels to 0..1 "
              "(add --preprocessing imagenet for torchvision ImageNet models)")
    return 0


# predict ---------------------------------------------------------------------------------------

def _looks_like_probabilities(scores):
    return bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))


def _softmax(scores):
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def class_names(model, classes):
    """model.info["labels"], else the ImageNet names for 1000 classes, else "class i"."""
    from .preprocess import imagenet_classes

    labels = model.info.get("labels")
    if labels and len(labels) == classes:
        return list(labels)
    if classes == 1000:
        return list(imagenet_classes())
    return [f"class {i}" for i in range(classes)]


def cmd_predict(args):
    """Prints the top classes of each image."""
    from .preprocess import decode_predictions, preprocess
    from .weights import load

    for image in args.images:
        _existing_file(image, "image file")
    model = load(_existing_file(args.model, "model file"))
    if not model.info.get("preprocessing"):
        print(f"note: {args.model} records no preprocessing; using pixels / 255 at the model's "
              f"input size", file=sys.stderr)
    batch = np.concatenate([preprocess(image, model) for image in args.images])
    scores = model.predict(batch)
    scores = np.asarray(scores[0] if isinstance(scores, list) else scores, dtype=np.float64)
    if scores.ndim != 2:
        raise CLIError(f"the model's output has shape {scores.shape}; predict needs "
                       f"(batch, classes) scores")
    probabilities = scores if _looks_like_probabilities(scores) else _softmax(scores)
    top = min(args.top, scores.shape[1])
    labels = class_names(model, scores.shape[1])
    for image, row in zip(args.images, decode_predictions(probabilities, top, labels)):
        print(image)
        for rank, (index, name, p) in enumerate(row, 1):
            print(f"  {rank}. {name:<32} {100 * p:6.2f} %  (class {index})")
    return 0


# profile ---------------------------------------------------------------------------------------

def _median_predict_ms(model, x, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(x)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def _threads_text(n):
    return f"{n} thread" + ("s" if n != 1 else "")


def cmd_profile(args):
    """Prints the plan's steps, slowest first, with their share and GFLOP/s."""
    from .profiling import profile_plan

    model = resolve_model(args.model, _zoo_options(args))
    if args.threads:
        set_num_threads(args.threads)
    shape = (args.batch,) + tuple(model.inputs[0].sample_shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    rows = profile_plan(model, x, repeats=args.repeats)
    total = sum(r["median_ms"] for r in rows)
    print(f"{model.name}: batch {args.batch}, {_threads_text(get_num_threads())}, median of "
          f"{args.repeats} runs per step")
    print(f"{'#':>4}  {'ms':>9}  {'share':>6}  {'GFLOP/s':>8}  step")
    shown = sorted(rows, key=lambda r: -r["median_ms"])[:args.top]
    for r in shown:
        gflops = f"{r['gflops']:.1f}" if r["gflops"] else "-"
        print(f"{r['index']:>4}  {r['median_ms']:>9.3f}  {100 * r['median_ms'] / total:>5.1f}%  "
              f"{gflops:>8}  {r['step']}")
    if len(shown) < len(rows):
        print(f"      ({len(rows) - len(shown)} faster steps not shown)")
    predict_ms = _median_predict_ms(model, x, args.repeats)
    print(f"\nsum of the steps {total:.3f} ms; predict {predict_ms:.3f} ms (median), "
          f"{len(rows)} steps")
    return 0


# The parser ------------------------------------------------------------------------------------

def _bench_parser(sub):
    p = sub.add_parser("bench", help="benchmark whole networks against PyTorch and ONNX Runtime",
                       description="Benchmarks whole networks (default: the classic ones, random "
                       "weights, batch 1, all cores) against every installed peer, with the same "
                       "weights, outputs checked first, runs interleaved.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help=f"zoo names or .safetensors files (default: "
                        f"{' '.join(cli_bench.CLASSIC_NETWORKS)})")
    p.add_argument("--batch", type=int_list, default=[1], help="batch sizes, e.g. 1,8 (default 1)")
    p.add_argument("--threads", type=int_list, help="thread counts, e.g. 1,2 (default: "
                                                     "OMP_NUM_THREADS, else all cores)")
    p.add_argument("--compare", help="peers: torch, torch_cl, onnxruntime (comma-separated) or "
                                     "none (default: every installed peer)")
    p.add_argument("--rounds", type=positive_int, default=cli_bench.BenchOptions.rounds,
                   help=f"timed rounds per cell ({cli_bench.BenchOptions.rounds})")
    p.add_argument("--warmup", type=non_negative_int, default=cli_bench.BenchOptions.warmup,
                   help=f"untimed rounds first ({cli_bench.BenchOptions.warmup})")
    p.add_argument("--gap-ms", type=float, default=5.0, help="idle time before each run (5)")
    p.add_argument("--json", metavar="FILE", help="write every result, the machine and versions")
    p.add_argument("--plot", metavar="FILE.png", help="draw latencies and fastconv's time per "
                                                      "step kind (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_bench)


def _other_parsers(sub):
    p = sub.add_parser("summary", help="a model's layer table",
                       description="Prints the layer table of a zoo model or a .safetensors file.")
    p.add_argument("model", metavar="MODEL", help="zoo name or .safetensors file")
    _add_zoo_options(p)
    p.add_argument("--plan", action="store_true", help="also list the fused plan steps")
    p.set_defaults(handler=cmd_summary)

    p = sub.add_parser("info", help="configuration and optional packages",
                       description="Prints show_config() and the optional packages installed.")
    p.set_defaults(handler=cmd_info)

    p = sub.add_parser("convert", help="convert a PyTorch/Keras/Caffe/ONNX file to .safetensors",
                       description="Writes a fastconv .safetensors file (architecture, weights, "
                       "info) from a source file; the format is guessed from the extension: "
                       ".pt/.pth torch, .h5/.keras keras, .caffemodel caffe, .onnx onnx.")
    p.add_argument("source", metavar="SRC")
    p.add_argument("destination", metavar="DST", help="the .safetensors file to write")
    p.add_argument("--from", dest="source_format", choices=("torch", "keras", "caffe", "onnx"))
    p.add_argument("--arch", help="zoo architecture (needed for torch files)")
    p.add_argument("--prototxt", metavar="FILE", help="Caffe deploy prototxt (caffe)")
    p.add_argument("--verify", action="store_true", help="compare with the source framework "
                                                         "on one random input")
    p.add_argument("--preprocessing", choices=PREPROCESSING, help="record the input preparation")
    p.add_argument("--labels", metavar="FILE", help="class names, one a line, to record")
    _add_zoo_options(p)
    p.set_defaults(handler=cmd_convert)

    p = sub.add_parser("predict", help="classify images with a fastconv model file",
                       description="Preprocesses each image as the model's info says and prints "
                       "its top classes.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, metavar="FILE", help="fastconv .safetensors file")
    p.add_argument("--top", type=positive_int, default=5, help="classes per image (5)")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("profile", help="time per plan step",
                       description="Times every step of the model's plan (random input), "
                       "slowest first.")
    p.add_argument("model", metavar="MODEL", help="zoo name or .safetensors file")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs (median)")
    p.add_argument("--threads", type=positive_int, help="default: OMP_NUM_THREADS, else all cores")
    p.add_argument("--top", type=positive_int, help="show only the slowest N steps")
    _add_zoo_options(p)
    p.set_defaults(handler=cmd_profile)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastconv", description="fastconv: fast CPU inference for convolutional networks.",
        epilog="`python -m fastconv` is the same command. Each command has --help.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _bench_parser(sub)
    _other_parsers(sub)
    return parser


def _report_error(command, err):
    """One line on stderr (a multi-line message keeps its first 10 detail lines, indented)."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    print(f"fastconv {command}: error: {lines[0]}", file=sys.stderr)
    for line in lines[1:11]:
        print(f"    {line.strip()}", file=sys.stderr)
    if len(lines) > 11:
        print(f"    ... ({len(lines) - 11} more lines)", file=sys.stderr)


def main(argv=None):
    """The console script: runs one command and returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.handler(args)
    except BrokenPipeError:  # the reader went away (`fastconv info | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (CLIError, cli_bench.BenchError, FileNotFoundError, ValueError, ImportError,
            OSError) as err:
        if os.environ.get("FASTCONV_TRACEBACK"):
            raise
        _report_error(args.command, err)
        return 1
    except KeyboardInterrupt:
        print(f"fastconv {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
