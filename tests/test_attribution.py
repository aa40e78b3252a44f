"""Byte and FLOP attribution of a compiled step (muppet_jax/compile/attribution.py).

Two kinds of checks: a hand-written optimized-HLO module whose every FLOP and byte is counted
by hand below (the rules of XLA's cost analysis: fusion operands read once however many
elementwise users, slices read their slice, pass-through outputs are free, a loop body counts
once, a conditional its costliest branch per property, source stacks from the frame table);
and real compiled steps, whose attributed totals must match XLA's own `cost_analysis()` within
1% (the contract of compile_report.json's `attribution`).
"""

import jax
import jax.numpy as jnp
import pytest

from muppet_jax.compile import attribution
from muppet_jax.compile import hlo_cost
from muppet_jax.compile import hlo

# f32 = 4 bytes. Shapes are small so that the arithmetic below stays readable.
MODULE = """HloModule jit_step, is_scheduled=true

FileNames
1 "/src/muppet_jax/models/roberta.py"
2 "/src/muppet_jax/step.py"
3 "/site-packages/optax/_src/transform.py"

FunctionNames
1 "RobertaIntermediate.__call__"
2 "make_gradient_fn.<locals>.per_device"
3 "scale_by_adam.<locals>.update_fn"
4 "RobertaSelfAttention.__call__"

FileLocations
1 {file_name_id=2 function_name_id=2 line=90 end_line=90 column=1 end_column=1}
2 {file_name_id=1 function_name_id=1 line=174 end_line=174 column=1 end_column=1}
3 {file_name_id=3 function_name_id=3 line=300 end_line=300 column=1 end_column=1}
4 {file_name_id=1 function_name_id=4 line=125 end_line=125 column=1 end_column=1}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}
3 {file_location_id=3 parent_frame_id=1}
4 {file_location_id=4 parent_frame_id=2}

%fused_mlp (param_0: f32[64,32], param_1: f32[32,16], param_2: f32[128,16]) -> (f32[64,16], f32[128,16]) {
  %param_0 = f32[64,32]{1,0} parameter(0)
  %param_1 = f32[32,16]{1,0} parameter(1)
  %dot.1 = f32[64,16]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="dot" stack_frame_id=2}
  %tanh.1 = f32[64,16]{1,0} tanh(%dot.1)
  %add.1 = f32[64,16]{1,0} add(%tanh.1, %tanh.1)
  %param_2 = f32[128,16]{1,0} parameter(2)
  ROOT %tuple.1 = (f32[64,16]{1,0}, f32[128,16]{1,0}) tuple(%add.1, %param_2)
}

%fused_slice (param_0.1: f32[1000,16], param_1.1: f32[10,16]) -> f32[10,16] {
  %param_0.1 = f32[1000,16]{1,0} parameter(0)
  %slice.1 = f32[10,16]{1,0} slice(%param_0.1), slice={[0:10], [0:16]}
  %param_1.1 = f32[10,16]{1,0} parameter(1)
  %mul.1 = f32[10,16]{1,0} multiply(%slice.1, %param_1.1)
  ROOT %add.2 = f32[10,16]{1,0} add(%mul.1, %param_1.1)
}

%add_reducer (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%heavy_branch (p: (f32[8,8])) -> (f32[8,8]) {
  %p = (f32[8,8]{1,0}) parameter(0)
  %gte.1 = f32[8,8]{1,0} get-tuple-element(%p), index=0
  %dot.2 = f32[8,8]{1,0} dot(%gte.1, %gte.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="dot" stack_frame_id=4}
  ROOT %tuple.2 = (f32[8,8]{1,0}) tuple(%dot.2)
}

%wide_branch (p.1: (f32[8,8])) -> (f32[8,8]) {
  %p.1 = (f32[8,8]{1,0}) parameter(0)
  %gte.2 = f32[8,8]{1,0} get-tuple-element(%p.1), index=0
  %copy.2 = f32[8,8]{1,0} copy(%gte.2)
  %copy.3 = f32[8,8]{1,0} copy(%copy.2)
  %copy.4 = f32[8,8]{1,0} copy(%copy.3)
  ROOT %tuple.3 = (f32[8,8]{1,0}) tuple(%copy.4)
}

%body (state: (s32[], f32[16])) -> (s32[], f32[16]) {
  %state = (s32[], f32[16]{0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %v = f32[16]{0} get-tuple-element(%state), index=1
  %exp.1 = f32[16]{0} exponential(%v), metadata={op_name="exp" stack_frame_id=3}
  ROOT %tuple.4 = (s32[], f32[16]{0}) tuple(%i, %exp.1)
}

%cond (state.1: (s32[], f32[16])) -> pred[] {
  %state.1 = (s32[], f32[16]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%state.1), index=0
  %limit = s32[] constant(3)
  ROOT %lt = pred[] compare(%i.1, %limit), direction=LT
}

ENTRY %main (a: f32[64,32], w: f32[32,16], pass: f32[128,16], table: f32[1000,16], u: f32[10,16], b: s32[], m: f32[8,8], s: (s32[], f32[16])) -> f32[10,16] {
  %a = f32[64,32]{1,0} parameter(0)
  %w = f32[32,16]{1,0} parameter(1)
  %pass = f32[128,16]{1,0} parameter(2)
  %table = f32[1000,16]{1,0} parameter(3)
  %u = f32[10,16]{1,0} parameter(4)
  %b = s32[] parameter(5)
  %m = f32[8,8]{1,0} parameter(6)
  %s = (s32[], f32[16]{0}) parameter(7)
  %mlp = (f32[64,16]{1,0}, f32[128,16]{1,0}) fusion(%a, %w, %pass), kind=kOutput, calls=%fused_mlp, metadata={op_name="fusion" stack_frame_id=2}
  %sliced = f32[10,16]{1,0} fusion(%table, %u), kind=kLoop, calls=%fused_slice
  %reduced = f32[] reduce(%u, %zero), dimensions={0,1}, to_apply=%add_reducer
  %zero = f32[] constant(0)
  %allreduce = f32[10,16]{1,0} all-reduce(%sliced), replica_groups={}, to_apply=%add_reducer
  %mt = (f32[8,8]{1,0}) tuple(%m)
  %branch = (f32[8,8]{1,0}) conditional(%b, %mt, %mt), branch_computations={%heavy_branch, %wide_branch}
  %loop = (s32[], f32[16]{0}) while(%s), condition=%cond, body=%body
  ROOT %out = f32[10,16]{1,0} copy(%allreduce)
}
"""


