"""Record the operators a real Hugging Face model runs, and normalise them into a trace.

How it records (see docs/traces.md): the model is built from its config with random
weights, on the ``meta`` device by default (shapes and dtypes only; nothing is
materialised, so a 7B model costs no memory), with ``attn_implementation="sdpa"``
(eager for models that have no SDPA path). A
prefill of P tokens and one decode step with the KV cache run under

* a ``TorchDispatchMode`` that logs every aten op with its tensor operands, and
* global module forward pre/post hooks that attribute each op to its owning module.

``torch.nn.functional.scaled_dot_product_attention`` is caught one level higher, by a
``TorchFunctionMode``, and kept as one event: below it the CPU runs a fused kernel while
the meta device decomposes it (and expands grouped K/V heads), so recording it whole makes
meta and real-weight traces identical and keeps K/V heads grouped.

The raw events are then normalised (``_Normaliser``) into the op vocabulary of
:mod:`workloads.schema`, following the data flow of the hidden state:

* view-like ops (view, transpose, split, slice, casts ...) are transparent;
* ops that do not read the hidden state (position ids, masks, rotary cos/sin tables)
  are position bookkeeping and dropped;
* every call of a norm or activation module becomes one op;
* matrix products with a parameter operand become ``linear`` (``lm_head`` for the
  output embedding); ``embedding`` lookups of parameters become ``embedding``;
* SDPA becomes ``attn_score``, ``softmax``, ``attn_context``; the ``cat`` that produced
  its K or V operand is the cache append ``kv_append``. Models without an SDPA path run
  eager attention: the two parameter-free matrix products reading the cache are the
  score and the context, and the ops between them (scale, mask, softmax) join them;
* connected elementwise ops that mix the hidden state with a position table (cos/sin)
  become one ``rotary`` op; other elementwise ops stay one op each.

torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from workloads.schema import (CONTEXT_KEYS, CTX, SCHEMA_NAME, SCHEMA_VERSION, TraceError,
                              config_hash)

#: Config keys that describe the library rather than the architecture; left out of the
#: trace's config (and its hash) so that the hash identifies the architecture.
VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash",
                        "_attn_implementation_autoset")

DTYPES = ("bfloat16", "float16", "float32")

#: Config sizes (layer, head and feature counts, the vocabulary, the context) that must be
#: positive integers where a config.json gives them (null: the architecture's default).
SIZE_KEYS = ("n_layer", "num_hidden_layers", "num_layers", "n_layers", "n_head",
             "num_attention_heads", "num_key_value_heads", "n_embd", "hidden_size",
             "intermediate_size", "n_inner", "ffn_dim", "head_dim", "vocab_size") + CONTEXT_KEYS

#: aten ops that only re-index, re-shape or re-type a tensor: transparent to the data flow.
STRUCTURAL = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "transpose", "t", "permute",
    "unsqueeze", "squeeze", "expand", "slice", "select", "split", "split_with_sizes",
    "unbind", "chunk", "narrow", "alias", "detach", "clone", "contiguous", "_to_copy",
    "to", "lift_fresh", "as_strided", "unsafe_split", "movedim", "flatten", "repeat",
    "dropout",  # identity in eval mode
    "index",  # gather by an index list (e.g. picking K and V out of a fused projection)
})
MATMUL = frozenset({"mm", "addmm", "matmul", "bmm", "linear"})
ATTN_MATMUL = frozenset({"bmm", "matmul", "baddbmm"})
SOFTMAX = frozenset({"_softmax", "_safe_softmax", "softmax"})
ACT_OPS = {"silu": "silu", "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
ELEM_KIND = {"add": "add", "mul": "mul", "sub": "sub", "div": "div", "neg": "neg",
             "cat": "cat", "rsub": "sub"}
_LAYER_RE = re.compile(r"\.(\d+)(?:\.|$)")


# --- raw recording ------------------------------------------------------------------------


@dataclass
class Tensor:
    serial: int
    shape: tuple[int, ...]
    dtype: str


@dataclass
class Event:
    aten: str                    # overload packet name: "mm", "addmm", "sdpa", ...
    stack: tuple                 # ((invocation id, module name, module), ...) outer first
    inputs: list                 # Tensor refs in argument order (lists flattened)
    outputs: list                # Tensor refs
    args: list                   # non-tensor arguments (positional), for inspection
    kwargs: dict = field(default_factory=dict)


class _Recorder:
    def __init__(self, torch, model, param_names: Mapping[int, str]):
        self.torch = torch
        self.events: list[Event] = []
        self.stack: list = []
        self.serial_of: dict[int, int] = {}
        self.keep: list = []          # strong refs so that ids are never reused
        self.tensors: dict[int, Tensor] = {}
        self.param_serial: dict[int, str] = {}
        self.in_sdpa = 0
        self.invocations = 0
        self.names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        self._params = param_names

    def ref(self, t) -> Tensor:
        key = id(t)
        s = self.serial_of.get(key)
        if s is None:
            s = len(self.keep)
            self.serial_of[key] = s
            self.keep.append(t)
            self.tensors[s] = Tensor(s, tuple(int(x) for x in t.shape),
                                     str(t.dtype).replace("torch.", ""))
            if key in self._params:
                self.param_serial[s] = self._params[key]
        return self.tensors[s]

    def split_args(self, args, kwargs):
        torch = self.torch
        tensors, plain = [], []

        def walk(x, out):
            if isinstance(x, torch.Tensor):
                tensors.append(self.ref(x))
                return ("T", len(tensors) - 1)
            if isinstance(x, (list, tuple)):
                return [walk(y, out) for y in x]
            if isinstance(x, (int, float, bool, str)) or x is None:
                return x
            return repr(x)

        plain = [walk(a, None) for a in args]
        kw = {k: walk(v, None) for k, v in (kwargs or {}).items()}
        return tensors, plain, kw

    def outputs(self, out):
        torch = self.torch
        if isinstance(out, torch.Tensor):
            return [self.ref(out)]
        if isinstance(out, (list, tuple)):
            return [self.ref(o) for o in out if isinstance(o, torch.Tensor)]
        return []

    def add(self, name, args, kwargs, out):
        tensors, plain, kw = self.split_args(args, kwargs)
        if name.endswith("_") and not name.startswith("_"):
            # in-place op (add_, mul_, copy_): the mutated tensor is a new value from here on
            for t in out if isinstance(out, (list, tuple)) else [out]:
                if isinstance(t, self.torch.Tensor):
                    self.serial_of.pop(id(t), None)
        self.events.append(Event(name, tuple(self.stack), tensors, self.outputs(out), plain, kw))


def _make_modes(torch, rec: _Recorder):
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    sdpa = torch.nn.functional.scaled_dot_product_attention

    class FunctionMode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is sdpa:
                rec.in_sdpa += 1
                try:
                    out = func(*args, **kwargs)
                finally:
                    rec.in_sdpa -= 1
                rec.add("sdpa", args, kwargs, out)
                return out
            return func(*args, **kwargs)

    class DispatchMode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not rec.in_sdpa:
                rec.add(func.overloadpacket.__name__, args, kwargs, out)
            return out

    return FunctionMode, DispatchMode


# --- building the model -------------------------------------------------------------------


def build_config(config: Mapping[str, Any], origin: str):
    """A transformers config from a plain config.json dict; errors name the field."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    if not isinstance(config, Mapping):
        raise TraceError(f"{origin}: expected a JSON object (a transformers config.json)")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise TraceError(f"{origin}: model_type: missing field (needed to pick the architecture)")
    if model_type not in CONFIG_MAPPING:
        raise TraceError(f"{origin}: model_type: unknown architecture {model_type!r} "
                         f"(not in this transformers)")
    for key in SIZE_KEYS:
        v = config.get(key)
        if v is not None and (type(v) is not int or v < 1):
            shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
            raise TraceError(f"{origin}: {key}: expected a positive integer, got {shown}")
    values = {k: v for k, v in config.items() if k not in VOLATILE_CONFIG_KEYS}
    try:
        cfg = CONFIG_MAPPING[model_type].from_dict(values)
    except Exception as exc:  # transformers raises many kinds; report them as one line
        raise TraceError(f"{origin}: architecture {model_type!r}: transformers cannot build "
                         f"this config: {_one_line(exc)}") from None
    if getattr(cfg, "is_encoder_decoder", False):
        raise TraceError(f"{origin}: architecture {model_type!r} is an encoder-decoder model; "
                         f"only decoder-only models can be traced")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise TraceError(f"{origin}: architecture {model_type!r} has no causal language "
                         f"model in transformers (encoder-only or not a text decoder)")
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(cfg, "is_decoder", False):
        raise TraceError(f"{origin}: architecture {model_type!r} is encoder-only "
                         f"(bidirectional); only decoder-only models can be traced")
    return cfg


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg if len(msg) < 200 else msg[:197] + "..."


