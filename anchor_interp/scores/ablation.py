"""Zero, mean and resample ablation of heads (on ``blocks.L.attn.hook_z``), and circuit checks.

A head is ablated by replacing its ``hook_z`` (its attention-weighted values, ``[batch, pos, head,
d_head]``) before ``W_O``:

- ``zero``: by 0 (``b_O`` stays);
- ``mean``: by its mean over a reference batch, per position (the default; keeps the head's average
  contribution and removes what depends on the input);
- ``resample``: by its value on a reference row drawn at random (seeded), per ablated row.

The reference batch defaults to the evaluated batch itself. A caller that already ran the clean batch
(:func:`anchor_interp.scores.cache.clean_run`) passes ``cache=`` (its ``hook_z`` is then the reference)
and ``clean_logits=``, and nothing is run twice; the numbers are the same. Accuracy and loss are measured at the last
position only (the anchor tasks' only scored position); rows whose target is -1 (no answer) are
left out of both. KL is ``KL(p_clean || p_ablated)`` in nats, averaged over rows (and over positions
with ``positions="all"``).

More rows than :data:`anchor_interp.scores.cache.CHUNK_ROWS` are streamed: the mean reference is summed
over chunks first, then each chunk is ablated and its accuracy hits, cross-entropy and KL are summed, so
memory stays that of one chunk (same numbers up to float summation order). ``resample`` then draws each
chunk's reference rows from the chunk itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from anchor_interp.models.validate import check_tokens
from anchor_interp.names import head_name, hook_name
from anchor_interp.scores import cache as _cache
from anchor_interp.scores.cache import cached_activations, row_chunks

__all__ = [
    "ABLATION_METHODS",
    "AblationResult",
    "CircuitCheck",
    "ablate",
    "ablation_hooks",
    "circuit_check",
    "per_head_ablation",
    "task_metrics",
]

ABLATION_METHODS = ("zero", "mean", "resample")

Head = tuple[int, int]


def _check_heads(model, heads) -> list[Head]:
    out = []
    for h in heads:
        try:
            layer, head = int(h[0]), int(h[1])
        except (TypeError, ValueError, IndexError) as e:
            raise ValueError(f"heads: each head must be a (layer, head) pair, got {h!r}") from e
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise ValueError(
                f"heads: L{layer}H{head} is out of range; the model has layers 0..{model.cfg.n_layers - 1}"
                f" and heads 0..{model.cfg.n_heads - 1}"
            )
        out.append((layer, head))
    return sorted(set(out))


def ablation_hooks(
    model,
    heads,
    method: str = "mean",
    reference: Int[Tensor, "ref seq"] | None = None,
    seed: int = 0,
    cache=None,
) -> list[tuple[str, object]]:
    """Forward hooks (``(hook_name, fn)`` pairs for ``model.run_with_hooks``) that ablate ``heads``.

    ``reference`` is needed for ``mean`` and ``resample``; ``cache``: a run of ``reference`` that
    already happened (its ``blocks.L.attn.hook_z`` are read instead of running it again). Raises
    ValueError for an unknown method, a head out of range, a missing/invalid reference or a cache
    without the ablated layers' ``hook_z``.
    """
    if method not in ABLATION_METHODS:
        raise ValueError(f"method: unknown ablation method {method!r}; use one of {ABLATION_METHODS}")
    heads = _check_heads(model, heads)
    if not heads:
        return []
    layers = sorted({layer for layer, _ in heads})
    ref_z: dict[int, Tensor] = {}
    if method in ("mean", "resample"):
        ref_z = _reference_z(model, layers, method, reference, cache)
    return _hooks_from_reference(heads, method, ref_z, seed)


def _reference_z(model, layers: list[int], method: str, reference, cache=None) -> dict[int, Tensor]:
    """``blocks.{layer}.attn.hook_z`` of the unablated model on ``reference``, per layer: (R, T, H, d_head),
    read from ``cache`` (a run of ``reference``) when given.

    Upstream heads are not ablated when collecting the reference: each head's replacement is its value
    on the unmodified model. Raises ValueError for a missing or invalid reference or cache."""
    if reference is None:
        raise ValueError(f"reference: method={method!r} needs a reference token batch [ref, seq]")
    check_tokens(model, reference)
    names = [hook_name("z", layer) for layer in layers]
    if cache is None:
        with torch.no_grad():
            _, cache = model.run_with_cache(reference, names_filter=lambda name: name in names)
    acts = cached_activations(cache, names, reference)
    return {layer: acts[hook_name("z", layer)] for layer in layers}


def _clean_logits(model, tokens: Tensor, clean_logits: Tensor | None) -> Tensor:
    """``model(tokens)`` (no gradients), or ``clean_logits`` after checking it is a full run of ``tokens``."""
    if clean_logits is None:
        with torch.no_grad():
            return model(tokens)
    if clean_logits.ndim != 3 or tuple(clean_logits.shape[:2]) != tuple(tokens.shape):
        raise ValueError(
            f"clean_logits: expected [batch, seq, d_vocab_out] logits of tokens {tuple(tokens.shape)}, "
            f"got {tuple(clean_logits.shape)}"
        )
    return clean_logits


def _hooks_from_reference(heads: list[Head], method: str, ref_z: dict[int, Tensor], seed: int):
    layers = sorted({layer for layer, _ in heads})
    hooks = []
    for layer in layers:
        idx = [h for (lay, h) in heads if lay == layer]

        def hook(z, hook, layer=layer, idx=idx):  # z: (B, T, H, d_head)
            z = z.clone()
            if method == "zero":
                z[:, :, idx] = 0.0
            elif method == "mean":
                z[:, :, idx] = ref_z[layer][:, : z.shape[1], idx].mean(0).to(z.dtype)
            else:
                g = torch.Generator().manual_seed(seed * 1000 + layer)
                rows = torch.randint(0, ref_z[layer].shape[0], (z.shape[0],), generator=g)
                z[:, :, idx] = ref_z[layer][rows.to(ref_z[layer].device), : z.shape[1]][:, :, idx].to(z.dtype)
            return z

        hooks.append((hook_name("z", layer), hook))
    return hooks


def task_metrics(logits: Float[Tensor, "batch seq vocab"], targets: Int[Tensor, " batch"]) -> tuple[float, float]:
    """(accuracy, mean cross-entropy in nats) at the last position over rows with ``targets >= 0``.

    Returns (nan, nan) if no row has a target.
    """
    last = logits[:, -1].float()  # (B, V)
    keep = targets >= 0
    if not bool(keep.any()):
        return float("nan"), float("nan")
    acc = (last[keep].argmax(-1) == targets[keep]).float().mean().item()
    loss = F.cross_entropy(last[keep], targets[keep]).item()
    return acc, loss


def _kl(clean_logits: Tensor, logits: Tensor, positions: str) -> float:
    if positions == "last":
        clean_logits, logits = clean_logits[:, -1:], logits[:, -1:]
    lp = clean_logits.float().log_softmax(-1)
    lq = logits.float().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1).mean().item()


@dataclass
class AblationResult:
    """Effect of ablating ``heads`` together: accuracy/loss with and without, and KL (nats)."""

    heads: list[Head]
    method: str
    accuracy: float
    loss: float
    base_accuracy: float
    base_loss: float
    kl: float

    @property
    def accuracy_drop(self) -> float:
        """``base_accuracy - accuracy`` (positive = the heads were needed)."""
        return self.base_accuracy - self.accuracy

    def to_dict(self) -> dict:
        d = asdict(self)
        d["heads"] = [head_name(*h) for h in self.heads]
        return d


def ablate(
    model,
    tokens: Int[Tensor, "batch seq"],
    heads,
    *,
    targets: Int[Tensor, " batch"] | None = None,
    method: str = "mean",
    reference: Int[Tensor, "ref seq"] | None = None,
    seed: int = 0,
    positions: str = "last",
    cache=None,
    clean_logits: Float[Tensor, "batch seq d_vocab_out"] | None = None,
) -> AblationResult:
    """Ablate ``heads`` together on ``tokens``; accuracy/loss need ``targets`` (else nan).

    ``reference`` defaults to ``tokens``. ``positions``: where KL is averaged, ``"last"`` or ``"all"``.
    ``cache`` / ``clean_logits``: the clean run of ``tokens`` already made
    (:func:`anchor_interp.scores.cache.clean_run`): its ``hook_z`` is the mean / resample reference when
    ``reference`` is None, its logits the unablated baseline; same numbers as without them.
    Raises ValueError on bad tokens, heads, method, positions, cache or clean_logits.
    """
    check_tokens(model, tokens)
    if positions not in ("last", "all"):
        raise ValueError(f"positions: must be 'last' or 'all', got {positions!r}")
    heads = _check_heads(model, heads)
    if method in ABLATION_METHODS and _streams(tokens, reference):
        [(acc, loss, kl)], (base_acc, base_loss) = _streamed(model, tokens, [heads], targets=targets, method=method,
                                                           reference=reference, seed=seed, positions=positions,
                                                           clean_logits=clean_logits)
        return AblationResult(heads, method, acc, loss, base_acc, base_loss, kl)
    ref = tokens if reference is None else reference
    hooks = ablation_hooks(model, heads, method, ref, seed, cache=cache if reference is None else None)
    clean = _clean_logits(model, tokens, clean_logits)
    with torch.no_grad():
        ablated = model.run_with_hooks(tokens, fwd_hooks=hooks)
    base_acc = base_loss = acc = loss = float("nan")
    if targets is not None:
        base_acc, base_loss = task_metrics(clean, targets)
        acc, loss = task_metrics(ablated, targets)
    return AblationResult(heads, method, acc, loss, base_acc, base_loss, _kl(clean, ablated, positions))


def per_head_ablation(
    model,
    tokens: Int[Tensor, "batch seq"],
    *,
    targets: Int[Tensor, " batch"] | None = None,
    method: str = "mean",
    reference: Int[Tensor, "ref seq"] | None = None,
    seed: int = 0,
    positions: str = "last",
    cache=None,
    clean_logits: Float[Tensor, "batch seq d_vocab_out"] | None = None,
) -> dict[str, Tensor]:
    """Ablate each head alone. Returns ``[layer, head]`` tensors ``kl`` (nats), ``accuracy``, ``loss``
    (nan without ``targets``) and the scalars ``base_accuracy``, ``base_loss`` (0-d tensors).

    ``cache`` / ``clean_logits`` as in :func:`ablate`."""
    check_tokens(model, tokens)
    if positions not in ("last", "all"):
        raise ValueError(f"positions: must be 'last' or 'all', got {positions!r}")
    if method not in ABLATION_METHODS:
        raise ValueError(f"method: unknown ablation method {method!r}; use one of {ABLATION_METHODS}")
    cfg = model.cfg
    kl = torch.zeros(cfg.n_layers, cfg.n_heads)
    acc = torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
    loss = acc.clone()
    base_acc = base_loss = float("nan")
    if _streams(tokens, reference):
        every = [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
        per_head, (base_acc, base_loss) = _streamed(model, tokens, [[h] for h in every], targets=targets,
                                                     method=method, reference=reference, seed=seed,
                                                     positions=positions, clean_logits=clean_logits)
        for (layer, head), (a, lo, k) in zip(every, per_head, strict=True):
            kl[layer, head] = k
            if targets is not None:
                acc[layer, head], loss[layer, head] = a, lo
        return {"kl": kl, "accuracy": acc, "loss": loss,
                "base_accuracy": torch.tensor(base_acc), "base_loss": torch.tensor(base_loss)}
    # the same numbers as ablate() per head, with the clean run and the reference cache computed once
    ref_z = {}
    if method in ("mean", "resample"):
        ref_z = _reference_z(model, list(range(cfg.n_layers)), method, tokens if reference is None else reference,
                             cache if reference is None else None)
    clean = _clean_logits(model, tokens, clean_logits)  # (B, T, V)
    with torch.no_grad():
        if targets is not None:
            base_acc, base_loss = task_metrics(clean, targets)
        for layer in range(cfg.n_layers):
            for head in range(cfg.n_heads):
                hooks = _hooks_from_reference([(layer, head)], method, ref_z, seed)
                ablated = model.run_with_hooks(tokens, fwd_hooks=hooks)
                kl[layer, head] = _kl(clean, ablated, positions)
                if targets is not None:
                    acc[layer, head], loss[layer, head] = task_metrics(ablated, targets)
    return {"kl": kl, "accuracy": acc, "loss": loss,
            "base_accuracy": torch.tensor(base_acc), "base_loss": torch.tensor(base_loss)}


def _streams(tokens: Tensor, reference: Tensor | None) -> bool:
    """True when ``tokens`` (or ``reference``) has more rows than one chunk: the streamed path."""
    rows = max(tokens.shape[0], 0 if reference is None else reference.shape[0])
    return rows > _cache.CHUNK_ROWS


@torch.no_grad()
def _mean_z(model, reference: Tensor, layers: list[int]) -> dict[int, Tensor]:
    """Each layer's ``hook_z`` averaged over the rows of ``reference``, summed chunk by chunk: (1, T, H, d_head)."""
    names = [hook_name("z", layer) for layer in layers]
    sums: dict[int, Tensor] = {}
    for sl in row_chunks(reference.shape[0], desc="mean activations"):
        _, cache = model.run_with_cache(reference[sl], names_filter=lambda name: name in names)
        for layer in layers:
            z = cache[hook_name("z", layer)].double().sum(0, keepdim=True)  # (1, T, H, d_head)
            sums[layer] = z if layer not in sums else sums[layer] + z
    return {layer: (v / reference.shape[0]).float() for layer, v in sums.items()}