def test_parse_frames_and_instructions():
  module = hlo.parse_module(MODULE)
  assert module.entry == 'main'
  mlp = module.computations['main'].by_name['mlp']
  assert mlp.operands == ('a', 'w', 'pass') and mlp.called('calls') == ['fused_mlp']
  # Frame 2 (RobertaIntermediate) -> its parent frame 1 (per_device); frame 1 is outermost.
  assert [f.function for f in module.stack(2)] == ['RobertaIntermediate.__call__',
                                                   'make_gradient_fn.<locals>.per_device']
  assert [f.line for f in module.stack(3)] == [300]
  assert module.stack(0) == ()


def test_hand_counted_module():
  a = attribution.attribute(MODULE)
  by = {g.name: g for g in a.groups}
  # MLP fusion: the dot 2*64*16*32 FLOPs, add 64*16 (tanh is a transcendental); reads a
  # (64*32*4), w (32*16*4) once each; `pass` only passes through (free); writes 64*16*4.
  mlp_flops = 2 * 64 * 16 * 32 + 64 * 16
  mlp_bytes = 4 * (64 * 32 + 32 * 16 + 64 * 16)
  assert by['mlp'].flops == mlp_flops and by['mlp'].bytes == mlp_bytes
  # The conditional: the heavy branch has the FLOPs (2*8*8*8) and the dot's bytes
  # (2 reads of m... one operand used twice: 8*8*4 * 2 + output 8*8*4); the wide branch has
  # more bytes (3 copies, each 2*8*8*4). XLA takes each property's maximum.
  assert by['attention projections'].flops == 2 * 8 * 8 * 8
  assert by['copies'].bytes == 3 * 2 * 8 * 8 * 4 + 2 * 10 * 16 * 4  # + the ROOT copy
  assert by['attention projections'].bytes == 0  # Its branch lost on bytes.
  # The slicing fusion: reads the 10x16 slice of the table (not all of it) and u once; two
  # elementwise ops of 160 elements each.
  slicing_bytes = 4 * (10 * 16 + 10 * 16 + 10 * 16)
  # The reduce: 160 - 1 additions, reads u and the scalar init, writes a scalar.
  reduce_bytes = 4 * (10 * 16 + 1 + 1)
  # The loop condition: one s32 compare of two scalars into a pred.
  condition_bytes = 4 + 4 + 1
  assert by['other'].flops == 2 * 160 + 159 + 1
  assert by['other'].bytes == slicing_bytes + reduce_bytes + condition_bytes
  # The all-reduce: one addition per element, reads and writes 10x16.
  assert by['collectives'].flops == 160 and by['collectives'].bytes == 2 * 4 * 160
  # The loop body counts once: exp of 16 (a transcendental, in the optimizer's stack).
  assert by['optimizer'].bytes == 2 * 16 * 4 and by['optimizer'].flops == 0
  assert a.transcendentals == 64 * 16 + 16
  assert a.flops == sum(g.flops for g in a.groups)
  assert a.bytes == sum(g.bytes for g in a.groups)
  assert [op.name for op in a.top[:1]] == ['mlp']  # The heaviest by bytes.
  assert a.top[0].source == 'roberta.py:174 RobertaIntermediate.__call__'


