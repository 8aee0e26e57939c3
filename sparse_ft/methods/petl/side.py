"""Side networks over a frozen backbone (READ, LST): what they share.

The backbone (the Hugging Face model as loaded) runs once per batch without autograd, in the
trainer's mode like every other method's model: its dropout is on while training, as with LoRA or
adapters here and in the LST authors' code (backbone and side network are one module under
`model.train()`). Until issue 20 it was held in eval mode, a choice of the first implementation
("its states are features, as in inference") with no technical need: under no_grad dropout keeps
nothing for a backward pass. Its per-layer hidden states (and, for READ on T5, the decoder's
cross-attention weights) are captured from that one pass. A trainable side network turns them
into what the model's own head reads: READ a correction added to the last hidden state, LST its
own up-projected state alone. The head is the frozen LM head for T5, the new (trainable)
classification head for encoders (BERT, RoBERTa, MiniLM) and decoder-only LMs (OPT). No gradient
ever reaches the backbone, so no activation of it is kept for a backward pass.

`SideModel` is the module that trains: it takes the same inputs as the wrapped model and returns
an output with `.logits` (and `.loss` for T5 given `labels`), and T5's gets a greedy `generate`,
so the bundle's own loss / predict / per-example loss / logits functions run on it unchanged.
Its state dict is `backbone.*` + `side.*`, which is what checkpoints and resumes hold;
`SideMethod.export` returns the backbone's state dict (the base model's layout, trained head
included) and `finalize` writes the side network's tensors apart.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import ConfigError
from ..base import Method, MethodContext
from ...models.heads import head_names

log = logging.getLogger(__name__)


# --- classification heads: how each architecture reads its last hidden state --------------------


class ClassifierHead:
    """The body of a `...ForSequenceClassification` model, the token its head reads and the head
    itself, applied to a (corrected) hidden vector of that token."""

    model_types: tuple = ()

    def __init__(self, module: nn.Module):
        self.module = module
        self.body = getattr(module, module.base_model_prefix)

    def positions(self, batch: dict) -> torch.Tensor:
        """Index of the token the head reads, per example."""
        return torch.zeros(batch["input_ids"].shape[0], dtype=torch.long, device=batch["input_ids"].device)

    def logits(self, vec: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def final_input(self):
        """A context that captures the last layer's state when the body projects it to another
        width before the head (OPT-350m's project_out); None when the last hidden state is it."""
        return None


class BertHead(ClassifierHead):
    """BERT / MiniLM: pooler (dense + tanh on [CLS]; frozen when pretrained, trained with the head when
    the checkpoint holds none, see `new_params`) → dropout → classifier."""

    model_types = ("bert",)

    def logits(self, vec):
        pooler = getattr(self.body, "pooler", None)
        pooled = pooler(vec.unsqueeze(1)) if pooler is not None else vec
        return self.module.classifier(self.module.dropout(pooled))


class RobertaHead(ClassifierHead):
    """RoBERTa: the classification head reads <s> itself."""

    model_types = ("roberta", "xlm-roberta")

    def logits(self, vec):
        return self.module.classifier(vec.unsqueeze(1))


class OptHead(ClassifierHead):
    """OPT: `score` on the last non-pad token (Hugging Face's rule, either padding side)."""

    model_types = ("opt",)

    def positions(self, batch):
        ids = batch["input_ids"]
        pad = self.module.config.pad_token_id
        if pad is None:
            return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        idx = torch.arange(ids.shape[-1], device=ids.device, dtype=torch.int32)
        return (idx * (ids != pad).to(torch.int32)).argmax(-1).long()

    def logits(self, vec):
        return self.module.score(vec)

    def final_input(self):
        proj = getattr(self.body.decoder, "project_out", None)
        return proj


HEADS = {t: cls for cls in (BertHead, RobertaHead, OptHead) for t in cls.model_types}


def classifier_head(module: nn.Module, method: str) -> ClassifierHead:
    model_type = getattr(module.config, "model_type", None)
    if model_type not in HEADS:
        raise ConfigError("model", f"method={method} reads the classification head of {', '.join(sorted(HEADS))} models "
                                   f"(and T5's LM head); {type(module).__name__} (model_type {model_type!r}) is not supported")
    return HEADS[model_type](module)


def stack_blocks(stack: nn.Module) -> nn.ModuleList:
    """The transformer blocks of one stack (T5 `block`, BERT `layer`, OPT `layers`)."""
    for name in ("block", "layer", "layers"):
        blocks = getattr(stack, name, None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise ConfigError("model", f"cannot find the transformer blocks of {type(stack).__name__}")


@contextlib.contextmanager
def block_outputs(stack: nn.Module | None):
    """Collects each block's own output hidden state, in order (None: collects nothing). The
    stacks' `hidden_states` end with the final-normed state (T5, OPT), not the last block's."""
    out: list = []
    if stack is None:
        yield out
        return
    hooks = [b.register_forward_hook(lambda m, a, o: out.append(o[0] if isinstance(o, tuple) else o)) for b in stack_blocks(stack)]
    try:
        yield out
    finally:
        for h in hooks:
            h.remove()


# --- the module that trains ---------------------------------------------------------------------


class SideModel(nn.Module):
    """Frozen backbone + side network. `side` implements

    - classifiers: `classify(layers, mask, positions) -> correction` with `layers` the hidden
      states ϕ_0 (embeddings), ϕ_1..ϕ_N (each (B, T, d)) and the correction (B, d_out) at `positions`;
    - T5: `encode(layers, mask) -> memory` and `decode(layers, cross, memory, mask) -> correction`
      (B, n, d) of the decoder's final hidden state (`layers` again ϕ_0..ϕ_N of each stack); `cross` is the decoder's per-layer
      cross-attention weights (B, heads, n, m) when `side.needs_cross_attentions`, else None.
      `side.per_token` says whether a decoder position's correction depends on that position's
      states alone (READ), which lets generation feed only the newest token.

    `side.raw_layers`: ϕ_1..ϕ_N are the blocks' own outputs (hooked), not the stack's
    `hidden_states` (whose last entry is final-normed for T5 and OPT). `side.side_only`: the head
    reads the side network's output alone (LST) instead of last hidden state + correction (READ).
    """

    def __init__(self, backbone: nn.Module, side: nn.Module, arch: str, method: str):
        super().__init__()
        self.backbone = backbone
        self.side = side
        self.seq2seq = arch == "seq2seq"
        self.head = None if self.seq2seq else classifier_head(backbone, method)
        self.backbone_calls = 0  # passes through the backbone (tests, report)
        self.raw_layers = bool(getattr(side, "raw_layers", False))
        self.side_only = bool(getattr(side, "side_only", False))

    def _combine(self, last: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """What the head reads: the side network's output alone, or last + correction."""
        return out.to(last.dtype) if self.side_only else last + out.to(last.dtype)

    def _layers(self, hidden_states, raw: list) -> list:
        layers = list(hidden_states)
        return [layers[0], *raw] if self.raw_layers else layers

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, decoder_input_ids=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.seq2seq:
            return self._seq2seq(input_ids, attention_mask, labels, decoder_input_ids)
        return self._classify(input_ids, attention_mask, token_type_ids)

    # --- classifiers ------------------------------------------------------------------------
    def _classify(self, input_ids, attention_mask, token_type_ids):
        from transformers.modeling_outputs import SequenceClassifierOutput

        head = self.head
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        captured = {}
        proj = head.final_input()
        hook = proj.register_forward_pre_hook(lambda m, a: captured.__setitem__("final", a[0])) if proj is not None else None
        stack = None
        if self.raw_layers:
            stack = head.body.encoder if hasattr(head.body, "encoder") else head.body.decoder
        try:
            with torch.no_grad(), block_outputs(stack) as raw:
                out = head.body(**inputs, output_hidden_states=True, return_dict=True)
        finally:
            if hook is not None:
                hook.remove()
        self.backbone_calls += 1
        layers = self._layers(out.hidden_states, raw)
        if "final" in captured and not self.raw_layers:  # the last layer's state before the projection to the head's width
            layers[-1] = captured["final"]
        pos = head.positions({"input_ids": input_ids})
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        last = out.last_hidden_state[rows, pos]
        correction = self.side.classify([h.detach() for h in layers], attention_mask, pos)
        logits = head.logits(self._combine(last, correction))
        return SequenceClassifierOutput(logits=logits)

    # --- T5 ---------------------------------------------------------------------------------
    def _t5_scale(self, h):
        cfg = self.backbone.config
        if getattr(cfg, "scale_decoder_outputs", getattr(cfg, "tie_word_embeddings", False)):
            return h * (cfg.d_model ** -0.5)
        return h

    def _encode(self, input_ids, attention_mask):
        with torch.no_grad(), block_outputs(self.backbone.encoder if self.raw_layers else None) as raw:
            enc = self.backbone.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=True)
        memory = self.side.encode([h.detach() for h in self._layers(enc.hidden_states, raw)], attention_mask)
        return enc.last_hidden_state, memory

    def _decoder_pass(self, decoder_input_ids, enc_last, attention_mask, past=None, use_cache=False):
        want_cross = bool(getattr(self.side, "needs_cross_attentions", False))
        with torch.no_grad(), block_outputs(self.backbone.decoder if self.raw_layers else None) as raw:
            dec = self.backbone.decoder(
                input_ids=decoder_input_ids, encoder_hidden_states=enc_last, encoder_attention_mask=attention_mask,
                past_key_values=past, use_cache=use_cache, output_hidden_states=True, output_attentions=want_cross, return_dict=True,
            )
        cross = list(dec.cross_attentions) if want_cross else None
        if want_cross and len(cross) != len(dec.hidden_states) - 1:
            raise RuntimeError("the T5 decoder returned no cross-attention weights (attention implementation "
                               f"{self.backbone.config._attn_implementation!r}; READ needs 'eager')")
        return dec, cross, [h.detach() for h in self._layers(dec.hidden_states, raw)]

    def _seq2seq(self, input_ids, attention_mask, labels, decoder_input_ids):
        from transformers.modeling_outputs import Seq2SeqLMOutput

        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("T5 under a side network needs labels or decoder_input_ids")
            decoder_input_ids = self.backbone._shift_right(labels)
        enc_last, memory = self._encode(input_ids, attention_mask)
        dec, cross, layers = self._decoder_pass(decoder_input_ids, enc_last, attention_mask)
        self.backbone_calls += 1
        correction = self.side.decode(layers, cross, memory, attention_mask)
        final = self._combine(dec.last_hidden_state, correction)
        logits = self.backbone.lm_head(self._t5_scale(final))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        return Seq2SeqLMOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, **_ignored):
        """Greedy decoding with the side network's correction at every step (what the bundle's
        predict calls; beams and sampling are not supported). The backbone decoder keeps its
        key/value cache, so each step runs it on the newest token only."""
        if not self.seq2seq:
            raise NotImplementedError("generate is for text-to-text models")
        cfg = self.backbone.config
        gen = getattr(self.backbone, "generation_config", None)
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.pad_token_id
        eos = (getattr(gen, "eos_token_id", None) if gen is not None else None) or cfg.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) if eos is not None else set()
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        enc_last, memory = self._encode(input_ids, attention_mask)
        batch = input_ids.shape[0]
        seq = torch.full((batch, 1), start, dtype=torch.long, device=input_ids.device)
        done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        per_token = bool(getattr(self.side, "per_token", False))
        past, layers_so_far, cross_so_far = None, None, None
        for _ in range(max_new_tokens):
            dec, cross, layers = self._decoder_pass(seq[:, -1:], enc_last, attention_mask, past=past, use_cache=True)
            past = dec.past_key_values
            if not per_token:  # the side network needs every position so far
                layers = layers if layers_so_far is None else [torch.cat([a, b], 1) for a, b in zip(layers_so_far, layers)]
                if cross is not None:
                    cross = cross if cross_so_far is None else [torch.cat([a, b], 2) for a, b in zip(cross_so_far, cross)]
                layers_so_far, cross_so_far = layers, cross
            correction = self.side.decode(layers, cross, memory, attention_mask)[:, -1:]
            final = self._combine(dec.last_hidden_state, correction)
            nxt = self.backbone.lm_head(self._t5_scale(final))[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            seq = torch.cat([seq, nxt[:, None]], 1)
            if eos_ids:
                done |= torch.isin(nxt, torch.tensor(sorted(eos_ids), device=nxt.device))
            if bool(done.all()):
                break
        self.backbone_calls += 1
        return seq


# --- the method side ---------------------------------------------------------------------------


def new_params(bundle, method: str = "") -> list[str]:
    """What trains in full beside a method's own parameters: the new task head of `bundle.module`
    (`head_names`) and the body's parameters the loader found with no trained values
    (`bundle.newly_initialized`, a model fact from models/: missing from the checkpoint, or a
    sentence-transformers checkpoint's never trained BERT pooler) — frozen, those would stay at
    their random initialisation."""
    module = bundle.module
    heads = head_names(module)
    names = set(dict(module.named_parameters()))
    extra = sorted(n for n in bundle.newly_initialized if n in names and n not in heads)
    if extra:
        log.info("method=%s: also training %s (no trained values in the checkpoint) with the task head", method, ", ".join(extra))
    return sorted(set(heads) | set(extra))


def freeze_backbone(bundle, train_head: bool = True, method: str = "") -> list[str]:
    """Freeze every parameter of `bundle.module` but the new task head's (and the body's newly
    initialised ones, see `new_params`); returns their names."""
    heads = set(new_params(bundle, method)) if train_head else set()
    for name, p in bundle.module.named_parameters():
        p.requires_grad_(name in heads)
    return sorted(heads)


def model_dims(module: nn.Module) -> dict:
    cfg = module.config
    d = getattr(cfg, "d_model", None) or getattr(cfg, "hidden_size", None)
    if d is None:
        raise ConfigError("model", f"cannot tell the hidden size of {type(module).__name__}")
    dims = {"d_model": int(d), "heads": int(getattr(cfg, "num_heads", None) or getattr(cfg, "num_attention_heads", 1))}
    if getattr(cfg, "is_encoder_decoder", False):
        dims["enc_layers"] = int(cfg.num_layers)
        dims["dec_layers"] = int(getattr(cfg, "num_decoder_layers", None) or cfg.num_layers)
    else:
        dims["layers"] = int(cfg.num_hidden_layers)
        # the head's input width (OPT-350m projects 1024 → 512 before its head)
        dims["d_out"] = int(getattr(cfg, "word_embed_proj_dim", None) or d)
    return dims


class SideMethod(Method):
    """Base of READ and LST: wrap the bundle's module in a `SideModel`, export the backbone."""

    side_file = "side.safetensors"

    def build_side(self, backbone: nn.Module, arch: str, dims: dict) -> nn.Module:
        raise NotImplementedError

    def wrap(self, bundle, ctx: MethodContext):
        if bundle.arch not in ("encoder", "decoder", "seq2seq"):
            raise ConfigError("model", f"method={self.name} runs on text models (encoder, decoder-only, T5), not {bundle.arch}")
        backbone = bundle.module
        self.heads = freeze_backbone(bundle, train_head=bundle.arch != "seq2seq", method=self.name)
        dims = model_dims(backbone)
        side = self.build_side(backbone, bundle.arch, dims)
        if getattr(side, "needs_cross_attentions", False):
            # the decoder's cross-attention weights come out of the one backbone pass only with
            # the eager attention (sdpa returns none); the weights themselves are unchanged
            backbone.set_attn_implementation("eager")
        self.model = SideModel(backbone, side, bundle.arch, self.name)
        self.dims = dims
        self._added = sum(p.numel() for p in side.parameters())
        return replace(bundle, module=self.model)

    def added_count(self) -> int:
        return self._added

    def export(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.backbone.state_dict().items()}

    def side_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.model.side.state_dict().items()}

    def finalize(self, module: nn.Module, run_dir: Path) -> dict:
        from ...core.io import save_tensors

        meta = {"method": self.name, "options": repr(self.opts)}
        return {self.side_file: save_tensors(self.side_state(), Path(run_dir) / self.side_file, meta)}

    def base_report(self) -> dict:
        return {"side_params": self._added, "trained_heads": self.heads, "side_file": self.side_file,
                "backbone_passes": self.model.backbone_calls, **{k: v for k, v in self.dims.items()}}
