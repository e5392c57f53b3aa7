"""The execution plan of a model: its layers fused into fewer, cheaper steps.

A model's graph is what the user wrote (Conv2D, BatchNormalization, ReLU, Add, ...). The plan is
what runs:

- a Conv2D absorbs the BatchNormalization that follows it (folded into its kernel and bias),
  then a ReLU/ReLU6/tanh/sigmoid activation, then a residual ``Add`` (whose other operand is
  added in the convolution's store, in place when that operand is not needed afterwards) and the
  activation after it;
- a 1x1 convolution step adding a projection shortcut (another 1x1 convolution step, at a
  stride, with no activation and no other reader: ResNet's downsample) takes it in: one GEMM
  over both inputs' channels (``_core.ConvSumPlan``), where the kernel table would run both as
  packed GEMMs;
- a Dense absorbs the activation that follows it;
- a 1x1 expansion (or a stem), a 3x3 depthwise and a 1x1 projection step on large images
  (MobileNetV2's first blocks) become one depth-first chain, run band by band of rows
  (src/ops/chain.c);
- convolution and dense weights are packed once into the layout their kernels read;
- Dropout is free (the identity), every other layer runs as it is;
- runs of consecutive steps with a native op (convolution, dense, pooling, global average
  pooling, channel concatenation, and Flatten/Dropout as aliases) execute as one Segment: a
  ``_core.Program`` call instead of a Python call per step.

A fused step runs at the position of the last layer it absorbed, so its inputs (including a
residual computed on another branch) are always ready. Convolutions, dense layers, poolings and
concatenations write into an activation arena: buffers assigned once, by liveness (a buffer is
reused as soon as every array that may refer to it was read for the last time), and allocated
per thread and batch size on first use, so a steady-state predict allocates only its outputs
(and the arrays of the few other layer kinds). The plan is rebuilt when a layer's weights are
replaced (``set_weights``, ``load_weights``) or the kernel table changes
(``fastconv.runtime.isa_cap``).

Only channels_first models are planned; channels_last models run layer by layer.
"""
import math
import threading
from collections import OrderedDict

import numpy as np

from . import _core, runtime, tuning
from . import functional as F
from .layers import (Activation, AdaptiveAvgPool2D, Add, AvgPool2D, BatchNormalization,
                     Concatenate, Conv2D, Dense, Dropout, Flatten, GlobalAveragePooling2D,
                     InputLayer, Layer, MaxPool2D)

_FUSABLE = ("relu", "relu6", "tanh", "sigmoid")
# Segments whose convolutional part does fewer MACs per byte of activations it moves than
# this run it in chunks of samples that fit in _CHUNK_BYTES (half this machine's L3 cache):
# MobileNetV2 (5), GoogLeNet (20), ResNet-50 (36) and ResNet-152 (49) measured faster so at
# batch 8, ResNet-18 (70) the same (Segment.chunk). On several threads each thread runs its
# share of a chunk through the whole part on its own (Segment.runs_apart).
_MEMORY_BOUND_MACS_PER_BYTE = 64
_CHUNK_BYTES = 16 << 20
# Depth-first chains are made where the depthwise layer reads or writes at least this much per
# sample (MobileNetV2's blocks on 112x112 and 56x56 images). On 28x28 (602 KB) they measured no
# faster: the layers' tensors stay in L2 and L3 from one layer to the next anyway.
_CHAIN_MIN_BYTES = 1 << 20
_ARENAS_KEPT = 2  # batch sizes whose arenas a thread keeps (the last chunk of a batched predict)
_NOTHING_BOUND = {}  # a thread's BoundPrograms before its first direct run (never written)


def plannable(model):
    return model.data_format == "channels_first"


class Step:
    """One operator call: ``run(values, out)`` reads the arrays of ``inputs`` (node ids) and
    returns node ``output``'s array.

    ``fresh`` steps return an array that nothing else refers to (convolutions, dense layers,
    poolings, concatenations); other layers may return a view of their input (Flatten,
    Dropout). Steps with a ``shape`` (per sample) can write into ``out``, an arena buffer of
    that shape, and are given one unless their output is a model output; the others get None."""

    def __init__(self, inputs, output, run, describe, fresh=False, shape=None):
        self.inputs, self.output, self.run, self.describe = list(inputs), output, run, describe
        self.fresh, self.shape = fresh, shape
        self.release = []
        self.residual = None  # node id added in this step's store, if any
        self.in_place = False  # whether the store may overwrite the residual's array
        self.slot = None  # the arena buffer the step writes, if any
        # (concatenation step, offset in floats per sample) where a native run writes this
        # step's output, and on a concatenation the parts so written (Plan._assemble_concats).
        self.into = None
        self.assembled = set()
        # What the step is as an op of a _core.Program (node ids where registers go), or None
        # for steps only Python runs.
        self.native = None