# A counted loop as `lax.scan` lowers it: i from 2 (a copied constant) while i < 7, the body
# adds 1 to i (through a copy) and negates a vector: 5 iterations.
COUNTED_LOOP = """HloModule jit_loop, is_scheduled=true

%body (state: (s32[], f32[16])) -> (s32[], f32[16]) {
  %state = (s32[], f32[16]{0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %i.copy = s32[] copy(%i)
  %one = s32[] constant(1)
  %next = s32[] add(%i.copy, %one)
  %v = f32[16]{0} get-tuple-element(%state), index=1
  %neg = f32[16]{0} negate(%v)
  ROOT %t = (s32[], f32[16]{0}) tuple(%next, %neg)
}

%cond (state.1: (s32[], f32[16])) -> pred[] {
  %state.1 = (s32[], f32[16]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%state.1), index=0
  %limit = s32[] constant(7)
  ROOT %lt = pred[] compare(%i.1, %limit), direction=LT
}

ENTRY %main (v0: f32[16]) -> (s32[], f32[16]) {
  %v0 = f32[16]{0} parameter(0)
  %two = s32[] constant(2)
  %start = s32[] copy(%two)
  %init = (s32[], f32[16]{0}) tuple(%start, %v0)
  ROOT %loop = (s32[], f32[16]{0}) while(%init), condition=%cond, body=%body
}
"""


def test_loops_count_once_or_times_their_trip_count():
  once = attribution.attribute(COUNTED_LOOP)
  runs = attribution.attribute(COUNTED_LOOP, trip_counts=True)
  # Per iteration: the body's copy of i (4 + 4 bytes), i + 1 (4 + 4 + 4 bytes, 1 FLOP), the
  # negation (64 + 64 bytes, 16 FLOPs); the condition's compare (4 + 4 + 1 bytes, 1 FLOP).
  # Outside: the copy of the start value (4 + 4 bytes).
  per_iteration_bytes, per_iteration_flops = 8 + 12 + 128 + 9, 1 + 16 + 1
  assert once.bytes == per_iteration_bytes + 8 and once.flops == per_iteration_flops
  assert runs.bytes == 5 * per_iteration_bytes + 8 and runs.flops == 5 * per_iteration_flops
  assert runs.note == 'loop bodies times their trip counts'
  # XLA's own `known_trip_count` wins over the loop's form.
  known = COUNTED_LOOP.replace('body=%body', 'body=%body, backend_config={"known_trip_count":'
                               '{"n":"3"}}')
  assert attribution.attribute(known, trip_counts=True).flops == 3 * per_iteration_flops
  # A loop whose count the program does not say (a bound that is not a constant, a body that
  # steps by 2) counts once, and the note names it.
  for unknown in (COUNTED_LOOP.replace('%limit = s32[] constant(7)',
                                       '%limit = s32[] get-tuple-element(%state.1), index=0'),
                  COUNTED_LOOP.replace('%one = s32[] constant(1)', '%one = s32[] constant(2)')):
    counted = attribution.attribute(unknown, trip_counts=True)
    assert counted.bytes == attribution.attribute(unknown).bytes
    assert counted.note.endswith('trip count unknown (counted once): loop')
  # The module above: its loop starts from a parameter, so its count is unknown.
  assert 'unknown (counted once): loop' in attribution.attribute(MODULE, trip_counts=True).note


