"""A batch of token sequences run over their shared prefix (transformers backend).

The prompts of an eval suite's window share most of their tokens: the system prompt, the few-shot
examples, the tools' descriptions. :class:`SharedPrefix` runs that shared prefix once, keeps its keys and
values (the KV cache) for the next batch, and runs only each row's own tokens, right-padded, with
explicit positions and an attention mask that hides the padding. The next batch reuses the part of the
kept prefix it shares (a forced tool call's every step, a conversation's next turn, the next chunk of the
window), so a prompt's common part costs one pass per run, not one per row and step.

Greedy decoding continues from the prefill one token per row per step, and scoring continues the rows
with each option's tokens: both give the logits the same sequences would give alone, up to the
numerical differences of a different batch shape. Used only for models whose KV cache is the plain
per-layer keys and values (no sliding windows, no recurrent state); others keep the plain path.
torch is the caller's (imported when the model loads).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

MIN_SHARED = 16  # fewer shared tokens than this: no prefix is run apart (its pass would cost more than it saves)


def shared_length(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every row shares, keeping at least one token of each row its own (its
    logits are needed)."""
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return max(n, 0)


@dataclass
class Rows:
    """A batch run up to each row's last token: the KV cache for every row, the mask over its columns
    (padding hidden), each row's length (the position of its next token) and the logits after it."""

    kv: Any  # the KV cache of every row
    mask: Any  # [rows, columns] 1 where a column is a real token of that row
    lengths: Any  # [rows]
    last: Any  # [rows, vocabulary] the logits after each row's last token


@dataclass
class Kept:
    """A batch's prefill, kept for the next batch that continues its rows: each row's tokens, the
    per-layer keys and values of every row, which columns each row sees and the position of each column."""

    tokens: list[list[int]]
    layers: list[tuple[Any, Any]]
    mask: Any  # [rows, columns]
    positions: Any  # [rows, columns]
    continued: set[int] = field(default_factory=set)  # its rows a later batch continued (all: it is spent)


