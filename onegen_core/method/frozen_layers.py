"""Training only the top K decoder layers: freeze the rest, run the decoder from a given layer, and keep
the frozen layers' output per sequence so that each epoch after the first runs only K layers.

Why: on a CPU a full fine-tuning step of a 135M-parameter model processes ~190 tokens/s; the lower layers
of a frozen stack compute the same states for the same sequence every epoch, so they are computed once
(forward only, no activations kept) and the top K layers train on them. The input embeddings stay frozen
too: their gradient would have to flow back through every frozen layer, which is the cost this recipe
avoids; the output head trains (untied from them, see `freeze_below`). The result is an ordinary checkpoint; inference runs the whole decoder and
computes exactly the states training saw, because the frozen weights never change.

Valid on GPUs as well (`train.trainable_layers`); 0 trains every layer and uses no cache.
"""
from __future__ import annotations

from collections import Counter

import torch


def decoder_of(lm: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (`LlamaModel`, `Qwen2Model`, …) of a causal LM, through a peft wrapper too."""
    return lm.get_decoder()


def num_layers(lm: torch.nn.Module) -> int:
    return len(decoder_of(lm).layers)


def freeze_below(lm: torch.nn.Module, trainable_layers: int, frozen_dtype: torch.dtype | None = None) -> int:
    """Freeze the input embeddings and every decoder layer below the top `trainable_layers`; returns the
    index of the first trainable layer (the split). The output head stays trainable, untied from the
    input embeddings when they were tied (the checkpoint is then saved untied).

    Why the head trains: a new token's row starts near the rows of its text's pieces (`[RQ]` near `[`,
    `RQ`, `]`); with a frozen tied row the top layers alone never lifted `[RQ]` above `]` in greedy
    decoding (measured: the model wrote `]]]]…` where it should retrieve). The input side stays frozen,
    so the cached lower states stay exact.
    `frozen_dtype` (e.g. bfloat16) stores the frozen weights in that dtype: they take no optimizer step,
    so nothing is lost to rounding beyond the forward pass itself, which runs about twice as fast in
    bfloat16 on CPUs with AVX512-BF16."""
    n = num_layers(lm)
    if not 0 < trainable_layers <= n:
        raise ValueError(f"train.trainable_layers={trainable_layers}: the backbone has {n} decoder layers")
    split = n - trainable_layers
    dec = decoder_of(lm)
    untie_output_head(lm)
    for p in dec.embed_tokens.parameters():
        p.requires_grad_(False)
    for layer in dec.layers[:split]:
        for p in layer.parameters():
            p.requires_grad_(False)
    if frozen_dtype is not None:
        dec.embed_tokens.to(frozen_dtype)
        for layer in dec.layers[:split]:
            layer.to(frozen_dtype)
    return split


def untie_output_head(lm: torch.nn.Module) -> None:
    """Give the LM its own output head, a copy of the tied input embeddings (a no-op when untied)."""
    head, emb = lm.get_output_embeddings(), lm.get_input_embeddings()
    if head is None or head.weight is not emb.weight:
        return
    new = torch.nn.Linear(emb.weight.shape[1], emb.weight.shape[0], bias=False,
                          device=emb.weight.device, dtype=emb.weight.dtype)
    new.weight = torch.nn.Parameter(emb.weight.detach().clone())
    lm.set_output_embeddings(new)
    lm.config.tie_word_embeddings = False


def run_layers(lm: torch.nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int,
               stop: int | None = None) -> torch.Tensor:
    """Decoder layers `start`..`stop` (default: to the end, then the final norm) on `hidden`, the input of
    layer `start`: (rows, seq, dim) → (rows, seq, dim). Positions count from 0 in every row, as in a
    plain forward pass over right-padded rows (the collator pads on the right)."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    dec = decoder_of(lm)
    cfg = dec.config
    position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)  # (1, seq)
    kw = dict(config=cfg, inputs_embeds=hidden, attention_mask=attention_mask, past_key_values=None,
              position_ids=position_ids)
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    masks = {"full_attention": create_causal_mask(**kw)}
    if "sliding_attention" in types:
        masks["sliding_attention"] = create_sliding_window_causal_mask(**kw)
    rotary = dec.rotary_emb(hidden, position_ids)
    end = len(dec.layers) if stop is None else stop
    for i in range(start, end):
        hidden = dec.layers[i](hidden, attention_mask=masks[types[i]], position_embeddings=rotary,
                               position_ids=position_ids)
    return dec.norm(hidden) if stop is None else hidden