def _build_model(cfg, dtype: str, device: str, origin: str, attention: str):
    """The causal LM on ``device``; SDPA attention, or eager where the model has no SDPA."""
    import torch
    from transformers import AutoModelForCausalLM

    model_type = cfg.model_type
    impls = ("sdpa", "eager") if attention == "auto" else (attention,)
    for impl in impls:
        try:
            with torch.device(device):
                model = AutoModelForCausalLM.from_config(
                    cfg, dtype=getattr(torch, dtype), attn_implementation=impl)
            break
        except Exception as exc:
            no_sdpa = impl == "sdpa" and "scaled_dot_product_attention" in str(exc)
            if no_sdpa and len(impls) > 1:
                continue
            raise TraceError(f"{origin}: architecture {model_type!r}: transformers cannot "
                             f"build the model: {_one_line(exc)}") from None
    model.eval()
    return model


# --- tracing ------------------------------------------------------------------------------


def trace_config(config: Mapping[str, Any], *, name: str, source: str,
                 origin: str = "<config>", prompt: int = 32, dtype: str = "bfloat16",
                 device: str = "meta", seed: int = 0, attention: str = "auto") -> dict:
    """Trace a model given as a plain transformers config dict; return the trace object.

    ``device="meta"`` records shapes only (the default; works for any size);
    ``device="cpu"`` runs real random weights (small models; used to check that the two
    agree). ``attention`` picks the transformers attention implementation: "auto" is SDPA,
    or eager for models without an SDPA path; both give the same ops. The result is a
    plain dict ready for :func:`workloads.schema.write_trace`.
    """
    import warnings

    from transformers.utils import logging as hf_logging

    if dtype not in DTYPES:
        raise TraceError(f"{origin}: dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # library code does not print; errors are raised
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _trace_config(config, name=name, source=source, origin=origin,
                                 prompt=prompt, dtype=dtype, device=device, seed=seed,
                                 attention=attention)
    finally:
        hf_logging.set_verbosity(verbosity)


def _trace_config(config, *, name, source, origin, prompt, dtype, device, seed,
                  attention) -> dict:
    import torch
    import transformers

    if type(prompt) is not int or prompt < 1:
        raise TraceError(f"{origin}: prompt: expected a positive integer, got {prompt!r}")
    cfg = build_config(config, origin)
    max_pos = _max_positions(cfg)
    if max_pos is not None and prompt + 1 > max_pos:
        raise TraceError(f"{origin}: prompt: {prompt} tokens + 1 decode step exceed the "
                         f"model's {max_pos} positions")
    if attention not in ("auto", "sdpa", "eager"):
        raise TraceError(f"{origin}: attention: expected auto, sdpa or eager, got {attention!r}")
    torch.manual_seed(seed)
    model = _build_model(cfg, dtype, device, origin, attention)

    # canonical parameter names (tied weights appear once, under their first name)
    params = dict(model.named_parameters())
    param_names = {id(p): n for n, p in params.items()}
    weights = {n: {"shape": [int(x) for x in p.shape],
                   "dtype": str(p.dtype).replace("torch.", "")} for n, p in params.items()}
    parameters = sum(int(p.numel()) for p in params.values())
    emb_in = model.get_input_embeddings()
    emb_out = model.get_output_embeddings()
    roles = {
        "token_embedding": param_names.get(id(emb_in.weight)) if emb_in is not None else None,
        "output_embedding": param_names.get(id(emb_out.weight)) if emb_out is not None else None,
    }

    vocab = int(getattr(cfg, "vocab_size", 0) or emb_in.weight.shape[0])
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, prompt + 1), generator=gen).to(device)

    phases = []
    from transformers import DynamicCache

    cache = DynamicCache(config=cfg)
    with torch.no_grad():
        for phase, tok, past in (("prefill", ids[:, :prompt], 0),
                                 ("decode", ids[:, prompt:], prompt)):
            rec = _Recorder(torch, model, param_names)
            _run(torch, model, rec, tok, cache, origin)
            ops = _Normaliser(rec, model, cfg, roles, origin, phase, past).run()
            phases.append({"phase": phase, "tokens": int(tok.shape[1]), "past": past, "ops": ops})

    _check_weights_used(phases[1]["ops"], weights, origin)
    arch = {k: v for k, v in cfg.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
    arch = _jsonable(arch)
    return {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "model": name,
        "source": source,
        "config": arch,
        "config_hash": config_hash(arch),
        "libraries": {"torch": torch.__version__.split("+")[0],
                      "transformers": transformers.__version__},
        "dtype": dtype,
        "parameters": parameters,
        "weights": weights,
        "phases": phases,
    }


def _max_positions(cfg) -> int | None:
    for key in ("n_positions", "max_position_embeddings"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _jsonable(v: Any) -> Any:
    """Config values as plain JSON (tuples -> lists, non-finite floats -> strings)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and v != v or v in (float("inf"), float("-inf")):
        return str(v)
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


def _run(torch, model, rec: _Recorder, tokens, cache, origin: str) -> list[Event]:
    from torch.nn.modules.module import (register_module_forward_hook,
                                         register_module_forward_pre_hook)

    def pre(module, args):
        rec.invocations += 1
        rec.stack.append((rec.invocations, rec.names.get(id(module), "?"), module))

    def post(module, args, out):
        if rec.stack and rec.stack[-1][2] is module:
            rec.stack.pop()
        return None  # a global forward hook must not replace the output

    FunctionMode, DispatchMode = _make_modes(torch, rec)
    kwargs = {"input_ids": tokens, "use_cache": True, "cache": cache}
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1   # as generate() does: only the last position's logits
    h1 = register_module_forward_pre_hook(pre)
    h2 = register_module_forward_hook(post)
    try:
        with FunctionMode(), DispatchMode():
            model(**kwargs)
    except TraceError:
        raise
    except Exception as exc:
        raise TraceError(f"{origin}: architecture {model.config.model_type!r}: the model "
                         f"failed to run: {_one_line(exc)}") from None
    finally:
        h1.remove()
        h2.remove()
    return rec.events


def _accepts(model, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _check_weights_used(ops: list[dict], weights: Mapping[str, Any], origin: str) -> None:
    used = {o.get(k) for o in ops for k in ("weight", "bias")} - {None}
    missing = sorted(set(weights) - used)
    if missing:
        raise TraceError(f"{origin}: weight {missing[0]!r}: not read by any recorded op of the "
                         f"decode step ({len(missing)} such weights); the normaliser does not "
                         f"understand this architecture")


# --- normalisation ------------------------------------------------------------------------

_NORM_MODULE = re.compile(r"(RMSNorm|LayerNorm)", re.I)
_ACT_MODULE = re.compile(r"(gelu|silu|swish|relu|activation)", re.I)


def _module_kind(torch, module) -> str | None:
    """'norm' or 'activation' for modules whose calls become one op, else None."""
    nn = torch.nn
    cls = type(module)
    if isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))) or \
            _NORM_MODULE.search(cls.__name__):
        return "norm"
    if isinstance(module, (nn.SiLU, nn.GELU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Mish)) or \
            cls.__module__.startswith("transformers.activations"):
        return "activation"
    if _ACT_MODULE.search(cls.__name__) and next(module.parameters(), None) is None:
        return "activation"  # a model's own activation class (e.g. BloomGelu), no weights
    return None


class _Normaliser:
    def __init__(self, rec: _Recorder, model, cfg, roles, origin: str, phase: str, past: int):
        import torch

        self.torch = torch
        self.rec = rec
        self.model = model
        self.cfg = cfg
        self.roles = roles
        self.origin = origin
        self.phase = phase
        self.past = past
        self.events = rec.events
        self.module_kind: dict[int, str | None] = {}

    # ---- helpers
    def fail(self, what: str) -> None:
        raise TraceError(f"{self.origin}: architecture {self.cfg.model_type!r}, {self.phase}: "
                         f"{what}")

    def kind_of(self, module) -> str | None:
        key = id(module)
        if key not in self.module_kind:
            self.module_kind[key] = _module_kind(self.torch, module)
        return self.module_kind[key]

    def absorbing(self, ev: Event):
        """The innermost norm/activation module invocation that owns ``ev``, if any."""
        for inv, name, module in reversed(ev.stack):
            if self.kind_of(module):
                return inv, name, module
        return None

    @staticmethod
    def owner(ev: Event) -> str:
        return ev.stack[-1][1] if ev.stack and ev.stack[-1][1] else "<root>"

    @staticmethod
    def layer_of(module_name: str) -> int | None:
        m = _LAYER_RE.search("." + module_name)
        return int(m.group(1)) if m else None

    # ---- main pass
    def run(self) -> list[dict]:
        events, rec = self.events, self.rec
        # 1. roots: a view-like op's outputs stand for its (first) input
        root: dict[int, int] = {}
        for ev in events:
            if ev.aten in STRUCTURAL and ev.inputs:
                r = root.get(ev.inputs[0].serial, ev.inputs[0].serial)
                for o in ev.outputs:
                    root[o.serial] = r
        R = lambda t: root.get(t.serial, t.serial)  # noqa: E731
        params = rec.param_serial

        # Attention: SDPA events, or (eager attention) parameter-free matrix products that
        # read a cache tensor (the output of a cat): in each module call the first is the
        # score (reads K), the second the context (reads V). The cat that produced an
        # attention operand's K or V is the cache append.
        cat_roots = {R(ev.outputs[0]) for ev in events if ev.aten == "cat" and ev.outputs}
        kv_roots: dict[int, str] = {}
        q_roots: set[int] = set()
        eager: dict[int, str] = {}
        calls: dict[int, int] = {}
        for i, ev in enumerate(events):
            if ev.aten == "sdpa":
                if len(ev.inputs) < 3:
                    self.fail("scaled_dot_product_attention called without q, k, v tensors")
                q_roots.add(R(ev.inputs[0]))
                kv_roots[R(ev.inputs[1])] = "k"
                kv_roots[R(ev.inputs[2])] = "v"
            elif ev.aten in ATTN_MATMUL and not any(R(t) in params for t in ev.inputs):
                a, b = ev.inputs[-2:]
                cache = [t for t in (a, b) if R(t) in cat_roots]
                if not cache:
                    continue
                inv = ev.stack[-1][0] if ev.stack else 0
                n = calls.get(inv, 0)
                calls[inv] = n + 1
                role = "score" if n % 2 == 0 else "context"
                eager[i] = role
                kv_roots[R(cache[-1])] = "k" if role == "score" else "v"
                if role == "score":
                    q_roots.update(R(t) for t in (a, b) if R(t) not in cat_roots)
        if not kv_roots:
            self.fail("no attention over a KV cache was recorded (neither "
                      "scaled_dot_product_attention nor matrix products reading the cache)")
        self.kv_roots, self.q_roots, self.R = kv_roots, q_roots, R
        cat_inputs = {"k": set(), "v": set()}
        for ev in events:
            if ev.aten == "cat" and ev.outputs and R(ev.outputs[0]) in kv_roots:
                cat_inputs[kv_roots[R(ev.outputs[0])]].update(R(t) for t in ev.inputs)
        self.cat_inputs = cat_inputs

        # 2. units: which events form one normalised op
        tainted: set[int] = set()          # roots on the hidden-state data flow

        def is_aux(r: int) -> bool:
            """A float value off the data flow that is no weight (cos/sin tables, masks)."""
            return r not in tainted and r not in params and \
                rec.tensors[r].dtype.startswith(("float", "bfloat"))

        unit_of_root: dict[int, int] = {}  # root -> producing unit
        units: list[dict] = []             # in order of first event
        module_unit: dict[int, int] = {}   # absorbing invocation -> unit
        open_attn: dict[int, int] = {}     # module invocation -> open eager attention unit
        parent: dict[int, int] = {}        # union-find over elementwise units

        def find(u):
            while parent.get(u, u) != u:
                u = parent[u]
            return u

        for ei, ev in enumerate(events):
            if ev.aten in STRUCTURAL:
                continue
            ins = [R(t) for t in ev.inputs]
            hot = [r for r in ins if r in tainted]
            inv = ev.stack[-1][0] if ev.stack else 0
            absorb = self.absorbing(ev)
            attn = open_attn.get(inv)
            if ei in eager or (attn is not None and
                               any(unit_of_root.get(r) == attn for r in hot)):
                # eager attention: score product, its scaling / masking / softmax, context
                if eager.get(ei) == "score":
                    attn = self._new_unit(units, "eager_attention", ev, hot)
                    open_attn[inv] = attn
                else:
                    if attn is None:
                        self.fail(f"attention context product in {self.owner(ev)} without a "
                                  f"score product before it")
                    units[attn]["events"].append(ev)
                    units[attn]["ins"] += [r for r in hot if unit_of_root.get(r) != attn]
                    if eager.get(ei) == "context":
                        units[attn]["context"] = ev
                        del open_attn[inv]
                for o in ev.outputs:
                    tainted.add(o.serial)
                    unit_of_root[o.serial] = attn
                continue
            if absorb is not None:
                ainv, name, module = absorb
                u = module_unit.get(ainv)
                if u is None:
                    u = len(units)
                    module_unit[ainv] = u
                    units.append({"type": self.kind_of(module), "events": [], "name": name,
                                  "module": module, "ins": []})
                units[u]["events"].append(ev)
                units[u]["ins"] += [r for r in hot if unit_of_root.get(r) != u]
                if hot or units[u].get("hot"):
                    units[u]["hot"] = True
                    for o in ev.outputs:
                        tainted.add(o.serial)
                        unit_of_root[o.serial] = u
                continue
            weight_in = [t for t in ev.inputs if R(t) in params]
            if ev.aten == "embedding" and weight_in:
                u = self._new_unit(units, "embedding", ev, ins)
            elif ev.aten in MATMUL and weight_in and hot:
                u = self._new_unit(units, "linear", ev, hot)
            elif ev.aten == "sdpa":
                u = self._new_unit(units, "sdpa", ev, hot)
            elif ev.aten == "cat" and ev.outputs and R(ev.outputs[0]) in kv_roots:
                u = self._new_unit(units, "kv_append", ev, hot)
                units[u]["target"] = kv_roots[R(ev.outputs[0])]
            elif not hot:
                continue  # position bookkeeping: ids, masks, rotary tables
            else:
                u = self._new_unit(units, "elementwise", ev, hot)
                parent[u] = u
                units[u]["aux"] = any(is_aux(r) for r in ins)
                units[u]["inv"] = inv
                for r in hot:
                    pu = unit_of_root.get(r)
                    if pu is not None and pu in parent and units[pu]["inv"] == inv:
                        a, b = find(pu), find(u)
                        if a != b:
                            parent[a] = b
            for o in ev.outputs:
                tainted.add(o.serial)
                unit_of_root[o.serial] = u
        for u in open_attn.values():
            self.fail(f"attention score product in {self.owner(units[u]['events'][0])} "
                      f"without a context product after it")

        self.unit_of_root, self.is_aux, self.units = unit_of_root, is_aux, units
        self.tainted_roots = tainted

        # 3. elementwise clusters that mix q or k with a position table (cos/sin) and feed
        #    the attention query or the cached keys become one rotary op
        clusters: dict[int, list[int]] = {}
        for u in parent:
            clusters.setdefault(find(u), []).append(u)
        merged_into: dict[int, int] = {}
        for members in clusters.values():
            if len(members) < 2 or not any(units[m]["aux"] for m in members):
                continue
            target = self._rotary_target(members)
            if target is None:
                continue
            head = min(members)
            units[head].update(type="rotary", members=sorted(members), target=target)
            for m in members:
                merged_into[m] = head
        for u in range(len(units)):
            merged_into.setdefault(u, u)

        # 4. emit ops in order; map units to the index of their (last) op
        out: list[dict] = []
        last_index: dict[int, int] = {}
        for u, unit in enumerate(units):
            if merged_into[u] != u:
                continue
            if unit["type"] in ("norm", "activation") and not unit.get("hot"):
                continue  # a norm/activation on bookkeeping values only
            members = unit.get("members", [u])

            def dep(root, members=members):
                pu = unit_of_root.get(root)
                if pu is None:
                    return None
                pu = merged_into[pu]
                return None if pu in members else last_index.get(pu)

            deps = sorted({d for m in members for r in units[m]["ins"]
                           if (d := dep(r)) is not None})
            ops = self._emit(unit, members, deps, dep)
            base = len(out)
            out.extend(ops)
            last_index[u] = len(out) - 1
            # ops of one unit chain on each other (score -> softmax -> context)
            for k in range(1, len(ops)):
                out[base + k]["deps"] = sorted(set(out[base + k]["deps"]) | {base + k - 1})
        return out

    def _rotary_target(self, members) -> str | None:
        """'q' or 'k' when the cluster's result feeds only the query or only the cache."""
        evs = [self.units[m]["events"][0] for m in members]
        produced = {o.serial for ev in evs for o in ev.outputs}
        consumed = {self.R(t) for ev in evs for t in ev.inputs}
        results = [s for s in produced if s not in consumed]
        targets = {"q" if s in self.q_roots else "k" if s in self.cat_inputs["k"] else None
                   for s in results}
        return targets.pop() if len(targets) == 1 and None not in targets else None

    def _new_unit(self, units, kind, ev, ins) -> int:
        units.append({"type": kind, "events": [ev], "ins": list(ins), "hot": True})
        return len(units) - 1

    # ---- per-unit op construction
    def _base(self, op: str, ev: Event, module_name: str | None, deps, dtype: str) -> dict:
        name = module_name if module_name is not None else self.owner(ev)
        name = name or "<root>"
        return {"op": op, "module": name, "layer": self.layer_of(name), "deps": list(deps),
                "dtype": dtype}

    def _emit(self, unit, members, deps, dep) -> list[dict]:
        R = self.R
        kind = unit["type"]
        ev = unit["events"][0]
        params = self.rec.param_serial
        if kind == "embedding":
            w, idx = ev.inputs[0], ev.inputs[1]
            wname = params[R(w)]
            role = "token" if wname == self.roles["token_embedding"] else "position"
            op = self._base("embedding", ev, None, deps, ev.outputs[0].dtype)
            op.update(weight=wname, rows=w.shape[0], dim=w.shape[1], tokens=_numel(idx.shape),
                      role=role)
            return [op]
        if kind == "linear":
            return [self._linear(ev, R, deps)]
        if kind == "kv_append":
            new = [t for t in ev.inputs if _numel(t.shape) > 0][-1]
            if len(new.shape) != 4:
                self.fail(f"cache append in {self.owner(ev)} has a {len(new.shape)}-d operand; "
                          f"expected (batch, kv_heads, tokens, head_dim)")
            op = self._base("kv_append", ev, None, deps, new.dtype)
            op.update(target=unit["target"], kv_heads=new.shape[1], head_dim=new.shape[3],
                      tokens=new.shape[2])
            return [op]
        if kind == "sdpa":
            q, k, v = (dep(R(t)) for t in ev.inputs[:3])
            return self._attention(ev, sorted({d for d in (q, k) if d is not None}),
                                   [] if v is None else [v])
        if kind == "eager_attention":
            return self._eager_attention(unit, dep)
        if kind == "norm":
            return [self._norm(unit, deps)]
        if kind == "activation":
            return [self._activation(unit, deps)]
        if kind == "rotary":
            return [self._rotary(unit, members, deps)]
        if kind == "elementwise":
            return [self._elementwise(ev, R, deps)]
        raise AssertionError(kind)

    def _linear(self, ev: Event, R, deps) -> dict:
        params = self.rec.param_serial
        a = ev.aten
        if a == "addmm":
            bias, x, w = ev.inputs[0], ev.inputs[1], ev.inputs[2]
        elif a == "linear":
            x, w = ev.inputs[0], ev.inputs[1]
            bias = ev.inputs[2] if len(ev.inputs) > 2 else None
        else:
            x, w = ev.inputs[0], ev.inputs[1]
            bias = None
        if R(w) not in params:
            x, w = w, x
        if R(w) not in params:
            self.fail(f"matrix product in {self.owner(ev)} without a weight operand")
        wname = params[R(w)]
        wshape = self.rec.tensors[R(w)].shape
        in_f = x.shape[-1]
        out_f = ev.outputs[0].shape[-1]
        if len(wshape) != 2 or sorted(wshape) != sorted((in_f, out_f)):
            self.fail(f"weight {wname} of shape {list(wshape)} does not match a "
                      f"{in_f} -> {out_f} product")
        layout = "out_in" if tuple(wshape) == (out_f, in_f) else "in_out"
        if in_f == out_f:
            # square: the stored layout follows from the module type
            layout = "in_out" if type(self._module(ev)).__name__ == "Conv1D" else "out_in"
        bname = params.get(R(bias)) if bias is not None else None
        kind = "lm_head" if wname == self.roles["output_embedding"] else "linear"
        module = self.owner(ev)
        op = self._base(kind, ev, module, deps, ev.outputs[0].dtype)
        op.update(weight=wname, bias=bname, in_features=in_f, out_features=out_f,
                  tokens=_numel(ev.outputs[0].shape[:-1]), weight_layout=layout)
        return op

    def _module(self, ev: Event):
        return ev.stack[-1][2] if ev.stack else self.model

    def _attention(self, ev: Event, deps, v_deps) -> list[dict]:
        q, k = ev.inputs[0], ev.inputs[1]
        if len(q.shape) != 4 or len(k.shape) != 4:
            self.fail(f"attention in {self.owner(ev)} has q {list(q.shape)}, k {list(k.shape)}; "
                      f"expected (batch, heads, tokens, head_dim)")
        kw = ev.kwargs
        has_mask = len(ev.args) > 3 and ev.args[3] is not None or kw.get("attn_mask") is not None
        is_causal = bool(kw.get("is_causal", ev.args[5] if len(ev.args) > 5 else False))
        scale = kw.get("scale")
        return self._attention_ops(ev, q_heads=q.shape[1], kv_heads=k.shape[1],
                                   head_dim=q.shape[3], q_len=q.shape[2], keys=k.shape[2],
                                   causal=is_causal or (has_mask and q.shape[2] > 1),
                                   scale=scale, deps=deps, v_deps=v_deps, dtype=q.dtype)

    def _eager_attention(self, unit, dep) -> list[dict]:
        """Attention written out as matrix products (models without an SDPA path)."""
        R = self.R
        score, context = unit["events"][0], unit.get("context")
        if not any(e.aten in SOFTMAX for e in unit["events"]):
            self.fail(f"attention in {self.owner(score)} has no softmax between its score "
                      f"and context products")
        a, b = score.inputs[-2:]
        k, q = (a, b) if self.kv_roots.get(R(a)) == "k" else (b, a)
        v = next(t for t in context.inputs[-2:] if self.kv_roots.get(R(t)) == "v")
        cache = self.rec.tensors[R(k)]
        if len(cache.shape) != 4:
            self.fail(f"cached keys of {self.owner(score)} have shape {list(cache.shape)}; "
                      f"expected (batch, kv_heads, tokens, head_dim)")
        q_heads = _numel(q.shape[:-2])           # batch 1: (heads, q_len, head_dim)
        scale = self._eager_scale(unit)
        deps = sorted({d for d in (dep(R(q)), dep(R(k))) if d is not None})
        v_deps = [d for d in (dep(R(v)),) if d is not None]
        return self._attention_ops(score, q_heads=q_heads, kv_heads=cache.shape[1],
                                   head_dim=q.shape[-1], q_len=q.shape[-2],
                                   keys=score.outputs[0].shape[-1], causal=q.shape[-2] > 1,
                                   scale=scale, deps=deps, v_deps=v_deps, dtype=q.dtype)

    def _eager_scale(self, unit) -> float | None:
        """The factor applied to q.K^T before the softmax, from the recorded scalars."""
        score = unit["events"][0]
        scale = 1.0
        if score.aten == "baddbmm":                     # beta * bias + alpha * (q @ k)
            alpha = score.kwargs.get("alpha", score.args[4] if len(score.args) > 4 else 1)
            scale = float(alpha) if isinstance(alpha, (int, float)) else 1.0
        for ev in unit["events"][1:]:
            if ev.aten in SOFTMAX:
                break
            op = ev.aten.rstrip("_")
            if op in ("mul", "div") and len(ev.inputs) == 1:
                k = ev.args[1] if len(ev.args) > 1 else None
                if isinstance(k, (int, float)) and not isinstance(k, bool) and k:
                    scale = scale * k if op == "mul" else scale / k
            elif op in ("mul", "div") and len(ev.inputs) == 2 and \
                    all(len(t.shape) == 0 for t in ev.inputs[1:]):
                # scaled by a 0-d tensor whose value the trace cannot see: the module's own
                scaling = getattr(self._module(score), "scaling", None)
                return float(scaling) if isinstance(scaling, (int, float)) else None
        return scale

    def _attention_ops(self, ev: Event, *, q_heads, kv_heads, head_dim, q_len, keys, causal,
                       scale, deps, v_deps, dtype) -> list[dict]:
        ctx = self.past + q_len
        window = self._window(ev)
        expect = ctx if window is None else min(ctx, window)
        if keys != expect and not (window is not None and keys == ctx):
            self.fail(f"attention in {self.owner(ev)} reads {keys} keys; expected the context "
                      f"length {expect} (past {self.past} + {q_len} new)")
        if q_heads % kv_heads:
            self.fail(f"attention in {self.owner(ev)}: {q_heads} query heads are not a "
                      f"multiple of {kv_heads} key/value heads")
        scale = float(scale) if isinstance(scale, (int, float)) and \
            not isinstance(scale, bool) else None
        causal = bool(causal)
        module = self.owner(ev)
        a = self._base("attn_score", ev, module, deps, dtype)
        a.update(q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim, q_len=q_len,
                 kv_len=CTX, window=window, causal=causal, scale=scale)
        s = self._base("softmax", ev, module, [], dtype)
        s.update(heads=q_heads, q_len=q_len, kv_len=CTX, window=window, causal=causal)
        c = self._base("attn_context", ev, module, v_deps, dtype)
        c.update(q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim, q_len=q_len,
                 kv_len=CTX, window=window, causal=causal)
        return [a, s, c]

    def _window(self, ev: Event) -> int | None:
        module = self._module(ev)
        if hasattr(module, "sliding_window"):
            w = module.sliding_window
        else:
            cfg = self.cfg
            w = getattr(cfg, "sliding_window", None)
            layer_types = getattr(cfg, "layer_types", None)
            layer = self.layer_of(self.owner(ev))
            if getattr(cfg, "use_sliding_window", True) is False:
                w = None
            elif layer_types and layer is not None and layer < len(layer_types) and \
                    layer_types[layer] != "sliding_attention":
                w = None
        return int(w) if isinstance(w, int) and w > 0 else None

    def _norm(self, unit, deps) -> dict:
        module = unit["module"]
        evs = unit["events"]
        params = self.rec.param_serial
        x = next(t for ev in evs for t in ev.inputs if t.serial not in params)
        cls = type(module).__name__.lower()
        atens = {e.aten for e in evs}
        if isinstance(module, self.torch.nn.LayerNorm) or atens & {"native_layer_norm",
                                                                   "layer_norm"}:
            kind = "layernorm"
        elif "rms" in cls or "_fused_rms_norm" in atens or "rms_norm" in atens:
            kind = "rmsnorm"
        else:
            kind = "layernorm" if atens & {"sub", "var", "var_mean"} else "rmsnorm"
        own = dict(module.named_parameters(recurse=False))
        names = {n: self._param_name(p) for n, p in own.items()}
        eps = None
        for attr in ("eps", "variance_epsilon", "epsilon"):
            v = getattr(module, attr, None)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                eps = float(v)
                break
        out = evs[-1].outputs[0]
        op = self._base(kind, evs[0], unit["name"], deps, out.dtype)
        op.update(weight=names.get("weight"), bias=names.get("bias"), features=x.shape[-1],
                  tokens=_numel(x.shape[:-1]), eps=eps)
        return op

    def _param_name(self, p) -> str | None:
        s = self.rec.serial_of.get(id(p))
        if s is not None and s in self.rec.param_serial:
            return self.rec.param_serial[s]
        for n, q in self.model.named_parameters():
            if q is p:
                return n
        return None

    def _activation(self, unit, deps) -> dict:
        evs = unit["events"]
        atens = [e.aten for e in evs]
        cls = type(unit["module"]).__name__
        kind = None
        for e in evs:
            if e.aten == "gelu":
                approx = e.kwargs.get("approximate", e.args[1] if len(e.args) > 1 else "none")
                kind = "gelu_tanh" if approx == "tanh" else "gelu"
        if kind is None:
            if "silu" in atens:
                kind = "silu"
            elif "relu" in atens:
                kind = "relu2" if "pow" in atens else "relu"
            elif "tanh" in atens and "pow" in atens:
                kind = "gelu_tanh"
            elif "erf" in atens:
                kind = "gelu"
            elif "sigmoid" in atens:
                kind = "gelu_quick" if "gelu" in cls.lower() else "silu"
            elif "tanh" in atens:
                kind = "tanh"
        if kind is None:
            self.fail(f"activation module {unit['name']} ({cls}) runs {atens}; not recognised")
        x = evs[0].inputs[0]
        op = self._base("activation", evs[0], unit["name"], deps, evs[-1].outputs[0].dtype)
        op.update(kind=kind, features=x.shape[-1], tokens=_numel(x.shape[:-1]))
        return op

    def _rotary(self, unit, members, deps) -> dict:
        R = self.R
        evs = [self.units[m]["events"][0] for m in members]
        produced = {o.serial for ev in evs for o in ev.outputs}
        x = [t for ev in evs for t in ev.inputs
             if R(t) in self.tainted_roots and R(t) not in produced and len(t.shape) == 4]
        if not x:
            self.fail(f"rotary-like ops in {self.owner(evs[0])} have no (batch, heads, tokens, "
                      f"head_dim) operand")
        x = x[0]
        tables = [t for ev in evs for t in ev.inputs if self.is_aux(R(t))]
        rot_dim = max((t.shape[-1] for t in tables), default=x.shape[-1])
        op = self._base("rotary", evs[0], None, deps, evs[-1].outputs[0].dtype)
        op.update(target=unit["target"], heads=x.shape[1], head_dim=x.shape[3],
                  rotary_dim=rot_dim, tokens=x.shape[2])
        return op

    def _elementwise(self, ev: Event, R, deps) -> dict:
        kind = ELEM_KIND.get(ev.aten.rstrip("_"))
        out = ev.outputs[0]
        if kind is None and ev.aten in ACT_OPS:
            op = self._base("activation", ev, None, deps, out.dtype)
            op.update(kind=ACT_OPS[ev.aten], features=out.shape[-1] if out.shape else 1,
                      tokens=_numel(out.shape[:-1]))
            return op
        if kind is None and ev.aten == "gelu":
            approx = ev.kwargs.get("approximate", ev.args[1] if len(ev.args) > 1 else "none")
            op = self._base("activation", ev, None, deps, out.dtype)
            op.update(kind="gelu_tanh" if approx == "tanh" else "gelu",
                      features=out.shape[-1], tokens=_numel(out.shape[:-1]))
            return op
        if kind is None:
            op = self._base("other", ev, None, deps, out.dtype if ev.outputs else "none")
            op.update(aten=ev.aten, inputs=[list(t.shape) for t in ev.inputs],
                      outputs=[list(t.shape) for t in ev.outputs])
            return op
        tensors = len(ev.inputs)
        scalar = tensors == 1 and kind not in ("neg",)
        role = "other"
        if kind in ("add",) and tensors == 2 and ev.inputs[0].shape == ev.inputs[1].shape:
            producers = [self._producer_type(R(t)) for t in ev.inputs]
            role = "embedding_sum" if producers == ["embedding", "embedding"] else "residual"
        elif kind == "mul" and tensors == 2 and ev.inputs[0].shape == ev.inputs[1].shape:
            producers = [self._producer_type(R(t)) for t in ev.inputs]
            role = "gate" if "activation" in producers else "other"
        elif kind in ("mul", "div") and tensors == 1:
            role = "scale"
        op = self._base("elementwise", ev, None, deps, out.dtype)
        op.update(kind=kind, role=role, features=out.shape[-1] if out.shape else 1,
                  tokens=_numel(out.shape[:-1]), operands=tensors, scalar=scalar)
        return op

    def _producer_type(self, root: int) -> str | None:
        u = self.unit_of_root.get(root)
        return None if u is None else self.units[u]["type"]


def _numel(shape) -> int:
    return math.prod(int(x) for x in shape)