def _metric_sums(logits: Tensor, targets: Tensor) -> tuple[float, float, int]:
    """(correct rows, summed cross-entropy in nats, scored rows) at the last position, rows with a target."""
    keep = targets >= 0
    last = logits[:, -1].float()[keep]  # (B', V)
    if not bool(keep.any()):
        return 0.0, 0.0, 0
    return (float((last.argmax(-1) == targets[keep]).sum()),
            float(F.cross_entropy(last, targets[keep], reduction="sum")), int(keep.sum()))


@torch.no_grad()
def _streamed(model, tokens, head_sets, *, targets, method, reference, seed, positions, clean_logits):
    """``[(accuracy, loss, kl) per head set], (base accuracy, base loss)``, streamed over row chunks (the
    module docstring); accuracy/loss nan without ``targets`` or scored rows."""
    check_tokens(model, tokens)
    layers = list(range(model.cfg.n_layers))
    mean_z = _mean_z(model, tokens if reference is None else reference, layers) if method == "mean" else {}
    n = tokens.shape[0]
    if clean_logits is not None:
        clean_logits = _clean_logits(model, tokens, clean_logits)  # checked once: a run of all of tokens
    sums = [[0.0, 0.0, 0.0] for _ in head_sets]  # (hits, summed CE, summed KL) per head set
    base, scored = [0.0, 0.0], 0
    for sl in row_chunks(n, desc=f"ablation ({len(head_sets)} head sets)"):
        tok = tokens[sl]
        clean = model(tok) if clean_logits is None else clean_logits[sl]
        ref_z = _reference_z(model, layers, method, tok) if method == "resample" else mean_z
        if targets is not None:
            hits, ce, rows = _metric_sums(clean, targets[sl])
            base, scored = [base[0] + hits, base[1] + ce], scored + rows
        for acc, heads in zip(sums, head_sets, strict=True):
            ablated = model.run_with_hooks(tok, fwd_hooks=_hooks_from_reference(_check_heads(model, heads), method,
                                                                                ref_z, seed))
            acc[2] += _kl(clean, ablated, positions) * tok.shape[0]
            if targets is not None:
                hits, ce, _ = _metric_sums(ablated, targets[sl])
                acc[0], acc[1] = acc[0] + hits, acc[1] + ce
    nan = float("nan")
    out = [(h / scored if scored else nan, ce / scored if scored else nan, kl / n) for h, ce, kl in sums]
    return out, ((base[0] / scored, base[1] / scored) if scored else (nan, nan))