# A scan body's data movement: one layer's weights sliced out of the stack (index arithmetic
# only: copies), and a layer's result written into the stack of saved activations with the
# LayerNorm that computes it fused in (the update's source decides: norms).
SCAN_MOVES = """HloModule jit_scan, is_scheduled=true

FileNames
1 "/src/muppet_jax/models/attention.py"
2 "/src/muppet_jax/models/roberta.py"

FunctionNames
1 "run_layers"
2 "LayerNorm.__call__"

FileLocations
1 {file_name_id=1 function_name_id=1 line=487 end_line=487 column=1 end_column=1}
2 {file_name_id=2 function_name_id=2 line=60 end_line=60 column=1 end_column=1}

StackFrames
1 {file_location_id=1 parent_frame_id=0}
2 {file_location_id=2 parent_frame_id=1}

%fused_slice_layer (p0: f32[4,32,32], p1: s32[]) -> f32[32,32] {
  %p0 = f32[4,32,32]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %zero = s32[] constant(0)
  %lt = pred[] compare(%p1, %zero), direction=LT
  %four = s32[] constant(4)
  %wrapped = s32[] add(%p1, %four)
  %index = s32[] select(%lt, %wrapped, %p1)
  %ds = f32[1,32,32]{2,1,0} dynamic-slice(%p0, %index, %zero, %zero), dynamic_slice_sizes={1,32,32}, metadata={op_name="ds" stack_frame_id=1}
  ROOT %bc = f32[32,32]{1,0} bitcast(%ds)
}

%fused_save (q0: f32[4,8,32], q1: f32[8,32], q2: s32[]) -> f32[4,8,32] {
  %q0 = f32[4,8,32]{2,1,0} parameter(0)
  %q1 = f32[8,32]{1,0} parameter(1)
  %q2 = s32[] parameter(2)
  %norm = f32[8,32]{1,0} multiply(%q1, %q1), metadata={op_name="ln" stack_frame_id=2}
  %row = f32[1,8,32]{2,1,0} bitcast(%norm)
  %z = s32[] constant(0)
  ROOT %dus = f32[4,8,32]{2,1,0} dynamic-update-slice(%q0, %row, %q2, %z, %z), metadata={op_name="dus" stack_frame_id=1}
}

ENTRY %main (w: f32[4,32,32], i: s32[], x: f32[8,32], saved: f32[4,8,32]) -> f32[4,8,32] {
  %w = f32[4,32,32]{2,1,0} parameter(0)
  %i = s32[] parameter(1)
  %x = f32[8,32]{1,0} parameter(2)
  %saved = f32[4,8,32]{2,1,0} parameter(3)
  %layer = f32[32,32]{1,0} fusion(%w, %i), kind=kLoop, calls=%fused_slice_layer, metadata={op_name="f" stack_frame_id=1}
  ROOT %stacked = f32[4,8,32]{2,1,0} fusion(%saved, %x, %i), kind=kLoop, calls=%fused_save, metadata={op_name="g" stack_frame_id=1}
}
"""


def test_a_scans_data_movement_is_copies_and_its_saved_results_their_source():
  module = hlo.parse_module(SCAN_MOVES)
  by_name = {i.name: i for i in module.computations[module.entry].instructions}
  assert attribution.classify(module, by_name['layer']) == 'copies'
  assert attribution.classify(module, by_name['stacked']) == 'norms and dropout'


# Memory-space assignment on TPU: a prefetch of a weight into on-chip memory (S(1)), its use
# there, and an eviction of a result back to HBM; a slice prefetched the same way.
ASYNC_COPIES = """HloModule jit_copies, is_scheduled=true

ENTRY %main (w: f32[256,128], t: f32[1024,128]) -> f32[256,128] {
  %w = f32[256,128]{1,0:T(8,128)} parameter(0)
  %t = f32[1024,128]{1,0:T(8,128)} parameter(1)
  %cs.1 = (f32[256,128]{1,0:T(8,128)S(1)}, f32[256,128]{1,0:T(8,128)}, u32[]{:S(2)}) copy-start(%w)
  %cd.1 = f32[256,128]{1,0:T(8,128)S(1)} copy-done(%cs.1)
  %neg = f32[256,128]{1,0:T(8,128)S(1)} negate(%cd.1)
  %cs.2 = (f32[256,128]{1,0:T(8,128)}, f32[256,128]{1,0:T(8,128)S(1)}, u32[]{:S(2)}) copy-start(%neg)
  %cd.2 = f32[256,128]{1,0:T(8,128)} copy-done(%cs.2)
  %ss = ((f32[1024,128]{1,0:T(8,128)}), f32[64,128]{1,0:T(8,128)S(1)}, s32[]{:S(2)}) slice-start(%t), slice={[0:64], [0:128]}
  %sd = f32[64,128]{1,0:T(8,128)S(1)} slice-done(%ss)
  ROOT %out = f32[256,128]{1,0:T(8,128)} copy(%cd.2)
}
"""


