"""Paired preference data -> KTO's unpaired rows, and KTO's class-balance check.

`to_kto` backs ``alignkit data to-kto IN --out OUT``. Each pair becomes two rows, in file order:
``{"prompt": ..., "completion": chosen, "label": true}`` then the same prompt with the rejected
answer and ``"label": false``. The prompt is written as the loader normalised it: a plain string
when it is a single user turn, otherwise the message list (a row's own system message included), so
`formats.load_kto` reads back exactly the rows it reads from the paired file. Output is deterministic
(same input, same bytes).

`kto_balance_warning` implements the KTO paper's recommendation (Ethayarajh et al. 2024,
arXiv:2402.01306, eq. 8, as TRL 1.16's `KTOTrainer` cites it): choose the weights so that

    lambda_D * n_D / (lambda_U * n_U)  in  [1, 4/3]

(the paper's default with balanced data is lambda_D = lambda_U = 1). TRL checks the same range
(with 1.33 for 4/3) but only when n_D != n_U; we check it always, so an out-of-range weight on
balanced data is reported too.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignkit.data.formats import load_preferences
from alignkit.errors import UserError

RECOMMENDED = (1.0, 4.0 / 3.0)  # range of lambda_D n_D / (lambda_U n_U), KTO paper eq. 8


def _prompt_field(prompt) -> str | list[dict]:
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def kto_rows(pairs) -> list[dict]:
    """`PreferenceRow`s -> unpaired dicts {prompt, completion, label}: chosen true, rejected false."""
    out = []
    for p in pairs:
        prompt = _prompt_field(p.prompt)
        out.append({"prompt": prompt, "completion": p.chosen, "label": True})
        out.append({"prompt": prompt, "completion": p.rejected, "label": False})
    return out


def to_kto(pairs_path: str | Path, out_path: str | Path, *, skip_invalid: bool = False) -> dict:
    """Write the KTO form of a paired file as JSONL; returns counts.

    Any format `load_preferences` reads (.jsonl, .json, .csv, .parquet, every row convention) is
    accepted. Invalid rows raise `UserError` (or are skipped and counted with `skip_invalid`).
    Returns ``{"pairs", "desirable", "undesirable", "skipped"}``.
    """
    pairs_path, out_path = Path(pairs_path), Path(out_path)
    if out_path.resolve() == pairs_path.resolve():
        raise UserError("the output would overwrite the input", where=str(out_path), hint="choose another --out")
    pairs, report = load_preferences(pairs_path, skip_invalid=skip_invalid)
    rows = kto_rows(pairs)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(out_path)
    return {"pairs": len(pairs), "desirable": len(pairs), "undesirable": len(pairs), "skipped": report.skipped}


def kto_balance_warning(n_desirable: int, n_undesirable: int, w_d: float = 1.0, w_u: float = 1.0) -> str | None:
    """A warning when ``w_d * n_desirable / (w_u * n_undesirable)`` is outside [1, 4/3], else None.

    The message gives the range for either weight with the other kept (TRL suggests changing one of
    them, not both).
    """
    if n_desirable < 0 or n_undesirable < 0 or w_d <= 0 or w_u <= 0:
        raise ValueError(f"need counts >= 0 and weights > 0, got {n_desirable}, {n_undesirable}, {w_d}, {w_u}")
    lo, hi = RECOMMENDED
    if n_desirable == 0 or n_undesirable == 0:
        missing = "desirable" if n_desirable == 0 else "undesirable"
        return (f"KTO data has no {missing} rows ({n_desirable} desirable, {n_undesirable} undesirable): "
                f"the loss then only pushes one way; add {missing} examples")
    ratio = w_d * n_desirable / (w_u * n_undesirable)
    if lo <= ratio <= hi:
        return None
    d_lo, d_hi = lo * w_u * n_undesirable / n_desirable, hi * w_u * n_undesirable / n_desirable
    u_lo, u_hi = w_d * n_desirable / (hi * n_undesirable), w_d * n_desirable / (lo * n_undesirable)
    return (f"KTO class balance: kto_desirable_weight x desirable / (kto_undesirable_weight x undesirable) = "
            f"{w_d:g} x {n_desirable} / ({w_u:g} x {n_undesirable}) = {ratio:.3g}, outside the KTO paper's "
            f"recommended [1, 4/3] (arXiv:2402.01306, eq. 8); set EITHER train.kto_desirable_weight in "
            f"[{d_lo:.3g}, {d_hi:.3g}] OR train.kto_undesirable_weight in [{u_lo:.3g}, {u_hi:.3g}]")