MAX_CIRCUIT_ABLATED_ACCURACY = 0.1  # ablating the circuit's heads brings held-out accuracy to <= 0.1
MIN_KEPT_FRACTION = 0.95  # ... and ablating every other head keeps >= 95% of it


@dataclass
class CircuitCheck:
    """Ablate the circuit's heads (accuracy should collapse) and, separately, all other heads (it should stay).

    ``kept_fraction = accuracy_without_rest / base_accuracy``. ``passes``: circuit-ablated accuracy
    <= ``max_circuit_ablated_accuracy`` and kept fraction >= ``min_kept_fraction``. Accuracies in [0, 1],
    losses in nats, KL (nats) of the ablated vs the clean output.
    """

    heads: list[Head]
    method: str
    base_accuracy: float
    accuracy_without_circuit: float
    accuracy_without_rest: float
    kept_fraction: float
    max_circuit_ablated_accuracy: float
    min_kept_fraction: float
    rest: list[Head] = field(default_factory=list)
    base_loss: float = float("nan")
    loss_without_circuit: float = float("nan")
    loss_without_rest: float = float("nan")
    kl_without_circuit: float = float("nan")
    kl_without_rest: float = float("nan")

    @property
    def circuit_passes(self) -> bool:
        return self.accuracy_without_circuit <= self.max_circuit_ablated_accuracy

    @property
    def rest_passes(self) -> bool:
        return bool(self.kept_fraction >= self.min_kept_fraction)

    @property
    def passes(self) -> bool:
        return self.circuit_passes and self.rest_passes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["heads"] = [head_name(*h) for h in self.heads]
        d["rest"] = [head_name(*h) for h in self.rest]
        d["passes"] = self.passes
        return d