def kv_arg(model: Any) -> str:
    """The name of the model's KV cache argument and output: ``cache`` in transformers 5, else
    ``past_key_values`` (4.x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class SharedPrefix:
    """The model's passes over batches that share a prefix, with the last shared prefix kept."""

    def __init__(self, model: Any, torch: Any, pad_id: int, keep_rows: int = 64) -> None:
        self.model = model
        self.torch = torch
        self.pad_id = pad_id
        self.device = model.device
        self.kv_arg = kv_arg(model)
        self.kept: tuple[list[int], list[tuple[Any, Any]]] | None = None  # (tokens, per-layer keys and values)
        self.batches: list[Kept] = []  # the last prefills, for a batch that continues their rows
        self.keep_rows = keep_rows  # how many rows they hold at most (a window's worth: a round's chunks)

    @staticmethod
    def usable(model: Any) -> bool:
        """Whether the model's KV cache is plain per-layer keys and values that this class can rebuild, and
        its generation settings are plain greedy argmax (no repetition penalty or suppressed tokens)."""
        try:
            from transformers.cache_utils import DynamicCache, DynamicLayer
        except ImportError:
            return False
        params = inspect.signature(model.forward).parameters
        if "logits_to_keep" not in params or "position_ids" not in params:
            return False  # positions from the mask (ALiBi models) cannot follow a row past padding
        config = model.config
        if getattr(config, "_attn_implementation", None) != "sdpa":
            return False  # a boolean 4D mask is a mask only to SDPA (eager attention adds it to the scores)
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            return False
        if getattr(config, "layer_types", None) and set(config.layer_types) != {"full_attention"}:
            return False
        try:
            probe = DynamicCache(config=config)
        except Exception:  # noqa: BLE001 - a cache this transformers cannot make: the plain path
            return False
        if any(type(layer) is not DynamicLayer for layer in getattr(probe, "layers", [None])):
            return False
        generation = model.generation_config
        plain = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
                 "min_length": 0, "min_new_tokens": None, "bad_words_ids": None, "suppress_tokens": None,
                 "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
                 "sequence_bias": None, "num_beams": 1, "penalty_alpha": None, "guidance_scale": 1.0,
                 "dola_layers": None}
        return all(getattr(generation, k, v) in (v, None) or (v == 0 and not getattr(generation, k)) for k, v in plain.items())

    # --- the kept prefix ------------------------------------------------------------------------
    def _kv_of(self, layers: list[tuple[Any, Any]], rows: int) -> Any:
        """A KV cache of ``rows`` rows, each holding the one row of ``layers``."""
        return self._kv_rows([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in layers])

    @staticmethod
    def _kv_rows(layers: list[tuple[Any, Any]]) -> Any:
        from transformers.cache_utils import DynamicCache

        return DynamicCache(ddp_cache_data=layers)

    @staticmethod
    def _layers(kv: Any) -> list[tuple[Any, Any]]:
        return [(layer.keys, layer.values) for layer in kv.layers]

    def _prefix(self, tokens: list[int]) -> list[tuple[Any, Any]] | None:
        """The keys and values of ``tokens`` (batch of one): the kept prefix's shared part, extended by a
        pass over the rest; kept for the next batch. None: nothing to share."""
        torch = self.torch
        reuse = 0
        if self.kept is not None:
            kept_tokens, kept_layers = self.kept
            for a, b in zip(tokens, kept_tokens):
                if a != b:
                    break
                reuse += 1
        if reuse < MIN_SHARED:
            reuse = 0
        if reuse == len(tokens):  # a part of the kept prefix: the kept one stays (the next batch may share more)
            return [(k[:, :, :reuse], v[:, :, :reuse]) for k, v in self.kept[1]]  # type: ignore[index]
        kv = self._kv_of([(k[:, :, :reuse], v[:, :, :reuse]) for k, v in self.kept[1]], 1) if reuse else None  # type: ignore[index]
        with torch.inference_mode():
            out = self.model(torch.tensor([tokens[reuse:]], device=self.device),
                             position_ids=torch.arange(reuse, len(tokens), device=self.device)[None, :],
                             use_cache=True, logits_to_keep=1, **({self.kv_arg: kv} if kv is not None else {}))
        layers = self._layers(getattr(out, self.kv_arg))
        self.kept = (list(tokens), layers)
        return layers

    def forget(self) -> None:
        self.kept = None
        self.batches = []

    # --- passes ---------------------------------------------------------------------------------
    def prefill(self, rows: list[list[int]]) -> Rows:
        """Run every row to its end, each from the longest start already computed: the rows of the last
        batch it continues (a forced call's next step, a conversation's next turn), else the rows' shared
        prefix (run once, and kept)."""
        torch = self.torch
        base = self._continuing(rows)
        picks = base[4] if base is not None else []
        if base is None:
            shared = shared_length(rows)  # a row alone: all but its last token (the next step may share them)
            layers = self._prefix(rows[0][:shared]) if shared >= MIN_SHARED else None
            if layers is None:
                shared = 0
            base = (self._kv_of(layers, len(rows)) if layers is not None else None,
                    torch.ones((len(rows), shared), dtype=torch.long),
                    torch.arange(shared)[None, :].expand(len(rows), -1), [shared] * len(rows), [])
        kv, seen, seen_at, starts, _ = base
        own = [r[start:] for r, start in zip(rows, starts)]
        width = max(len(r) for r in own)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        own_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for n, tokens in enumerate(own):
            ids[n, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            own_mask[n, : len(tokens)] = 1
        positions = torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(width)[None, :]
        mask = torch.cat([seen, own_mask], dim=1)
        ends = sorted({len(t) - 1 for t in own})  # only the logits after each row's last token are kept
        with torch.inference_mode():
            out = self.model(ids.to(self.device), attention_mask=mask.to(self.device),
                             position_ids=positions.to(self.device), use_cache=True,
                             logits_to_keep=torch.tensor(ends, device=self.device),
                             **({self.kv_arg: kv} if kv is not None else {}))
        result = getattr(out, self.kv_arg)
        for b, j in picks:
            self.batches[b].continued.add(j)
        # a kept batch whose every row was continued is spent (the continuations hold more); then the oldest go
        self.batches = [k for k in self.batches if len(k.continued) < len(k.tokens)]
        self.batches.append(Kept([list(r) for r in rows], self._layers(result), mask, torch.cat([seen_at, positions], dim=1)))
        while len(self.batches) > 1 and sum(len(k.tokens) for k in self.batches) > self.keep_rows:
            self.batches.pop(0)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        column = torch.tensor([ends.index(len(t) - 1) for t in own], device=out.logits.device)
        last = out.logits[torch.arange(len(rows), device=out.logits.device), column]
        return Rows(result, mask, lengths, last)

    def _continuing(self, rows: list[list[int]]) -> tuple[Any, Any, Any, list[int], list[tuple[int, int]]] | None:
        """Where every row continues a row of the kept batches (by at least ``MIN_SHARED`` tokens, and in
        all more than the rows' shared prefix would save): its KV cache rows, the columns each row keeps
        seeing (those past what it shares are hidden), their positions, where each row's own tokens start,
        and which kept row each continues. The rows may continue rows of different kept batches (a round's
        chunks)."""
        if not self.batches:
            return None
        torch = self.torch
        owners = [(b, j) for b, kept in enumerate(self.batches) for j in range(len(kept.tokens))]
        longest = max(len(t) for kept in self.batches for t in kept.tokens)
        table = torch.full((len(owners), longest), -1, dtype=torch.long)
        for n, (b, j) in enumerate(owners):
            tokens = self.batches[b].tokens[j]
            table[n, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        picks, starts = [], []
        for row in rows:
            n = min(len(row) - 1, longest)
            if n < MIN_SHARED:
                return None
            same = (table[:, :n] == torch.tensor(row[:n], dtype=torch.long)[None, :]).long().cumprod(dim=1).sum(dim=1)
            best = int(same.argmax())
            if int(same[best]) < MIN_SHARED:
                return None
            picks.append(owners[best])
            starts.append(int(same[best]))
        if sum(starts) < len(rows) * shared_length(rows):
            return None  # the rows' own shared prefix saves more (run once, not once per row)
        used = sorted({b for b, _ in picks})
        parts = []  # per kept batch used: its picked rows, and the columns they still see
        for b in used:
            kept = self.batches[b]
            mine = [n for n, (owner, _) in enumerate(picks) if owner == b]
            index = torch.tensor([picks[n][1] for n in mine], dtype=torch.long)
            at = kept.positions[index]
            seen = kept.mask[index] * (at < torch.tensor([starts[n] for n in mine], dtype=torch.long)[:, None]).long()
            columns = seen.any(dim=0).nonzero().flatten()  # those no row sees any more are dropped
            parts.append((kept, mine, index, columns, seen[:, columns], at[:, columns]))
        width = max(len(columns) for _, _, _, columns, _, _ in parts)
        order = torch.tensor([n for _, mine, _, _, _, _ in parts for n in mine], dtype=torch.long)
        back = torch.empty_like(order)
        back[order] = torch.arange(len(order))  # from the parts' order to the rows' order

        def widen(t: Any, dim: int) -> Any:
            pad = [0, 0] * (t.dim() - 1 - dim) + [0, width - t.shape[dim]]
            return self.torch.nn.functional.pad(t, pad)

        seen = torch.cat([widen(s, 1) for _, _, _, _, s, _ in parts])[back]
        at = torch.cat([widen(a, 1) for _, _, _, _, _, a in parts])[back]
        layers = []
        for layer in range(len(parts[0][0].layers)):
            keys, values = [], []
            for kept, _, index, columns, _, _ in parts:
                k, v = kept.layers[layer]
                rows_at, columns_at = index.to(k.device), columns.to(k.device)
                keys.append(widen(k[rows_at][:, :, columns_at], 2))
                values.append(widen(v[rows_at][:, :, columns_at], 2))
            to = back.to(keys[0].device)
            layers.append((torch.cat(keys)[to], torch.cat(values)[to]))
        return self._kv_rows(layers), seen, at, starts, picks

    def select(self, rows: Rows, keep: list[int]) -> None:
        """Only the rows ``keep`` go on (those that finished leave the batch)."""
        index = self.torch.tensor(keep, dtype=self.torch.long)
        rows.kv.batch_select_indices(index.to(self.device))
        rows.mask, rows.lengths, rows.last = rows.mask[index], rows.lengths[index], rows.last[index.to(rows.last.device)]

    def step(self, rows: Rows, tokens: list[int]) -> Any:
        """One more token for every row: the logits after it (the rows' KV cache, mask and lengths advance)."""
        torch = self.torch
        rows.mask = torch.cat([rows.mask, torch.ones((len(tokens), 1), dtype=torch.long)], dim=1)
        with torch.inference_mode():
            out = self.model(torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None],
                             attention_mask=rows.mask.to(self.device), position_ids=rows.lengths[:, None].to(self.device),
                             use_cache=True, **{self.kv_arg: rows.kv})
        rows.kv = getattr(out, self.kv_arg)
        rows.lengths = rows.lengths + 1
        rows.last = out.logits[:, -1]
        return rows.last

    def continuations(self, rows: Rows, owner: list[int], rests: list[list[int]]) -> list[Any]:
        """The logits predicting each continuation's tokens after its owner row: for each, a
        [len(rest), vocabulary] tensor (the first from the row's last logits).

        A row's continuations run side by side in the row itself, each seeing the row and its own
        earlier tokens only (a tree of continuations: the attention mask is 4D), so the row's KV cache is
        never copied per continuation."""
        torch = self.torch
        placed: list[list[tuple[int, int]]] = [[] for _ in range(len(rows.lengths))]  # per row: (rest, start)
        for n, (row, rest) in enumerate(zip(owner, rests)):
            start = sum(len(rests[m]) for m, _ in placed[row])
            placed[row].append((n, start))
        width = max(1, max(sum(len(rests[m]) for m, _ in spots) for spots in placed))
        past = rows.mask.shape[1]
        ids = torch.full((len(placed), width), self.pad_id, dtype=torch.long)
        positions = torch.zeros((len(placed), width), dtype=torch.long)
        see = torch.zeros((len(placed), 1, width, past + width), dtype=torch.bool)
        see[:, 0, :, :past] = rows.mask.bool()[:, None, :]  # every token sees its row's real tokens
        for row, spots in enumerate(placed):
            for n, start in spots:
                rest = rests[n]
                end = start + len(rest)
                ids[row, start:end] = torch.tensor(rest, dtype=torch.long)
                positions[row, start:end] = rows.lengths[row] + torch.arange(len(rest))
                block = torch.ones((len(rest), len(rest)), dtype=torch.bool).tril()
                see[row, 0, start:end, past + start: past + end] = block  # and its own continuation's earlier ones
        with torch.inference_mode():
            logits = self.model(ids.to(self.device), attention_mask=see.to(self.device), position_ids=positions.to(self.device),
                                **{self.kv_arg: rows.kv}).logits
        found: list[Any] = [None] * len(rests)
        for row, spots in enumerate(placed):
            for n, start in spots:
                own = logits[row, start: start + len(rests[n]) - 1]
                found[n] = torch.cat([rows.last[row][None, :], own])
        return found