def test_async_copies_count_xla_bytes_and_the_hbm_bytes_they_move():
  a = attribution.attribute(ASYNC_COPIES)
  by = {g.name: g for g in a.groups}
  n = 256 * 128 * 4  # One weight.
  k = 64 * 128 * 4  # The slice.
  # XLA's rules: a copy-start its source and destination, a copy-done its result twice; a
  # slice-start its destination twice, a slice-done its result; a plain copy in and out.
  assert by['copies'].bytes == 2 * (2 * n + 2 * n) + 2 * n + (2 * k + k)
  # HBM: the prefetch reads n from HBM, the eviction writes n to HBM, the HBM-to-HBM copy
  # reads and writes n, the slice is read from HBM once (its destination is on chip); the
  # dones move nothing.
  assert by['copies'].hbm_bytes == n + n + 2 * n + k
  # The negate reads and writes on chip (S(1)): bytes for XLA, none in HBM.
  assert by['other'].bytes == 2 * n and by['other'].hbm_bytes == 0


# A matmul overlapped with an all-gather in one asynchronous-collective fusion (XLA:TPU's
# collective matmul), its activations read through a nested fusion that only re-labels them
# (a same-shape bitcast out of on-chip memory), its weight through a reshaping bitcast; and
# the same matmul and nested fusions in a plain fusion.
COLLECTIVE_MATMUL = """HloModule jit_collective_matmul, is_scheduled=true

%relabel (in.1: bf16[64,128]) -> bf16[64,128] {
  %in.1 = bf16[64,128]{1,0:T(8,128)(2,1)S(1)} parameter(0)
  ROOT %b.1 = bf16[64,128]{1,0:T(8,128)(2,1)} bitcast(%in.1)
}

%reshape_w (in.2: bf16[128,128]) -> bf16[128,128,1] {
  %in.2 = bf16[128,128]{1,0:T(8,128)(2,1)S(1)} parameter(0)
  ROOT %b.2 = bf16[128,128,1]{1,0,2:T(8,128)(2,1)} bitcast(%in.2)
}

%async_collective_fusion.1 (p0: bf16[16,128], p1: bf16[128,128], p2: bf16[64,128]) -> (bf16[64,128], bf16[1024,128]) {
  %p0 = bf16[16,128]{1,0:T(8,128)(2,1)} parameter(0)
  %ag = bf16[1024,128]{1,0:T(8,128)(2,1)} all-gather(%p0), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63}}, dimensions={0}
  %p1 = bf16[128,128]{1,0:T(8,128)(2,1)S(1)} parameter(1)
  %w = bf16[128,128,1]{1,0,2:T(8,128)(2,1)} fusion(%p1), kind=kLoop, calls=%reshape_w
  %p2 = bf16[64,128]{1,0:T(8,128)(2,1)S(1)} parameter(2)
  %x = bf16[64,128]{1,0:T(8,128)(2,1)} fusion(%p2), kind=kLoop, calls=%relabel
  %y = bf16[64,128]{1,0:T(8,128)(2,1)} convolution(%x, %w), window={size=1}, dim_labels=bf_io0->bf
  ROOT %t = (bf16[64,128]{1,0:T(8,128)(2,1)}, bf16[1024,128]{1,0:T(8,128)(2,1)}) tuple(%y, %ag)
}

%plain_fusion.1 (q1: bf16[128,128], q2: bf16[64,128]) -> bf16[64,128] {
  %q1 = bf16[128,128]{1,0:T(8,128)(2,1)S(1)} parameter(0)
  %w.2 = bf16[128,128,1]{1,0,2:T(8,128)(2,1)} fusion(%q1), kind=kLoop, calls=%reshape_w
  %q2 = bf16[64,128]{1,0:T(8,128)(2,1)S(1)} parameter(1)
  %x.2 = bf16[64,128]{1,0:T(8,128)(2,1)} fusion(%q2), kind=kLoop, calls=%relabel
  ROOT %y.2 = bf16[64,128]{1,0:T(8,128)(2,1)} convolution(%x.2, %w.2), window={size=1}, dim_labels=bf_io0->bf
}

ENTRY %main (shard: bf16[16,128], w: bf16[128,128], x: bf16[64,128]) -> (bf16[64,128], bf16[1024,128], bf16[64,128]) {
  %shard = bf16[16,128]{1,0:T(8,128)(2,1)} parameter(0)
  %w = bf16[128,128]{1,0:T(8,128)(2,1)S(1)} parameter(1)
  %x = bf16[64,128]{1,0:T(8,128)(2,1)S(1)} parameter(2)
  %overlapped = (bf16[64,128]{1,0:T(8,128)(2,1)}, bf16[1024,128]{1,0:T(8,128)(2,1)}) fusion(%shard, %w, %x), kind=kOutput, calls=%async_collective_fusion.1
  %plain = bf16[64,128]{1,0:T(8,128)(2,1)} fusion(%w, %x), kind=kOutput, calls=%plain_fusion.1
  %y = bf16[64,128]{1,0:T(8,128)(2,1)} get-tuple-element(%overlapped), index=0
  %g = bf16[1024,128]{1,0:T(8,128)(2,1)} get-tuple-element(%overlapped), index=1
  ROOT %out = (bf16[64,128]{1,0:T(8,128)(2,1)}, bf16[1024,128]{1,0:T(8,128)(2,1)}, bf16[64,128]{1,0:T(8,128)(2,1)}) tuple(%y, %g, %plain)
}
"""


