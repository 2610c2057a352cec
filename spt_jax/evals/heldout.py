"""Held-out evaluation: loss, standard error and bits per byte per named set; multiple-choice accuracy."""

import collections
import math

import jax
import numpy as np

from spt_jax.evals import mcqa as mcqa_lib
from spt_jax.model import sharding

MCQA_KEYS = ('accuracy', 'accuracy_stderr', 'accuracy_per_char', 'accuracy_per_token')


class Evaluator:
  """Loss, its standard error over sequences and bits per byte on each named held-out set; MCQA accuracy."""

  def __init__(self, c, trainer, data):
    self.trainer, self.bytes_per_token = trainer, data.bytes_per_token
    self.model_cfg, self.tokenizer, self.seq_len = c.model, data.tokenizer, c.data.seq_len
    self.seed = c.data.heldout_seed  # The eval samples are the same for every run seed.
    self.mcqa_tasks, self.mcqa_max_examples = tuple(c.mcqa_tasks), c.mcqa_max_examples
    self.cache_dir = c.data.cache_dir
    divisor = sharding.batch_divisor(trainer.mesh)
    rng = np.random.default_rng(c.data.heldout_seed)
    self.sets = {}
    for name, rows in sorted(data.eval_sets.items()):
      if name == 'domain_valid' and c.stage != 'finetune':
        continue  # The validation split serves finetuning's stopping and selection only.
      if len(rows) > c.eval_sequences:  # A fixed, seeded sample.
        rows = rows[np.sort(rng.choice(len(rows), c.eval_sequences, replace=False))]
      self.sets[name] = np.asarray(rows, np.int32)
    longest = max((len(rows) for rows in self.sets.values()), default=1)
    batch = min(c.eval_batch_size or c.batch_size, longest)
    self.batch_size = max(divisor, -(-batch // divisor) * divisor)

  def chunks(self, names=None) -> dict[str, list[tuple[int, np.ndarray]]]:
    """The named sets (default: all) as batches of batch_size rows: (rows used, rows padded with the first)."""
    chunks = {}
    for name, rows in self.sets.items():
      if names is None or name in names:
        chunks[name] = []
        for start in range(0, len(rows), self.batch_size):
          chunk = rows[start : start + self.batch_size]
          chunks[name].append(
            (len(chunk), np.concatenate([chunk, np.repeat(chunk[:1], self.batch_size - len(chunk), 0)]))
          )
    return chunks

  def result(self, name: str, sequence_losses: np.ndarray) -> dict:
    """Loss, its standard error and bits per byte of a set from its sequences' mean losses."""
    losses = np.asarray(sequence_losses, np.float64)
    loss = float(losses.mean())
    stderr = float(losses.std(ddof=1) / math.sqrt(len(losses))) if len(losses) > 1 else float('nan')
    bytes_per_token = self.bytes_per_token.get(name) or float('nan')
    return {'loss': loss, 'loss_stderr': stderr, 'bpb': loss / math.log(2) / bytes_per_token}

  def heldout(self, params, names=None) -> dict:
    """Results of the named held-out sets (default: all)."""
    pending = {  # Dispatch everything, then read: the device never waits on the host.
      name: [(n, self.trainer.eval_step(params, _device(rows, self.trainer.batch_sharding))) for n, rows in chunks]
      for name, chunks in self.chunks(names).items()
    }
    return {
      name: self.result(name, np.concatenate([np.asarray(out['sequence_loss'])[:n] for n, out in outputs]))
      for name, outputs in pending.items()
    }

  def mcqa(self, params) -> dict:
    """Results of the multiple-choice tasks."""
    results = {}
    for task in self.mcqa_tasks:
      scores = mcqa_lib.evaluate(
        params,
        self.model_cfg,
        self.tokenizer,
        task,
        self.mcqa_max_examples,
        max_len=self.seq_len,
        cache_dir=self.cache_dir,
        seed=self.seed,
      )
      results[f'mcqa/{task}'] = {key: scores[key] for key in MCQA_KEYS}
    return results


def _device(rows: np.ndarray, batch_sharding) -> jax.Array:
  """Host rows as a device array of the given sharding (each device gets its slice)."""
  return jax.make_array_from_callback(rows.shape, batch_sharding, lambda index: rows[index])


def heldout_stacked(evaluators: list, trainer, stacked_params, names: list) -> list[dict | None]:
  """Held-out results of the runs of a stack, each run's batches side by side in one dispatch (a vmapped eval step).

  evaluators[k] evaluates the run in slot k of stacked_params on the sets names[k] (None: all); a slot whose
  evaluator is None is idle (zeros in, outputs dropped). The evaluators share one batch size. A run's results equal
  its Evaluator's alone to float tolerance (XLA may order a batched matmul's sums otherwise) and, at the same stack
  width, bit for bit whatever the other slots hold.
  """
  chunks = [None if e is None else e.chunks(names[k]) for k, e in enumerate(evaluators)]
  shape = next(rows.shape for c in chunks if c for parts in c.values() for _, rows in parts)
  idle = np.zeros(shape, np.int32)
  pending = []  # Dispatch everything, then read.
  for name in sorted({name for c in chunks if c for name in c}):
    for j in range(max(len(c.get(name, ())) for c in chunks if c)):
      rows = np.stack([c[name][j][1] if c and j < len(c.get(name, ())) else idle for c in chunks])
      pending.append(
        (name, j, trainer.stacked_eval_step(stacked_params, _device(rows, trainer.stacked_batch_sharding)))
      )
  losses = [collections.defaultdict(list) for _ in chunks]
  for name, j, outputs in pending:
    values = np.asarray(outputs['sequence_loss'])  # [runs, batch]
    for k, c in enumerate(chunks):
      if c and j < len(c.get(name, ())):
        losses[k][name].append(values[k, : c[name][j][0]])
  return [
    None if e is None else {name: e.result(name, np.concatenate(parts)) for name, parts in losses[k].items()}
    for k, e in enumerate(evaluators)
  ]


def scalars(results: dict) -> dict:
  """Flat metrics: eval/<set>/<key> (eval/mcqa/<task>/<key> for tasks), plus the train-test gap."""
  flat = {f'eval/{name}/{key}': value for name, r in results.items() for key, value in r.items()}
  if 'domain_test' in results and 'domain_train' in results:
    flat['eval/gap'] = results['domain_test']['loss'] - results['domain_train']['loss']
  return flat


def losses(results: dict) -> dict:
  """{set: loss} of the held-out sets."""
  return {name: r['loss'] for name, r in results.items() if 'loss' in r}


def accuracies(results: dict) -> dict:
  """{task: accuracy} of the multiple-choice tasks."""
  return {name[len('mcqa/') :]: r['accuracy'] for name, r in results.items() if name.startswith('mcqa/')}