def token_chunks(sorted_lengths: list[int], max_tokens: int, max_rows: int = 64) -> list[tuple[int, int]]:
    """[start, stop) spans over rows sorted longest first, each padding to at most `max_tokens`
    (rows x its first row's length; a row longer than that goes alone)."""
    spans, start = [], 0
    while start < len(sorted_lengths):
        width = max(1, sorted_lengths[start])
        stop = start + max(1, min(max_rows, max_tokens // width))
        spans.append((start, min(stop, len(sorted_lengths))))
        start = spans[-1][1]
    return spans


class LowerStateCache:
    """The frozen layers' output (the input of the first trainable layer) per distinct sequence.

    Keyed by the sequence's token ids, so the same document in two batches or two epochs is computed
    once, and a sequence truncated differently is a different entry. Rows must be right-padded (padding
    after the real tokens): a row's real positions then compute what they compute alone.
    """

    def __init__(self, split: int, dtype: torch.dtype = torch.float32, chunk_tokens: int = 4096) -> None:
        if split < 1:
            raise ValueError("a lower-state cache needs at least one frozen layer")
        self.split = split
        self.dtype = dtype
        self.chunk_tokens = chunk_tokens
        self.states: dict[bytes, torch.Tensor] = {}  # key -> (length, dim)
        self.counts: Counter = Counter()
        self.frozen = False  # set once filled on a data-parallel rank: a miss would desynchronise ranks

    def __len__(self) -> int:
        return len(self.states)

    @property
    def tokens(self) -> int:
        return sum(int(s.shape[0]) for s in self.states.values())

    @staticmethod
    def _key(ids: torch.Tensor) -> bytes:
        return ids.to(torch.int64).cpu().numpy().tobytes()

    @torch.no_grad()
    def lookup(self, lm: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(rows, seq) ids and mask → the frozen layers' output (rows, seq, dim), zeros on padding;
        rows not seen before are computed now, in chunks of similar length."""
        lengths = attention_mask.sum(dim=1).tolist()  # (rows,)
        keys = []
        for r, n in enumerate(lengths):
            if n and not bool(attention_mask[r, :n].all()):
                raise ValueError("LowerStateCache needs right-padded rows (real tokens first)")
            keys.append(self._key(input_ids[r, :n]))
        missing = [r for r, k in enumerate(keys) if k not in self.states and lengths[r]]
        missing = list({keys[r]: r for r in missing}.values())  # one computation per distinct sequence
        self.counts["hits"] += len(keys) - len(missing)
        self.counts["misses"] += len(missing)
        if missing and self.frozen:
            raise RuntimeError(f"{len(missing)} sequences are not in the filled lower-state cache; every rank "
                               "must make the same module calls, so the cache is filled before training")
        missing.sort(key=lambda r: -lengths[r])
        dec = decoder_of(lm)
        for start, stop in token_chunks([lengths[r] for r in missing], self.chunk_tokens):
            rows = missing[start:stop]
            width = max(lengths[r] for r in rows)
            ids = input_ids[rows, :width]
            mask = attention_mask[rows, :width]
            h = run_layers(lm, dec.embed_tokens(ids), mask, 0, self.split)  # (chunk, width, dim)
            if h.dtype != self.dtype and not torch.is_autocast_enabled(h.device.type):
                h = h.to(self.dtype)
            for j, r in enumerate(rows):
                self.states[keys[r]] = h[j, :lengths[r]].to(self.dtype).clone()
        dim = decoder_of(lm).config.hidden_size
        ref = next(decoder_of(lm).layers[-1].parameters())  # the dtype the trainable layers compute in
        out = torch.zeros((len(keys), input_ids.shape[1], dim), dtype=ref.dtype, device=input_ids.device)
        for r, (k, n) in enumerate(zip(keys, lengths)):
            if n:
                out[r, :n] = self.states[k].to(out.dtype)
        return out
