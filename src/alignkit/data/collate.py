"""Token ids -> the tensors of one forward pass.

Every layout is described the same way, so one forward function (`alignkit.logprobs`) serves all:
each completion token is a *target*, with the (row, column) of the hidden state that predicts it
and the *segment* (output sequence) it belongs to. The log-prob of segment s is the sum over its
targets.

Layouts:
- `separate` (the plain twin, what every peer does): two rows per pair, `[prompt, chosen]` and
  `[prompt, rejected]`, right-padded.
- `shared` (prefix sharing): one row per pair, `[prompt, chosen, rejected]`. The rejected tokens
  attend to the prompt and to themselves but not to the chosen tokens, and their position ids
  restart at the end of the prompt, so each token sees exactly the context it has in `separate`.
  The prompt is computed once instead of twice.
- `single`: one row per sequence, `[prompt, completion]` (SFT, KTO, generation scoring).

Segments are ordered so that for pair i, segment 2i is chosen and 2i+1 rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, 1, L, L) bool, True = may attend
    rows: torch.Tensor  # (N,) row of the hidden state predicting each target
    cols: torch.Tensor  # (N,) column of that hidden state
    targets: torch.Tensor  # (N,) target token ids
    segments: torch.Tensor  # (N,) output sequence of each target
    n_segments: int
    n_tokens: int  # real (non-pad) tokens in the batch
    n_padded: int  # B * L
    end_rows: torch.Tensor | None = None  # (n_segments,) row of each segment's last token (its EOS)
    end_cols: torch.Tensor | None = None  # (n_segments,) column of that token: where a reward head reads
    # (B, L) 1 = real token, for a plain layout (each row one causal sequence from position 0): the
    # decoder then builds its own masks from it (sliding windows included). None: prefix-shared rows.
    padding_mask: torch.Tensor | None = None

    def to(self, device) -> Batch:
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.__dict__.items()}
        return Batch(**moved)

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.n_tokens / max(self.n_padded, 1)


class _Builder:
    """Accumulates rows made of blocks; each block says which earlier block it may see."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.rows: list[dict] = []
        self.targets: list[tuple[int, int, int, int]] = []  # (row, col, token, segment)
        self.ends: dict[int, tuple[int, int]] = {}  # segment -> (row, col) of its last token

    def add_row(self, blocks: list[tuple[list[int], int, int | None, int | None]]) -> None:
        """blocks: (ids, start_position, parent_block or None, segment or None).

        A block sees itself causally, its parent chain in full, nothing else. The first token of a
        block with a segment is predicted by the last token of its parent.
        """
        r = len(self.rows)
        ids: list[int] = []
        pos: list[int] = []
        spans: list[tuple[int, int]] = []
        parents: list[int | None] = []
        for tok, start, parent, seg in blocks:
            begin = len(ids)
            ids.extend(tok)
            pos.extend(range(start, start + len(tok)))
            spans.append((begin, len(ids)))
            parents.append(parent)
            if seg is not None:
                self.ends[seg] = (r, len(ids) - 1)
                prev = spans[parent][1] - 1 if parent is not None else None
                for j, t in enumerate(tok):
                    col = begin + j - 1 if j > 0 else prev
                    if col is not None:
                        self.targets.append((r, col, t, seg))
        plain = pos == list(range(len(ids))) and all(p == (b - 1 if b else None) for b, p in enumerate(parents))
        self.rows.append(dict(ids=ids, pos=pos, spans=spans, parents=parents, plain=plain))

    def build(self, n_segments: int) -> Batch:
        B = len(self.rows)
        L = max(len(r["ids"]) for r in self.rows)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros((B, L), dtype=torch.long)
        mask = torch.zeros((B, 1, L, L), dtype=torch.bool)
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        n_tokens = 0
        for r, row in enumerate(self.rows):
            n = len(row["ids"])
            n_tokens += n
            input_ids[r, :n] = torch.tensor(row["ids"])
            position_ids[r, :n] = torch.tensor(row["pos"])
            for b, (s, e) in enumerate(row["spans"]):
                mask[r, 0, s:e, s:e] = causal[: e - s, : e - s]
                p = row["parents"][b]
                while p is not None:
                    ps, pe = row["spans"][p]
                    mask[r, 0, s:e, ps:pe] = True
                    p = row["parents"][p]
            # Padding attends to itself only: a fully masked row would give NaN in SDPA.
            idx = torch.arange(n, L)
            mask[r, 0, idx, idx] = True
        t = torch.tensor(self.targets, dtype=torch.long).reshape(-1, 4)
        ends = torch.tensor([self.ends.get(s, (0, 0)) for s in range(n_segments)], dtype=torch.long).reshape(-1, 2)
        padding = None
        if all(row["plain"] for row in self.rows):
            lengths = torch.tensor([len(row["ids"]) for row in self.rows])
            padding = (torch.arange(L)[None] < lengths[:, None]).long()
        return Batch(input_ids, position_ids, mask, t[:, 0], t[:, 1], t[:, 2], t[:, 3],
                     n_segments, n_tokens, B * L, ends[:, 0], ends[:, 1], padding)


def collate_pairs(pairs, pad_id: int, *, shared: bool = True) -> Batch:
    """Pairs (objects with prompt_ids, chosen_ids, rejected_ids) -> one forward's tensors."""
    b = _Builder(pad_id)
    for i, p in enumerate(pairs):
        P = len(p.prompt_ids)
        if shared:
            b.add_row([(p.prompt_ids, 0, None, None), (p.chosen_ids, P, 0, 2 * i),
                       (p.rejected_ids, P, 0, 2 * i + 1)])
        else:
            b.add_row([(p.prompt_ids, 0, None, None), (p.chosen_ids, P, 0, 2 * i)])
            b.add_row([(p.prompt_ids, 0, None, None), (p.rejected_ids, P, 0, 2 * i + 1)])
    return b.build(2 * len(pairs))


@dataclass
class PromptCompletion:
    """A prompt and one completion as token ids: what `collate_single` needs (rollouts, scored answers)."""

    prompt_ids: list[int]
    completion_ids: list[int]


def collate_single(items, pad_id: int) -> Batch:
    """Sequences (objects with prompt_ids, completion_ids) -> one segment each."""
    b = _Builder(pad_id)
    for i, it in enumerate(items):
        b.add_row([(it.prompt_ids, 0, None, None), (it.completion_ids, len(it.prompt_ids), 0, i)])
    return b.build(len(items))