def test_collective_matmul_reads_no_relabelled_operand():
  """XLA:TPU charges an asynchronous-collective fusion nothing for an operand read through a
  nested same-shape bitcast (measured against its cost analysis on RoBERTa-large, where the
  projections' activations are read this way: docs/COMPILE.md); a reshaping nested fusion
  still reads its operand, and a plain fusion reads both."""
  module = hlo.parse_module(COLLECTIVE_MATMUL)
  model = hlo_cost.CostModel(module)
  by_name = {i.name: i for i in module.computations[module.entry].instructions}
  shard, w, x = 16 * 128 * 2, 128 * 128 * 2, 64 * 128 * 2
  # The all-gather's output passes out of the collective: not charged to the fusion.
  overlapped, _ = model.instruction_bytes(module.entry, by_name['overlapped'])
  assert overlapped == shard + w + x  # The shard and the weight read, the matmul written.
  plain, _ = model.instruction_bytes(module.entry, by_name['plain'])
  assert plain == w + x + x  # Both operands read, the matmul written.


def test_combine_extrapolates_group_by_group():
  two = attribution.attribute(MODULE)
  combined = attribution.combine([(two, 3.0), (two, -1.0)])
  for g, g2 in zip(combined.groups, two.groups):
    assert g.flops == pytest.approx(2 * g2.flops) and g.bytes == pytest.approx(2 * g2.bytes)


def _compiled_demo_step():
  from tests import test_compile  # The tiny RoBERTa of the compile tests.
  from muppet_jax import build
  from muppet_jax.compile import backbone as backbone_lib
  from muppet_jax.compile import program
  from muppet_jax.compile import targets
  config = test_compile._config()
  config.model.dropout = config.model.attention_dropout = 0.1
  target = targets.resolve_target(config.compile)
  backbone = backbone_lib.backbone_config(config, '/nonexistent')
  step = program.abstract_step(config, backbone, build.run_tasks(config).table, target.devices,
                               1)
  return step.compile()


def test_cpu_step_matches_xla_totals_within_one_percent():
  compiled = _compiled_demo_step()
  cost = compiled.cost_analysis()
  a = attribution.attribute(compiled.as_text(), xla_flops=cost['flops'],
                            xla_bytes_accessed=cost['bytes accessed'])
  assert a.coverage['flops'] == pytest.approx(1.0, abs=0.01)
  assert a.coverage['bytes'] == pytest.approx(1.0, abs=0.01)
  by = {g.name: g for g in a.groups}
  assert [g.name for g in a.groups] == list(attribution.GROUPS)
  # The model's parts are recognised from the JAX source stacks.
  for part in ('attention core', 'attention dropout', 'attention projections', 'mlp',
               'norms and dropout', 'embeddings and output heads', 'optimizer', 'collectives'):
    assert by[part].bytes > 0, part
  assert by['mlp'].flops > by['norms and dropout'].flops
  assert len(a.top) >= 10 and all(op.group in attribution.GROUPS for op in a.top)