def circuit_check(
    model,
    tokens: Int[Tensor, "batch seq"],
    targets: Int[Tensor, " batch"],
    heads,
    *,
    method: str = "mean",
    reference: Int[Tensor, "ref seq"] | None = None,
    seed: int = 0,
    max_circuit_ablated_accuracy: float = MAX_CIRCUIT_ABLATED_ACCURACY,
    min_kept_fraction: float = MIN_KEPT_FRACTION,
    cache=None,
    clean_logits: Float[Tensor, "batch seq d_vocab_out"] | None = None,
) -> CircuitCheck:
    """Run both circuit checks on held-out ``tokens``/``targets`` (see :class:`CircuitCheck`).

    ``cache`` / ``clean_logits`` as in :func:`ablate`. Raises ValueError on bad inputs or if ``targets``
    has no usable row.
    """
    heads = _check_heads(model, heads)
    if targets is None or not bool((targets >= 0).any()):
        raise ValueError("targets: circuit_check needs held-out targets with at least one row >= 0")
    every = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
    rest = [h for h in every if h not in heads]
    clean = dict(method=method, reference=reference, seed=seed, cache=cache, clean_logits=clean_logits)
    without_circuit = ablate(model, tokens, heads, targets=targets, **clean)
    without_rest = ablate(model, tokens, rest, targets=targets, **clean)
    base = without_circuit.base_accuracy
    kept = without_rest.accuracy / base if base > 0 else float("nan")
    return CircuitCheck(heads, method, base, without_circuit.accuracy, without_rest.accuracy, kept,
                        max_circuit_ablated_accuracy, min_kept_fraction, rest, without_circuit.base_loss,
                        without_circuit.loss, without_rest.loss, without_circuit.kl, without_rest.kl)
