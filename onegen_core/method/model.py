"""OneGen model wrapper: any Hugging Face causal LM, one forward pass, two losses.

The wrapper runs the decoder over the main sequences and over the documents of a batch (two padded
groups, one pass each; rows are independent so this equals one pass over all rows), then
- projects only the GEN positions through the LM head (documents have none, so the vocabulary-size
  matmul is paid only where a next-token loss exists), and
- reads the last-layer hidden states at the [RQ] and [RD] positions as query and document vectors.
Each loss term is returned separately so it can be logged (GritLM's habit).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from onegen_core.config import LossConfig
from onegen_core.method.collator import Batch
from onegen_core.method.encoding import IGNORE_INDEX
from onegen_core.method.frozen_layers import LowerStateCache, freeze_below, run_layers, token_chunks
from onegen_core.method.losses import bpr_loss, info_nce_loss
from onegen_core.method.pairs import sample_pairs


@dataclass
class OneGenOutput:
    loss: torch.Tensor  # λg·Lg + λr·Lr, scalar with grad
    lm_loss: torch.Tensor  # Lg (detached for logging), mean over GEN tokens of this micro-batch
    retrieval_loss: torch.Tensor  # Lr (detached), mean over sampled pairs
    n_gen_tokens: int
    n_pairs: int
    pair_accuracy: float  # fraction of pairs whose positive beats every sampled negative
    stats: Counter = field(default_factory=Counter)


def gather_positions(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """hidden (rows, seq, dim), index (n, 2) of (row, position) → (n, dim)."""
    return hidden[index[:, 0], index[:, 1]]


class OneGenModel(torch.nn.Module):
    """Wraps `lm` (a `*ForCausalLM`); `forward(batch)` returns a `OneGenOutput`."""

    def __init__(self, lm: torch.nn.Module, loss_cfg: LossConfig) -> None:
        super().__init__()
        self.lm = lm
        self.loss_cfg = loss_cfg
        # Set by a data-parallel loop whose ranks must make the same module calls (ZeRO-3 gathers a
        # layer's weights with a collective on every call, forward and backward). Maps this rank's
        # number of document chunks to the largest over ranks; the difference is made up with
        # one-token dummy passes. None (single process): no padding calls.
        self.agree_calls: Callable[[int], int] | None = None
        # train.trainable_layers > 0: the frozen lower layers' output per sequence (see frozen_layers)
        self.lower_cache: LowerStateCache | None = None

    def train_top_layers(self, trainable_layers: int, cache_dtype: torch.dtype = torch.float32) -> None:
        """Train only the top `trainable_layers` decoder layers (and the final norm); the frozen layers'
        output is computed once per sequence and cached (in `cache_dtype`; the frozen weights are stored in
        it too when it is not float32). 0 = every layer, no cache."""
        if trainable_layers <= 0 or self.lower_cache is not None:
            return
        split = freeze_below(self.lm, trainable_layers, cache_dtype if cache_dtype != torch.float32 else None)
        if split:
            self.lower_cache = LowerStateCache(split, cache_dtype)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden states after the final norm, (rows, seq, dim): the vectors the LM head
        reads and that inference takes for [RQ]. With a lower-state cache, the frozen layers' output
        comes from the cache and only the trainable layers run (the same values)."""
        if self.lower_cache is not None:
            lower = self.lower_cache.lookup(self.lm, input_ids, attention_mask)  # (rows, seq, dim)
            return run_layers(self.lm, lower, attention_mask, self.lower_cache.split)
        out = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def vectors_at(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, index: torch.Tensor, chunk_tokens: int = 4096
    ) -> torch.Tensor:
        """Last-layer hidden states at `index` (n, 2) of (row, position) → (n, dim).

        Rows are run in chunks of similar length, each trimmed to its own longest row and holding at most
        `chunk_tokens` padded tokens: documents vary a lot in length and padding them all to the
        longest one wasted ~40% of the decoder's work on HotpotQA paragraphs, while one call per eight
        ten-token entity descriptions wasted most of it on call overhead. Rows are independent, so the
        vectors are the same as one padded pass.
        """
        lengths = attention_mask.sum(dim=1)  # (rows,)
        order = lengths.argsort(descending=True)
        spans = token_chunks(lengths[order].tolist(), chunk_tokens) if index.shape[0] else []
        n_chunks = len(spans)
        pad_calls = self.agree_calls(n_chunks) - n_chunks if self.agree_calls else 0
        # dummy passes keep call counts equal across ranks; `* 0` keeps them in the graph so the
        # backward pass (which gathers weights again under ZeRO-3) matches too
        dummy = None
        for _ in range(pad_calls):
            h = self._dummy_pass(input_ids)  # (1, 1, dim)
            dummy = h if dummy is None else dummy + h
        if index.shape[0] == 0:
            if dummy is None:
                dummy = self._dummy_pass(input_ids)
            return dummy.new_zeros((0, dummy.shape[-1])) + dummy.sum() * 0.0  # (0, dim)
        local = torch.full_like(lengths, -1)
        pieces, which = [], []
        for start, stop in spans:
            rows = order[start:stop]
            width = int(lengths[rows].max())
            h = self.hidden_states(input_ids[rows, :width], attention_mask[rows, :width])  # (chunk, width, dim)
            local[rows] = torch.arange(len(rows), device=rows.device)
            hit = torch.isin(index[:, 0], rows).nonzero().flatten()  # entries of this chunk
            pieces.append(h[local[index[hit, 0]], index[hit, 1]])
            which.append(hit)
        vectors = torch.cat(pieces)  # (n, dim), in chunk order
        vectors = vectors[torch.cat(which).argsort()]
        return vectors if dummy is None else vectors + dummy.sum() * 0.0

    def _dummy_pass(self, like: torch.Tensor) -> torch.Tensor:
        """One decoder pass over a single token: (1, 1, dim)."""
        ids = torch.zeros((1, 1), dtype=torch.long, device=like.device)
        return self.hidden_states(ids, torch.ones_like(ids))

    def forward(
        self,
        batch: Batch,
        generator: torch.Generator | None = None,
        gen_token_normaliser: int | None = None,
        pair_normaliser: float = 1.0,
    ) -> OneGenOutput:
        """gen_token_normaliser: divide the summed token losses by this count (the GEN tokens of the
        whole optimizer step) instead of by this micro-batch's count, so that under gradient
        accumulation every token weighs the same whatever micro-batch it falls in. The retrieval loss
        is a mean over pairs per micro-batch, scaled by `pair_normaliser` (1/grad_accum)."""
        cfg = self.loss_cfg
        hidden = self.hidden_states(batch.input_ids, batch.attention_mask)  # (n_main, seq, dim)
        zero = hidden.sum() * 0.0  # keeps every parameter in the graph (DDP/ZeRO need that)

        gen = batch.labels != IGNORE_INDEX  # (rows, seq)
        n_gen = int(gen.sum())
        if cfg.lambda_g > 0 and (n_gen or self.agree_calls):
            # under agree_calls the head runs even on zero rows: every rank calls it once
            logits = self.lm.get_output_embeddings()(hidden[gen])  # (n_gen, vocab)
            lm_sum = F.cross_entropy(logits.float(), batch.labels[gen], reduction="sum")
            lm_loss = lm_sum / (gen_token_normaliser or max(n_gen, 1))
            lm_mean = (lm_sum / n_gen).detach() if n_gen else torch.tensor(float("nan"))
        else:
            lm_loss = zero
            lm_mean = torch.tensor(float("nan"))

        pairs = sample_pairs(
            batch.positive_mask, batch.negative_mask, cfg.positives_per_query, cfg.negatives_per_positive, generator,
            own_mask=batch.own_mask, own_first=cfg.own_negatives_first,
        )
        n_pairs = len(pairs.query_rows)
        if cfg.lambda_r > 0 and not n_pairs and self.agree_calls:
            # no pairs on this rank, but the other ranks encode documents: make the same calls
            r_loss = zero + self.vectors_at(batch.doc_input_ids, batch.doc_attention_mask, batch.doc_index).sum() * 0.0
            accuracy = float("nan")
        elif n_pairs and cfg.lambda_r > 0:
            device = hidden.device
            q_all = gather_positions(hidden, batch.query_index)  # (n_queries, dim)
            d_all = self.vectors_at(batch.doc_input_ids, batch.doc_attention_mask, batch.doc_index)  # (n_units, dim)
            q = q_all[pairs.query_rows.to(device)]  # (n_pairs, dim)
            pos = d_all[pairs.positive_cols.to(device)]  # (n_pairs, dim)
            neg = d_all[pairs.negative_cols.to(device)]  # (n_pairs, k, dim)
            valid = pairs.negative_valid.to(device)  # (n_pairs, k): False = padding
            if cfg.kind == "bpr":
                r_loss = bpr_loss(q, pos, neg, neg_valid=valid)
            else:
                r_loss = info_nce_loss(q, pos, neg, cfg.temperature, in_batch=cfg.in_batch, neg_valid=valid)
            with torch.no_grad():
                qn, pn, nn_ = F.normalize(q, dim=-1), F.normalize(pos, dim=-1), F.normalize(neg, dim=-1)
                pos_s = (qn * pn).sum(-1)  # (n_pairs,)
                neg_s = torch.einsum("nd,nkd->nk", qn, nn_).masked_fill(~valid, float("-inf"))  # (n_pairs, k)
                accuracy = float((pos_s > neg_s.max(dim=1).values).float().mean())
        else:
            r_loss = zero
            accuracy = float("nan")

        loss = cfg.lambda_g * lm_loss + cfg.lambda_r * r_loss * pair_normaliser
        stats = Counter(batch.stats)
        stats.update(pairs.stats)
        return OneGenOutput(
            loss=loss,
            lm_loss=lm_mean,
            retrieval_loss=r_loss.detach(),
            n_gen_tokens=n_gen,
            n_pairs=n_pairs,
            pair_accuracy=accuracy,
            stats=stats,
        )