class Plan:
    def __init__(self, model):
        self._model = model
        self._position = {node: i for i, node in enumerate(model._nodes)}
        self._consumers = _consumers(model._nodes)
        self._input_ids = [self._position[t] for t in model.inputs]
        self._output_ids = [self._position[t] for t in model.outputs]
        self._outputs, self._inputs = set(self._output_ids), set(self._input_ids)
        # The layers with weights (a layer without any has nothing the plan could go stale on).
        self._weights_version = Layer.weights_version  # the weights below are current then
        self._weights = [(layer, layer.weights) for layer in model.layers if layer.weights]
        self._winograd = runtime.winograd_enabled()
        self._depth_first = runtime.depth_first_enabled()
        self._algorithms = dict(model._algorithms)  # the per-layer choices forced by the user
        self._tuning = tuning.generation()
        self._absorbed = set()  # nodes merged into a fused step that starts at another node
        self.steps = self._fuse()
        if self._depth_first:
            self.steps = self._depth_first_chains(self.steps)
        self.steps = self._projection_sums(self.steps)
        _schedule_releases(self.steps, self._outputs)
        self._mark_in_place()
        self._assemble_concats()
        self._slot_sizes, self._copied_outputs = _assign_slots(self.steps, self._outputs)
        self.units = self._segments()
        self._direct = self._direct_registers()
        self._local = threading.local()  # each thread's arenas: no locking on the hot path

    def _mark_in_place(self):
        """A residual array may be overwritten by the step that adds it when that step is its
        last reader, it is nobody's view (made and read by fresh steps only) and it is neither
        a model input nor a model output, and it is not also the step's input (the kernels
        read their input while they store)."""
        producer = {step.output: step for step in self.steps}
        for step in self.steps:
            r = step.residual
            if (r is None or step.native[0] != "conv" or r in self._inputs or r in self._outputs
                    or r not in step.release or r == step.inputs[0]):
                continue
            readers = [s for s in self.steps if r in s.inputs]
            step.in_place = producer[r].fresh and all(s.fresh for s in readers)

    def _assemble_concats(self):
        """Lets the producers of a channel concatenation's parts write them straight into the
        concatenation's buffer, so that nothing is copied (GoogLeNet's inception blocks). A part
        qualifies when the concatenation is its only reader, it is no model output, its producer
        is a convolution (not storing in place over a residual), a depth-first chain or a
        pooling, and every step from the producer to the concatenation runs natively (one
        Segment, whose program writes the part as a view of the concatenation's register).
        Steps run one by one (``fastconv profile``) still write their own arrays and copy."""
        index = {step.output: i for i, step in enumerate(self.steps)}
        readers = {}
        for step in self.steps:
            for i in step.inputs:
                readers[i] = readers.get(i, 0) + 1
        nodes = self._model._nodes
        for c, concat in enumerate(self.steps):
            if (concat.native is None or concat.native[0] != "concat"
                    or concat.output in self._outputs):
                continue
            offset = 0
            for part in concat.inputs:
                producer = self.steps[index[part]] if part in index else None
                if (producer is not None and readers[part] == 1 and part not in self._outputs
                        and producer.native is not None and producer.shape is not None
                        and producer.native[0] in ("conv", "chain", "pool")
                        and not producer.in_place
                        and all(s.native is not None for s in self.steps[index[part]:c])):
                    producer.into = (concat, offset)
                    concat.assembled.add(part)
                offset += math.prod(nodes[part].sample_shape)
            if concat.assembled:
                concat.describe += (f" ({len(concat.assembled)} of {len(concat.inputs)} parts "
                                    f"written in place)")

    def is_current(self, tuning_age=0.0):
        """False once any layer's weights were replaced, or the Winograd setting, a forced
        algorithm or the tuning cache changed, since the plan was made (the cache file as it was
        at most ``tuning_age`` seconds ago)."""
        version = Layer.weights_version  # read first: a change during the loop shows next time
        if version != self._weights_version:  # some layer's weights were assigned: this model's?
            for layer, weights in self._weights:  # a loop: a generator costs more per predict
                if layer.weights is not weights:
                    return False
            self._weights_version = version
        return (self._winograd == runtime.winograd_enabled()
                and self._depth_first == runtime.depth_first_enabled()
                and self._algorithms == self._model._algorithms
                and self._tuning == tuning.generation(tuning_age))

    def arena(self, batch):
        """The calling thread's output buffer of each step (None where the step allocates)
        for this batch size, made on first use; a thread keeps the last few batch sizes'."""
        arenas = getattr(self._local, "arenas", None)
        if arenas is None:
            arenas = self._local.arenas = OrderedDict()
        if batch in arenas:
            arenas.move_to_end(batch)
            return arenas[batch]
        buffers = [np.empty(batch * size, np.float32) for size in self._slot_sizes]
        views = [None if step.slot is None else
                 buffers[step.slot][:batch * math.prod(step.shape)].reshape((batch,) + step.shape)
                 for step in self.steps]
        arenas[batch] = views
        if len(arenas) > _ARENAS_KEPT:
            dropped, _ = arenas.popitem(last=False)
            bound = getattr(self._local, "bound", _NOTHING_BOUND)  # run_direct's, over it
            for key in [key for key in bound if key[0] == dropped]:
                del bound[key]
        return views

    def run(self, arrays):
        """Runs the plan: each native segment in one call of its program, the other steps one
        by one."""
        values = dict(zip(self._input_ids, arrays))
        batch = arrays[0].shape[0]
        outs = self.arena(batch)
        for unit in self.units:
            if isinstance(unit, Segment):
                unit.run(values, outs, batch)
                continue
            step = self.steps[unit]
            values[step.output] = step.run(values, outs[unit])
            for i in step.release:
                del values[i]
        # An output that may be a view of an arena buffer (a Flatten after a pooling) is copied:
        # the caller keeps it while the next run reuses the buffer.
        return [values[i].copy() if i in self._copied_outputs else values[i]
                for i in self._output_ids]

    def run_direct(self, x):
        """The output for one input array on the common plan (``_direct_registers``), through
        a ``_core.BoundProgram`` made once per thread, batch size and thread count; None where
        that does not apply (then ``run`` does): x not a C-contiguous float32 array of the
        input's shape, or an empty batch. After an idle gap the general path's Python (each
        object and line of code it touches fetched from memory again) cost LeNet-5 more than
        its kernels: docs/layers.md, "A predict's fixed cost"."""
        if self._direct is None or type(x) is not np.ndarray or x.ndim != self._direct[2]:
            return None
        key = (x.shape[0], _core.get_num_threads())
        bound = getattr(self._local, "bound", _NOTHING_BOUND).get(key)
        if bound is None:
            if key[0] == 0:
                return None
            bound = self._bind_direct(*key)
        return bound.run(x)

    def _direct_registers(self):
        """(input register, output register, input ndim) when the plan is one native segment
        whose only input is the model's and whose only export is the model's output, written
        into an array of its own; else None."""
        if (len(self.units) != 1 or not isinstance(self.units[0], Segment)
                or len(self._output_ids) != 1 or self._copied_outputs
                or self._model._list_outputs):
            return None
        segment = self.units[0]
        if [node for _, node in segment.inputs] != self._input_ids or len(segment.exports) != 1:
            return None
        out_reg, out_id, _ = segment.exports[0]
        if out_id != self._output_ids[0] or segment.root[out_reg] != out_reg:
            return None
        in_shape = self._model._nodes[self._input_ids[0]].sample_shape
        return segment.inputs[0][0], out_reg, 1 + len(in_shape)

    def _bind_direct(self, batch, threads):
        """The calling thread's BoundProgram for a batch size and thread count, over its arena
        (dropped with that batch size's arena, ``arena``)."""
        segment, (in_reg, out_reg, _) = self.units[0], self._direct
        outs = self.arena(batch)
        arrays, chunk, strides = segment.bind(outs, batch, threads)
        arrays[out_reg] = None
        nodes = self._model._nodes
        bound = _core.BoundProgram(segment.program, arrays, batch, chunk, strides, in_reg,
                                   nodes[self._input_ids[0]].sample_shape, out_reg,
                                   nodes[self._output_ids[0]].sample_shape)
        if not hasattr(self._local, "bound"):
            self._local.bound = {}
        self._local.bound[(batch, threads)] = bound
        return bound

    def _segments(self):
        """The plan's units in order: a Segment for each run of steps that have a native op, the
        index of each other step."""
        units, run = [], []
        for index, step in enumerate(self.steps + [None]):
            if step is not None and step.native is not None:
                run.append(index)
                continue
            if run:
                units.append(Segment(self, run))
                run = []
            if step is not None:
                units.append(index)
        return units

    def summary(self):
        """One line per step: what it computes, which layers it absorbed, and the micro-kernels
        it runs on the kernel table in force."""
        names = _core.kernel_names()
        isa = names["vector"].rsplit("__", 1)[-1]
        return "\n".join(f"{i:3d}  {step.describe}  [{_kernels(step, names['gemm'], isa)}]"
                         for i, step in enumerate(self.steps))

    # Fusion ------------------------------------------------------------------------------------

    def _fuse(self):
        absorbed, pending = self._absorbed, {}
        for node in self._model._nodes:
            layer = node.layer
            if node in absorbed or isinstance(layer, InputLayer):
                continue
            if isinstance(layer, Conv2D) and layer.activation in (None, "linear") + _FUSABLE:
                chain = self._conv_chain(node)
            elif isinstance(layer, Dense) and layer.activation in (None, "linear") + _FUSABLE:
                chain = self._dense_chain(node)
            else:
                chain = None
            if chain is None:
                pending[node] = self._layer_step(node)
                continue
            absorbed.update(chain["nodes"][1:])
            pending[chain["nodes"][-1]] = chain["make"](chain)
        # Each step runs where its last absorbed layer stood in the graph order.
        return [pending[node] for node in self._model._nodes if node in pending]

    def _single_consumer(self, node):
        """The one layer reading ``node``, or None if it has several readers, is an output, or
        was already merged into another step (an Add whose other operand claimed it)."""
        readers = self._consumers[node]
        if len(readers) != 1 or self._position[node] in self._outputs or readers[0] in self._absorbed:
            return None
        return readers[0]

    def _absorb_activation(self, chain):
        nxt = self._single_consumer(chain["nodes"][-1])
        if (chain["activation"] is None and nxt is not None and isinstance(nxt.layer, Activation)
                and nxt.layer.activation in _FUSABLE):
            chain["nodes"].append(nxt)
            chain["activation"] = nxt.layer.activation

    def _conv_chain(self, node):
        layer = node.layer
        chain = {"nodes": [node], "activation": _activation(layer.activation), "bn": None,
                 "residual": None, "make": self._conv_step}
        nxt = self._single_consumer(node)
        if chain["activation"] is None and nxt is not None and isinstance(nxt.layer, BatchNormalization):
            chain["nodes"].append(nxt)
            chain["bn"] = nxt.layer
        self._absorb_activation(chain)
        nxt = self._single_consumer(chain["nodes"][-1])
        if (chain["activation"] is None and nxt is not None and isinstance(nxt.layer, Add)
                and len(nxt.inbound) == 2):
            end = chain["nodes"][-1]
            other = nxt.inbound[1] if nxt.inbound[0] is end else nxt.inbound[0]
            if other is not end:
                chain["nodes"].append(nxt)
                chain["residual"] = other
                chain["activation"] = _activation(nxt.layer.activation)
                self._absorb_activation(chain)
        return chain

    def _dense_chain(self, node):
        chain = {"nodes": [node], "activation": _activation(node.layer.activation),
                 "make": self._dense_step}
        self._absorb_activation(chain)
        return chain

    # Depth-first chains --------------------------------------------------------------------------

    def _depth_first_chains(self, steps):
        """The steps with each run of 1x1 and 3x3 depthwise convolution steps that is worth
        running depth-first (``_chain_length``) replaced by one chain step."""
        readers = {}
        for step in steps:
            for i in step.inputs:
                readers[i] = readers.get(i, 0) + 1
        out, i = [], 0
        while i < len(steps):
            n = self._chain_length(steps, i, readers)
            out.append(self._chain_step(steps[i:i + n]) if n else steps[i])
            i += n or 1
        return out

    def _chain_length(self, steps, i, readers):
        """How many steps from i form a chain (0: none): a 1x1 expansion or a stem (optional),
        a 3x3 depthwise and a 1x1 projection convolution, each the only reader of the one
        before, no residual but on the last, whose depthwise input or output is at least
        _CHAIN_MIN_BYTES per sample (below that, the layers' tensors stay in L2 anyway)."""
        for kinds in (("gemm", "direct", "gemm"), ("implicit", "direct", "gemm"),
                      ("direct", "gemm")):
            run = steps[i:i + len(kinds)]
            if len(run) < len(kinds) or [_chain_kind(s) for s in run] != list(kinds):
                continue
            linked = all(b.inputs[0] == a.output and readers.get(a.output) == 1
                         and a.output not in self._outputs and a.residual is None
                         for a, b in zip(run, run[1:]))
            dw = run[kinds.index("direct")]
            largest = 4 * max(math.prod(self._model._nodes[dw.inputs[0]].sample_shape),
                              math.prod(dw.shape))
            if linked and largest >= _CHAIN_MIN_BYTES:
                return len(kinds)
        return 0

    def _chain_step(self, run):
        chain = _core.ConvChainPlan([step.native[1] for step in run])
        x_id, out_id, r_id = run[0].inputs[0], run[-1].output, run[-1].residual
        out_shape = run[-1].shape

        def run_chain(values, out):
            x = values[x_id]
            if out is None:
                out = np.empty((x.shape[0],) + out_shape, np.float32)
            chain.run(x, out, None if r_id is None else values[r_id])
            return out

        names = " + ".join(step.names for step in run)
        algorithms = ", ".join(step.conv_algorithm for step in run)
        describe = f"conv2d[depth-first: {algorithms}] {names}{run[-1].residual_note}"
        step = Step([x_id] + ([r_id] if r_id is not None else []), out_id, run_chain, describe,
                    fresh=True, shape=out_shape)
        step.residual = r_id
        step.native = ("chain", chain, x_id, r_id, out_id)
        step.conv_algorithm = "depth-first"
        return step

    # Projection shortcuts ----------------------------------------------------------------------

    def _projection_sums(self, steps):
        """The steps with each 1x1 convolution that adds a projection shortcut (ResNet's
        bottleneck conv3 + BN + add, with the downsample conv + BN) and the shortcut's step
        replaced by one ConvSumPlan step: a GEMM over both inputs' channels, so the shortcut's
        output is never stored and read back, and the residual store is a plain one."""
        readers = {}
        for step in steps:
            for i in step.inputs:
                readers[i] = readers.get(i, 0) + 1
        producer = {step.output: step for step in steps}
        fused, dropped = {}, set()
        for step in steps:
            shortcut = producer.get(step.residual)
            if shortcut is not None and readers[shortcut.output] == 1:
                made = self._projection_sum(step, shortcut)
                if made is not None:
                    fused[id(step)] = made
                    dropped.add(id(shortcut))
        return [fused.get(id(step), step) for step in steps if id(step) not in dropped]

    def _projection_sum(self, step, shortcut):
        """The fused step for ``step`` adding ``shortcut``'s output, or None: both 1x1 GEMM steps
        of one group, the shortcut with no activation or residual of its own and no model
        output, at most one of them strided (equally on both axes), and the fused GEMM the way
        the kernel table in force would run them (_core.conv_sum_applies)."""
        pair = (step, shortcut)
        if any(s.native is None or s.native[0] != "conv" or s.conv_algorithm != "gemm"
               or s.chain["nodes"][0].layer.groups != 1 for s in pair):
            return None
        if (shortcut.residual is not None or shortcut.chain["activation"] is not None
                or shortcut.output in self._outputs):
            return None
        strides = [tuple(s.chain["nodes"][0].layer.strides) for s in pair]
        if strides[0] != (1, 1):  # the unstrided layer reads its input in place: first
            pair, strides = pair[::-1], strides[::-1]
        (a, b), (stride, stride_w) = pair, strides[1]
        if strides[0] != (1, 1) or stride != stride_w:
            return None
        nodes = self._model._nodes
        in_a, in_b = (nodes[s.inputs[0]].sample_shape for s in pair)
        out_channels = step.shape[0]
        if not _core.conv_sum_applies(out_channels, in_a, in_b, stride):
            return None
        (ka, bias_a), (kb, bias_b) = (_folded(s.chain["nodes"][0].layer, s.chain["bn"]) for s in pair)
        bias = None
        if bias_a is not None or bias_b is not None:
            bias = np.zeros(out_channels, np.float32)
            for part in (bias_a, bias_b):
                bias += 0 if part is None else part
        plan = _core.ConvSumPlan(ka, kb, bias, in_a, in_b, stride,
                                 F._ACTIVATIONS[step.chain["activation"]])
        return self._sum_step(plan, a.inputs[0], b.inputs[0], step,
                              f"{step.names} + {shortcut.names}")

    def _sum_step(self, plan, xa_id, xb_id, replaced, names):
        out_id, out_shape = replaced.output, replaced.shape

        def run(values, out):
            xa = values[xa_id]
            if out is None:
                out = np.empty((xa.shape[0],) + out_shape, np.float32)
            plan.run(xa, values[xb_id], out)
            return out

        step = Step(list(dict.fromkeys([xa_id, xb_id])), out_id, run,
                    f"conv2d[gemm+shortcut] {names}", fresh=True, shape=out_shape)
        step.native = ("conv_sum", plan, xa_id, xb_id, out_id)
        step.conv_algorithm = "gemm"
        return step

    # Steps -------------------------------------------------------------------------------------

    def _conv_step(self, chain):
        node = chain["nodes"][0]
        layer, source = node.layer, node.inbound[0]
        kernel, bias = _folded(layer, chain["bn"])
        conv = F.PreparedConv2d(kernel, bias, source.sample_shape, layer.strides, layer.padding,
                                layer.dilation, layer.groups, chain["activation"],
                                algorithm=self._algorithm(layer, source.sample_shape, kernel.shape),
                                winograd=self._winograd)
        x_id = self._position[source]
        out_id = self._position[chain["nodes"][-1]]
        residual = chain["residual"]
        r_id = None if residual is None else self._position[residual]

        out_shape, plan = conv.output_shape, conv._conv

        def run(values, out):
            # The plan's arrays are C-contiguous float32 of the right shapes (the core checks),
            # so the kernel is called without PreparedConv2d's conversions.
            x = values[x_id]
            residual = None if r_id is None else values[r_id]
            if step.in_place:
                out = residual
            elif out is None:
                out = np.empty((x.shape[0],) + out_shape, np.float32)
            plan.run(x, out, residual)
            return out

        names = " + ".join(n.layer.name for n in chain["nodes"])
        note = f" (+ residual {residual.layer.name})" if residual else ""
        step = Step([x_id] + ([r_id] if r_id is not None else []), out_id, run,
                    f"conv2d[{conv.algorithm}] {names}{note}", fresh=True, shape=out_shape)
        step.names, step.residual_note = names, note  # what a depth-first chain step lists
        step.chain = chain  # what a projection sum re-folds (_projection_sums)
        step.residual = r_id
        step.native = ("conv", plan, x_id, r_id, out_id)
        step.conv_algorithm = conv.algorithm
        return step

    def _algorithm(self, layer, input_shape, kernel_shape):
        """A forced choice (Model.set_algorithm), else a measured one (Model.tune) unless it is
        Winograd and Winograd is off, else "auto" (the heuristic)."""
        if layer.name in self._algorithms:
            return self._algorithms[layer.name]
        tuned = tuning.lookup(tuning.conv_key(input_shape, kernel_shape, layer.strides,
                                              layer.padding, layer.dilation, layer.groups))
        if tuned is None or (tuned in F._WINOGRAD and not self._winograd):
            return "auto"
        return tuned

    def _dense_step(self, chain):
        node = chain["nodes"][0]
        layer = node.layer
        dense = _core.DensePlan(layer.weights["kernel"], layer.weights.get("bias"),
                                F._ACTIVATIONS[chain["activation"]])
        x_id, out_id = self._position[node.inbound[0]], self._position[chain["nodes"][-1]]

        def run(values, out):
            x = np.ascontiguousarray(values[x_id], dtype=np.float32)
            if out is None:
                out = np.empty((x.shape[0], layer.units), np.float32)
            dense.run(x, out)
            return out

        names = " + ".join(n.layer.name for n in chain["nodes"])
        step = Step([x_id], out_id, run, f"dense {names}", fresh=True, shape=(layer.units,))
        step.native = ("dense", dense, x_id, out_id)
        return step

    def _layer_step(self, node):
        layer, ids, out_id = node.layer, [self._position[p] for p in node.inbound], self._position[node]
        if isinstance(layer, Dropout):
            step = Step(ids, out_id, lambda values, out: values[ids[0]], f"identity {layer.name}")
            step.native = ("alias", ids[0], out_id)
            return step
        if isinstance(layer, (MaxPool2D, AvgPool2D)):
            return self._pool_step(node, layer, ids[0])
        if isinstance(layer, Concatenate) and _channel_concat(layer, node):
            return self._concat_step(node, ids)
        if isinstance(layer, GlobalAveragePooling2D):
            return self._global_pool_step(node, layer, ids[0])

        def run(values, out):
            args = [values[i] for i in ids]
            return layer.call(args if layer.merges else args[0])

        step = Step(ids, out_id, run, f"{type(layer).__name__.lower()} {layer.name}")
        if isinstance(layer, Flatten) or (isinstance(layer, AdaptiveAvgPool2D) and
                                          node.sample_shape == node.inbound[0].sample_shape):
            step.native = ("alias", ids[0], out_id)  # NCHW memory order: a reshape, no copy
        return step

    def _concat_step(self, node, ids):
        def run(values, out):
            arrays = [values[i] for i in ids]
            if out is None:
                return np.concatenate(arrays, axis=1)
            return np.concatenate(arrays, axis=1, out=out)

        step = Step(ids, self._position[node], run, f"concatenate {node.layer.name}", fresh=True,
                    shape=node.sample_shape)
        step.native = ("concat", ids, step.output)
        return step

    def _global_pool_step(self, node, layer, x_id):
        (_, h, w), shape = node.inbound[0].sample_shape, node.sample_shape

        def run(values, out):
            x = values[x_id]
            if out is None:
                out = np.empty((x.shape[0],) + shape, np.float32)
            if out.size:
                _core.global_pool(x.reshape(-1, h * w), out.reshape(-1), False)
            return out

        step = Step([x_id], self._position[node], run, f"globalaveragepooling2d {layer.name}",
                    fresh=True, shape=shape)
        step.native = ("global_pool", False, h * w, x_id, step.output)
        return step

    def _pool_step(self, node, layer, x_id):
        is_max = isinstance(layer, MaxPool2D)
        pool = F.PreparedPool2d("max" if is_max else "avg", node.inbound[0].sample_shape,
                                layer.pool_size, layer.strides, layer.padding,
                                ceil_mode=layer.ceil_mode,
                                count_include_pad=getattr(layer, "count_include_pad", True))
        geometry = pool._geometry

        def run(values, out):
            return geometry.run(values[x_id], is_max, pool._count_include_pad, out)

        step = Step([x_id], self._position[node], run,
                    f"{type(layer).__name__.lower()} {layer.name}", fresh=True,
                    shape=pool.output_shape)
        step.native = ("pool", is_max, geometry.kernel, geometry.stride, geometry.dilation,
                       geometry.pads, pool._count_include_pad, pool.input_shape,
                       geometry.out_hw, x_id, step.output)
        return step


