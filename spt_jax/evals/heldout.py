"""Held-out evaluation: loss, standard error and bits per byte per named set; multiple-choice accuracy."""

import math

import jax
import numpy as np

from spt_jax.model import sharding

MCQA_KEYS = ('accuracy', 'accuracy_stderr', 'accuracy_per_char', 'accuracy_per_token')


class Evaluator:
  """Loss, its standard error over sequences and bits per byte on each named held-out set; MCQA accuracy."""

  def __init__(self, c, trainer, data):
    self.trainer, self.bytes_per_token = trainer, data.bytes_per_token
    self.model_cfg, self.tokenizer, self.seq_len, self.seed = c.model, data.tokenizer, c.data.seq_len, c.seed
    self.mcqa_tasks, self.mcqa_max_examples = tuple(c.mcqa_tasks), c.mcqa_max_examples
    self.cache_dir = c.data.cache_dir
    divisor = sharding.batch_divisor(trainer.mesh)
    rng = np.random.default_rng(c.seed)
    self.sets = {}
    for name, rows in sorted(data.eval_sets.items()):
      if len(rows) > c.eval_sequences:  # A fixed, seeded sample.
        rows = rows[np.sort(rng.choice(len(rows), c.eval_sequences, replace=False))]
      self.sets[name] = np.asarray(rows, np.int32)
    longest = max((len(rows) for rows in self.sets.values()), default=1)
    batch = min(c.eval_batch_size or c.batch_size, longest)
    self.batch_size = max(divisor, -(-batch // divisor) * divisor)

  def _device(self, rows):
    return jax.make_array_from_callback(rows.shape, self.trainer.batch_sharding, lambda index: rows[index])

  def __call__(self, params, names=None, mcqa: bool = True) -> dict:
    """Results of the named sets (default: all) and, with mcqa, of the multiple-choice tasks."""
    results, pending = {}, {}
    chosen = {name: rows for name, rows in self.sets.items() if names is None or name in names}
    for name, rows in chosen.items():  # Dispatch everything, then read: the device never waits on the host.
      outputs = []
      for start in range(0, len(rows), self.batch_size):
        chunk = rows[start : start + self.batch_size]
        padded = np.concatenate([chunk, np.repeat(chunk[:1], self.batch_size - len(chunk), 0)])
        outputs.append((len(chunk), self.trainer.eval_step(params, self._device(padded))))
      pending[name] = outputs
    for name, outputs in pending.items():
      losses = np.concatenate([np.asarray(out['sequence_loss'])[:n] for n, out in outputs]).astype(np.float64)
      loss = float(losses.mean())
      stderr = float(losses.std(ddof=1) / math.sqrt(len(losses))) if len(losses) > 1 else float('nan')
      bytes_per_token = self.bytes_per_token.get(name) or float('nan')
      results[name] = {'loss': loss, 'loss_stderr': stderr, 'bpb': loss / math.log(2) / bytes_per_token}
    for task in self.mcqa_tasks if mcqa else ():
      from spt_jax.evals import mcqa  # noqa: PLC0415  the parameter `mcqa` (a bool) holds the module's name here

      scores = mcqa.evaluate(
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
