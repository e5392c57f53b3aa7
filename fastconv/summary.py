"""The text table of ``Model.summary``."""
from .layers import InputLayer


def _rows(model):
    """(name (type), output shape, params, MACs, inbound names) per shown layer."""
    shown = {id(layer) for layer in model.layers}
    for node in model._nodes:
        layer = node.layer
        if id(layer) not in shown:
            continue
        if isinstance(layer, InputLayer):
            macs = 0
        else:
            shapes = [p.sample_shape for p in node.inbound]
            macs = layer.count_macs(shapes if layer.merges else shapes[0], node.sample_shape)
        yield (f"{layer.name} ({type(layer).__name__})", str(node.shape), layer.count_params(),
               macs, [p.layer.name for p in node.inbound])


def _is_chain(model):
    """True when each layer reads exactly the one before it (no column for connections)."""
    nodes = model._nodes
    return all(len(node.inbound) == (1 if i else 0) and (not i or node.inbound[0] is nodes[i - 1])
               for i, node in enumerate(nodes))


def summarize(model):
    rows = list(_rows(model))
    connected = not _is_chain(model)
    header = ["Layer (type)", "Output Shape", "Param #", "MACs"]
    header += ["Connected to"] if connected else []
    table = []
    for name, shape, params, macs, inbound in rows:
        first = inbound[0] if inbound else ""
        table.append([name, shape, f"{params:,}", f"{macs:,}"] + ([first] if connected else []))
        table.extend(["", "", "", "", extra] for extra in (inbound[1:] if connected else []))
    widths = [max(len(str(r[c])) for r in [header] + table) for c in range(len(header))]
    right = {2, 3}

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "=" * (sum(widths) + 2 * (len(widths) - 1))
    total_params = sum(r[2] for r in rows)
    fixed = model.count_params(include_non_trainable=True) - total_params
    total_macs = sum(r[3] for r in rows)
    lines = [f'Model: "{model.name}" ({model.data_format})', rule, line(header), rule]
    lines += [line(cells) for cells in table]
    lines += [rule, f"Total params: {total_params:,}"]
    if fixed:
        lines += [f"Non-trainable weights: {fixed:,} (statistics and constants, not counted above)"]
    lines += [f"Total MACs: {total_macs:,} per sample"]
    return "\n".join(lines)