class Segment:
    """A run of consecutive steps that all have a native op, executed by one
    ``_core.Program`` call instead of one Python call per step (a few microseconds each, the
    bulk of a small network's time).

    Every node the segment reads or writes gets a register. Per call, registers are given the
    arrays they live in: the segment's inputs from ``values``, step outputs from the thread's
    arena (or fresh arrays for model outputs); registers of aliases and in-place stores share
    the array of their ``root``. Afterwards, the nodes that later steps or the model's outputs
    read are put in ``values``; the inputs whose last reader is in the segment are dropped."""

    def __init__(self, plan, indices):
        steps = [plan.steps[i] for i in indices]
        nodes = plan._model._nodes
        regs = {}  # node id -> register

        def reg(node_id):
            return regs.setdefault(node_id, len(regs))

        produced = {step.output for step in steps}
        self.inputs = []  # (register, node id) read from values
        for step in steps:
            for i in step.inputs:
                if i not in produced and i not in regs:
                    self.inputs.append((reg(i), i))
            reg(step.output)
        self.root = list(range(len(regs)))  # register -> register whose array it uses
        ops, self.fills = [], []  # fills: (register, step index, sample shape) of step outputs
        views = []  # (register, whole, offset): parts written into their concatenation
        for index, step in zip(indices, steps):
            ops += _program_ops(step, regs, nodes)
            y = regs[step.output]
            kind = step.native[0]
            if step.into is not None:
                concat, offset = step.into
                views.append((y, regs[concat.output], offset))
            elif kind == "alias":
                self.root[y] = self.root[regs[step.native[1]]]
            elif kind == "conv" and step.in_place:
                self.root[y] = self.root[regs[step.residual]]
            else:
                self.fills.append((y, index, step.shape))
        # Floats per sample of the arena slot each filled register lives in (the samples of
        # registers sharing a slot are placed this far apart when threads run apart).
        self._slot_floats = {y: plan._slot_sizes[plan.steps[index].slot]
                             for y, index, _ in self.fills if plan.steps[index].slot is not None}
        sizes = [0] * len(regs)
        for node_id, r in regs.items():
            sizes[r] = math.prod(nodes[node_id].sample_shape)
        self.program = _core.Program(ops, sizes, views)
        moved = 4 * self.program.prefix_floats  # bytes per sample
        memory_bound = 0 < self.program.prefix_macs < _MEMORY_BOUND_MACS_PER_BYTE * moved
        # Samples whose largest op fits in _CHUNK_BYTES, if the program is worth cutting.
        self._fits = int(_CHUNK_BYTES // (4 * self.program.prefix_peak_floats)) if memory_bound else 0
        self.size = len(regs)
        later = set(plan._outputs)
        for step in plan.steps[indices[-1] + 1:]:
            later.update(step.inputs)
        self.exports = [(regs[i], i, nodes[i].sample_shape) for i in sorted(produced & later)]
        self.release = [i for step in steps for i in step.release if i not in produced]
        self._escaping = self._escaping_fills(indices, steps, regs)

    def _escaping_fills(self, indices, steps, regs):
        """The fills written before the first dense step and read after it or outside the
        segment. Run in chunks, the program writes a chunk's registers at that chunk's offset:
        an arena buffer shared (by liveness) with a register of the convolutional part would be
        overwritten by later chunks before the rest reads it, so these get their own arrays."""
        tail = next((k for k, step in enumerate(steps) if step.native[0] == "dense"), len(steps))
        read_later = {regs[i] for step in steps[tail:] for i in step.inputs}
        read_later.update(r for r, _, _ in self.exports)
        roots = {self.root[r] for r in read_later}
        first_tail = indices[tail] if tail < len(steps) else math.inf  # in plan.steps
        return {r for r, index, _ in self.fills if r in roots and index < first_tail}

    def chunk(self, batch, threads):
        """Samples the convolutional part runs at a time (0: all). Only memory-bound programs
        (MobileNetV2: 5 MACs per byte of activations, GoogLeNet 20, ResNet-50 36, ResNet-152
        49; not ResNet-18 70, VGG-16 127) are cut, into the fewest chunks whose largest op fits
        in _CHUNK_BYTES, a multiple of the threads so that whole images still go to each
        thread. Measured at batch 8 (docs/layers.md): MobileNetV2 15 % faster in chunks of 2;
        since session 9's kernels also ResNet-50 (chunks of 2) 2 %, ResNet-152 2-5 %, GoogLeNet
        (chunks of 4) 3 % on one and two threads; ResNet-18 the same."""
        if not self._fits:
            return 0
        chunk = max(threads, self._fits // threads * threads)
        return chunk if chunk < batch else 0

    def runs_apart(self, batch, threads):
        """Whether each thread runs its share of every chunk through the whole convolutional
        part on its own (``_core.Program.run``'s strides) instead of the threads sharing each op
        and joining after it: for the memory-bound programs (those cut into chunks). At batch 8
        on two threads (Zen 3, wall clock, interleaved with op by op in one process, medians of
        12 per-round ratios): MobileNetV2 x0.954, GoogLeNet x0.950, ResNet-50 x0.99; ResNet-18,
        AlexNet and LeNet-5 (not chunked) measured x0.97-1.00 and stay op by op. Ctrl-C is
        then served between chunks, not between ops."""
        return bool(self._fits) and threads > 1 and batch > 1

    def bind(self, outs, batch, threads):
        """The program's arrays for a run (the step outputs' arena buffers in ``outs``, fresh
        arrays for model outputs and for the fills that must not share a buffer; None for the
        inputs), its chunk and its strides."""
        arrays = [None] * self.size
        chunk = self.chunk(batch, threads) if self._fits else 0
        apart = self.runs_apart(batch, threads)
        strides = [0] * self.size if apart else None
        for r, index, shape in self.fills:
            out = outs[index]
            if out is None or ((chunk or apart) and r in self._escaping):
                out = np.empty((batch,) + shape, np.float32)
            elif apart:
                strides[r] = self._slot_floats[r]
            arrays[r] = out
        return arrays, chunk, strides

    def run(self, values, outs, batch):
        arrays, chunk, strides = self.bind(outs, batch, runtime.get_num_threads())
        for r, node_id in self.inputs:
            arrays[r] = np.ascontiguousarray(values[node_id], dtype=np.float32)
        self.program.run(batch, arrays, chunk, strides)
        for r, node_id, shape in self.exports:
            array = arrays[self.root[r]]
            values[node_id] = array if self.root[r] == r else array.reshape((batch,) + shape)
        for node_id in self.release:
            del values[node_id]


def _kernels(step, gemm, isa):
    """The micro-kernels a step runs (src/include/fc_kernels.h), for plan summaries."""
    kind = step.native[0] if step.native is not None else None
    if kind == "conv_sum":
        return gemm
    if kind == "conv":
        algorithm = step.conv_algorithm
        if algorithm in ("winograd", "winograd4"):
            return f"f32_{algorithm}_input_ukernel__{isa}, {gemm}, f32_{algorithm}_output_ukernel__{isa}"
        if algorithm != "direct":
            return gemm
        return f"f32_{step.native[1].direct_kernel(step.in_place)}_ukernel__{isa}"
    if kind == "chain":
        return ", ".join(gemm if kernel == "gemm" else f"f32_{kernel}_ukernel__{isa}"
                         for kernel in step.native[1].kernels)
    if kind == "dense":
        return f"f32_gemv_ukernel__{isa} at batch 1, else {gemm}"
    if kind == "pool":
        is_max, kernel, stride, dilation, pads, _, in_chw, out_hw = step.native[1:9]
        return f"f32_{_core.pool2d_kernel(is_max, kernel, stride, dilation, pads, in_chw[1:], out_hw)}_ukernel__{isa}"
    return {"global_pool": "a plain loop", "concat": "copies", "alias": "none: a view",
            None: "Python"}[kind]


def _program_ops(step, regs, nodes):
    """The step's op tuples for _core.Program, node ids replaced by registers."""
    kind, *args = step.native
    if kind == "conv":
        conv, x, r, y = args
        return [("conv", conv, regs[x], -1 if r is None else regs[r], regs[y], step.in_place)]
    if kind == "chain":
        chain, x, r, y = args
        return [("chain", chain, regs[x], -1 if r is None else regs[r], regs[y])]
    if kind == "conv_sum":
        plan, xa, xb, y = args
        return [("conv_sum", plan, regs[xa], regs[xb], regs[y])]
    if kind == "dense":
        return [("dense", args[0], regs[args[1]], regs[args[2]])]
    if kind == "concat":  # the parts not already written in place are copied
        parts, y = args
        sizes = [math.prod(nodes[i].sample_shape) for i in parts]
        offsets = [sum(sizes[:k]) for k in range(len(parts))]
        return [("copy", regs[i], regs[y], offset) for i, offset in zip(parts, offsets)
                if i not in step.assembled]
    return [(kind, *args[:-2], regs[args[-2]], regs[args[-1]])]  # pool, global_pool, alias


def _chain_kind(step):
    """A convolution step's algorithm if it can be a depth-first stage, else None."""
    if step.native is None or step.native[0] != "conv" or not step.native[1].chainable:
        return None
    return step.conv_algorithm


def _activation(name):
    return None if name in (None, "linear") else name


def _folded(conv, bn):
    """Conv2D kernel and bias with a following BatchNormalization folded in: the per-channel
    scale and the bias in float64, the kernel times the (rounded) scale in float32, which is
    within an ulp of the float64 product and four times faster on large networks."""
    kernel = conv.weights["kernel"]
    bias = conv.weights.get("bias")
    if bn is None:
        return kernel, bias
    w = bn.weights
    scale = w["gamma"].astype(np.float64) / np.sqrt(w["moving_variance"].astype(np.float64) + bn.epsilon)
    base = np.zeros(kernel.shape[0]) if bias is None else bias.astype(np.float64)
    folded_bias = (base - w["moving_mean"]) * scale + w["beta"]
    folded_kernel = kernel * scale.astype(np.float32)[:, None, None, None]
    return folded_kernel, folded_bias.astype(np.float32)


def _channel_concat(layer, node):
    """Whether a Concatenate joins NCHW images along the channels (what the arena step does)."""
    shape = node.sample_shape
    return len(shape) == 3 and layer._resolve_axis(layer.axis, len(shape)) == 1


def _assign_slots(steps, outputs):
    """Gives each step that can write into a buffer (a ``shape``) and does not make a model
    output an arena slot, reusing slots by liveness. Returns the slots' sizes in floats per
    sample, and the model outputs that may still refer to a slot. An array is live until its
    last reader; a non-fresh step's output may be a view of its inputs, so it keeps their slots
    live too."""
    holders, sizes, free = {}, [], []  # slot -> node ids that may refer to it
    slots_of = {}  # node id -> slots its array may refer to
    for step in steps:
        if step.into is not None:
            # Written into its concatenation's buffer, which is live from the first such part.
            concat = step.into[0]
            if concat.slot is None:
                concat.slot = _take_slot(free, sizes, math.prod(concat.shape))
                slots_of[concat.output] = {concat.slot}
                holders.setdefault(concat.slot, set()).add(concat.output)
            slots_of[step.output] = set()
        elif step.in_place:
            slots_of[step.output] = slots_of.get(step.residual, set())
        elif step.slot is not None:  # a concatenation whose buffer a part already took
            pass
        elif step.shape is not None and step.output not in outputs:
            step.slot = _take_slot(free, sizes, math.prod(step.shape))
            slots_of[step.output] = {step.slot}
        elif not step.fresh:
            slots_of[step.output] = set().union(*(slots_of.get(i, set()) for i in step.inputs))
        else:
            slots_of[step.output] = set()
        for slot in slots_of[step.output]:
            holders.setdefault(slot, set()).add(step.output)
        for node_id in step.release:
            for slot in slots_of.pop(node_id, set()):
                holders[slot].discard(node_id)
                if not holders[slot]:
                    free.append(slot)
    return sizes, {i for i in outputs if slots_of.get(i)}


def _take_slot(free, sizes, size):
    """A free slot for `size` floats per sample (the smallest that fits, else the largest free
    one, grown), or a new one."""
    fitting = [s for s in free if sizes[s] >= size]
    if fitting:
        slot = min(fitting, key=lambda s: sizes[s])
    elif free:
        slot = max(free, key=lambda s: sizes[s])
        sizes[slot] = size
    else:
        sizes.append(size)
        return len(sizes) - 1
    free.remove(slot)
    return slot


def _consumers(nodes):
    readers = {node: [] for node in nodes}
    for node in nodes:
        for source in node.inbound:
            readers[source].append(node)
    return readers


def _schedule_releases(steps, outputs):
    """Marks, on each step, the arrays it is the last to read (model outputs are kept)."""
    last = {}
    for step in steps:
        for i in step.inputs:
            last[i] = step
    for node_id, step in last.items():
        if node_id not in outputs:
            step.release.append(node_id)

