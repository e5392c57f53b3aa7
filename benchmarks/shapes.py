"""The real layer shapes of the classic networks (oneDNN benchdnn tables, in
../shared/research), deduplicated, at batch 1: the single source for layer benchmarks."""
import json
from pathlib import Path

RESEARCH = Path(__file__).resolve().parents[2] / "shared" / "research"


def _load(name):
    path = RESEARCH / name
    return json.loads(path.read_text()) if path.is_file() else []


def _padding(entry):
    # benchdnn gives the end padding separately; a negative end pad only means unused rows.
    return ((entry["ph"], max(entry["ph_r"], 0)), (entry["pw"], max(entry["pw_r"], 0)))


def conv_shapes():
    """Distinct convolutions: dicts with c, h, w, o, k (kh, kw), stride, padding, dilation, groups."""
    seen, shapes = set(), []
    for e in _load("benchdnn_conv_shapes.json"):
        shape = dict(c=e["ic"], h=e["ih"], w=e["iw"], o=e["oc"], k=(e["kh"], e["kw"]),
                     stride=(e["sh"], e["sw"]), padding=_padding(e),
                     dilation=(e["dh"] + 1, e["dw"] + 1), groups=e["g"])
        key = repr(sorted(shape.items()))
        if key not in seen:
            seen.add(key)
            shapes.append((e["name"], shape))
    return shapes


def pool_shapes():
    """Distinct poolings: dicts with c, h, w, k, stride, padding, kind ('max' or 'avg'), out."""
    seen, shapes = set(), []
    for e in _load("benchdnn_pool_shapes.json"):
        shape = dict(c=e["ic"], h=e["ih"], w=e["iw"], k=(e["kh"], e["kw"]), stride=(e["sh"], e["sw"]),
                     padding=_padding(e), kind="max" if e["alg_hint"] == "max" else "avg",
                     out=(e["oh"], e["ow"]))
        key = repr(sorted(shape.items()))
        if key not in seen:
            seen.add(key)
            shapes.append((e["name"], shape))
    return shapes


def conv_macs(s, out_hw):
    return s["o"] * out_hw[0] * out_hw[1] * (s["c"] // s["groups"]) * s["k"][0] * s["k"][1]
