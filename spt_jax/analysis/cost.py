"""Compute of 'pretrain a small model with SPT' against 'finetune a larger general model' (Figure 3).

One count of a forward pass, used for training and inference alike (Kaplan et al. 2020; PaLM's MFU accounting):
  forward FLOPs/token at attended context c = 2·N + 4·n_layers·d_model·c
    2·N: every matmul parameter once (multiply + add); 4·n_layers·d_model·c: per layer, the query against c keys
    (QKᵀ, 2·d_model·c) and the weighted sum of c values (2·d_model·c).
  training  = 3 × forward at c = seq_len  = 6·N + 12·n_layers·d_model·seq_len  (backward ≈ 2 × forward; dense
              attention computes the causally masked half too, as the train step's MFU count does)
  inference = 1 × forward at c = context  = 2·N + 4·n_layers·d_model·context  (context: the average number of
              tokens each generated token attends to through the KV cache)
N counts every matmul parameter: the non-embedding weights plus the output projection V_pad·D (tied or not);
the embedding lookup costs no FLOPs. The larger model's own pretraining is treated as already paid.
"""

import dataclasses
import math

from spt_jax.model import flops
from spt_jax.model.flops import FORWARD_FORMULA, INFERENCE_FORMULA, TRAIN_FORMULA


@dataclasses.dataclass
class ModelSize:
  """A model's matmul parameter count, and its shape for the attention term (0 when only N is known)."""

  name: str
  matmul_params: float
  n_layers: int = 0
  d_model: int = 0

  def forward_flops_per_token(self, context: int) -> float:
    """FORWARD_FORMULA: one forward pass of a token that attends to `context` tokens."""
    return flops.forward_flops_per_token(self.matmul_params, self.n_layers, self.d_model, context)

  def train_flops_per_token(self, seq_len: int) -> float:
    """TRAIN_FORMULA: forward and backward (3 forwards), every query against the whole sequence."""
    return 3.0 * self.forward_flops_per_token(seq_len)

  def inference_flops_per_token(self, context: int) -> float:
    """INFERENCE_FORMULA: one forward pass at the average attended context."""
    return self.forward_flops_per_token(context)


def model_size(spec: str) -> ModelSize:
  """A model preset name (e.g. olmo-1b) or a parameter count (1.2e9, 1.2B, 300M)."""
  number = parse_count(spec)
  if number is not None:
    return ModelSize(spec, number)
  if spec not in flops.PRESETS:
    raise ValueError(f'unknown model preset {spec!r}; choose one of {sorted(flops.PRESETS)} or a parameter count')
  cfg = flops.PRESETS[spec]
  return ModelSize(spec, float(flops.matmul_params(cfg)), int(cfg['n_layers']), int(cfg['d_model']))


_SUFFIXES = {'k': 1e3, 'm': 1e6, 'b': 1e9, 'g': 1e9, 't': 1e12}


def parse_count(text) -> float | None:
  """'200e9', '200B', '1.5T', '70M' -> a float; None when it is not a number."""
  if isinstance(text, (int, float)):
    return float(text)
  text = str(text).strip().replace('_', '')
  scale = _SUFFIXES.get(text[-1:].lower()) if text else None
  try:
    return float(text[:-1]) * scale if scale else float(text)
  except ValueError:
    return None


def strategy_costs(
  small: ModelSize, large: ModelSize, pretrain_tokens: float, finetune_tokens: float, seq_len: int, context: int
) -> dict:
  """Fixed (training) and per-inference-token FLOPs of both strategies, and the break-even inference tokens."""
  spt_train = small.train_flops_per_token(seq_len) * (pretrain_tokens + finetune_tokens)
  ft_train = large.train_flops_per_token(seq_len) * finetune_tokens
  spt_serve, ft_serve = small.inference_flops_per_token(context), large.inference_flops_per_token(context)
  if spt_train <= ft_train:
    break_even, note = 0.0, 'the SPT model costs no more to train: it is cheaper from the first inference token'
  elif spt_serve >= ft_serve:
    break_even, note = math.inf, 'the small model is not cheaper to serve: SPT never breaks even on compute'
  else:
    break_even, note = (spt_train - ft_train) / (ft_serve - spt_serve), ''
  notes = [note] if note else []
  if not small.n_layers or not large.n_layers:
    notes.append('a model given as a parameter count has no attention term: pass a preset name to include it')
  return {
    'formulas': [
      FORWARD_FORMULA,
      TRAIN_FORMULA,
      INFERENCE_FORMULA,
      'SPT total = train_small·(D_PT + D_FT) + serve_small·I; FT-large total = train_large·D_FT + '
      'serve_large·I (its pretraining already paid)',
    ],
    'small': dataclasses.asdict(small),
    'large': dataclasses.asdict(large),
    'pretrain_tokens': pretrain_tokens,
    'finetune_tokens': finetune_tokens,
    'seq_len': seq_len,
    'context': context,
    'spt': {'training_flops': spt_train, 'inference_flops_per_token': spt_serve},
    'finetune_large': {'training_flops': ft_train, 'inference_flops_per_token': ft_serve},
    'break_even_inference_tokens': break_even,
    'notes': notes,
  }


def total_flops(costs: dict, strategy: str, inference_tokens):
  """Training plus serving FLOPs of one strategy ('spt' or 'finetune_large') after inference_tokens."""
  part = costs[strategy]
  return part['training_flops'] + part['inference_flops_per_token'] * inference_tokens


def format_costs(costs: dict) -> str:
  lines = [f'- {f}' for f in costs['formulas']]
  for key, label, size in (
    ('spt', f'SPT {costs["small"]["name"]}', costs['small']),
    ('finetune_large', f'finetune {costs["large"]["name"]}', costs['large']),
  ):
    part = costs[key]
    lines.append(
      f'- {label} (N={size["matmul_params"]:.4g}): training {part["training_flops"]:.3e} FLOPs, '
      f'serving {part["inference_flops_per_token"]:.3e} FLOPs/token'
    )
  lines.append(f'- break-even after {costs["break_even_inference_tokens"]:.3e} inference tokens')
  lines += [f'- {note}' for note in costs['notes']]
  return '\n'.join(lines)
