"""Plans specialized pretraining from finished runs: `python -m spt_jax.plan <subcommand>`.

Subcommands: gains, fit, forecast, recommend, cost, similarity.

  python -m spt_jax.plan gains --npt=W0 --spt=W1,W2
  python -m spt_jax.plan forecast --fit=fit.json --delta=0.02,0.05 --tokens=1e9,200B

Flags are absl flags; lists are comma-separated. Every δ is a fraction (0.02 for 2%); token counts accept 200e9,
200B, 1.5T, 70M. With --out DIR a subcommand also writes its PNG plots, a JSON result and a markdown report
embedding the plots. Each subcommand is also a function of this module (experiments/ call them directly).
"""

import json
import math
import os
import sys
import warnings

import numpy as np
from absl import flags

from spt_jax import cli
from spt_jax.storage import files, layout, markdown


def _delta(text: str) -> float:
  value = float(text.rstrip('%')) / (100.0 if text.endswith('%') else 1.0)
  if value > 1:
    raise ValueError(f'δ={text} > 1: δ is a fraction (0.02 for 2%); write 0.02 or 2%')
  if value < 0:
    raise ValueError(f'δ={text} is negative')
  return value


def _tokens(text: str) -> float:
  from spt_jax.analysis import cost  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  value = cost.parse_count(text)
  if value is None or value <= 0 or not math.isfinite(value):
    raise ValueError(f'{text!r} is not a token count; write e.g. 200e9 or 200B')
  return value


def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


def _dump(value, **kwargs) -> str:
  """Strict JSON: NaN and infinities (an undefined gain, a diverged fit) become null."""
  return files.dumps(value, default=_json_default, **kwargs)


def _write(out: str, name: str, value) -> str:
  path = os.path.join(out, name)
  files.write_text(path, value if isinstance(value, str) else _dump(value, indent=2))
  return path


def _report(out: str, title: str, sections: list) -> None:
  _write(out, layout.REPORT, f'# {title}\n\n' + '\n\n'.join(sections) + '\n')


def _publish(out: str, stem: str, value, title: str, text: str, plot, caption: str) -> None:
  """With --out: out/<stem>.json, the plot drawn into out/<stem>.png and a report of the text and the plot."""
  if not out:
    return
  os.makedirs(out, exist_ok=True)
  _write(out, f'{stem}.json', value)
  plot(os.path.join(out, f'{stem}.png'))
  _report(out, title, [text, f'![{caption}]({stem}.png)'])


def _warnings_section(notes: list) -> str:
  return '## Warnings\n' + ('\n'.join(f'- {n}' for n in notes) if notes else 'none')


def gains(npt: str, spt: list[str], npt_large: str | None = None, out: str = '', format: str = 'text') -> None:
  """Relative gain, compute multiplier, gap closed and forgetting of SPT pipelines against an NPT one."""
  from spt_jax.analysis import gains as gains_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.analysis import plots, runs  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  result = gains_lib.gains(runs.read(npt), [runs.read(w) for w in spt], runs.read(npt_large) if npt_large else None)
  table = gains_lib.format_table(result)
  print(_dump(result) if format == 'json' else table)
  _publish(
    out,
    'gains',
    result,
    'Headline metrics',
    table,
    lambda path: plots.gains_plot(result, path),
    'post-FT loss by budget',
  )


def fit(
  runs: list[str] | None = None,
  csv: str | None = None,
  bootstrap: int = 100,
  huber: float = 1e-2,
  seed: int = 0,
  out: str = '.',
  loss: str = 'mse',
  max_delta: float | None = None,
  max_tokens: float | None = None,
):
  """Fits the overfitting scaling laws (1)-(9) and the finetuning delta (7); writes out/fit.json; a JointFit."""
  from spt_jax.analysis import law_shape, plots, scaling_fit  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.analysis import runs as runs_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  if bool(runs) == bool(csv):
    raise ValueError('give either --runs W1 W2 ... or --csv FILE')
  data = runs_lib.read_csv(csv) if csv else runs_lib.scaling_data([runs_lib.read(w) for w in runs])
  fit = scaling_fit.fit_joint(
    data, loss=loss, huber=huber, bootstrap=bootstrap, seed=seed, max_delta=max_delta, max_tokens=max_tokens
  )
  lines = markdown.table(
    ['parameter', 'value', '95% CI', 'meaning'],
    [
      [name, f'{p.value:.4g}', f'[{p.ci95[0]:.4g}, {p.ci95[1]:.4g}]' if p.ci95 else '—', p.meaning]
      for name, p in fit.params.items()
    ],
  )
  residuals = fit.residuals
  lines.append(
    f'\nResiduals (log loss, RMS): train {residuals.rms_log_train:.4f}, test '
    f'{residuals.rms_log_test:.4f}, max |r| {residuals.max_abs_log:.4f} over '
    f'{residuals.n_points} points; tokens unit {fit.law.tokens_unit:g}; δ a fraction inside formulas.'
  )
  table = '\n'.join(lines)
  print(table)
  for note in fit.warnings:
    print(f'warning: {note}', file=sys.stderr)
  os.makedirs(out, exist_ok=True)
  path = _write(out, layout.FIT, fit.to_json())
  plots.fit_plot(data, fit.law, os.path.join(out, 'fit.png'))
  sections = [table, '![data vs fit](fit.png)', law_shape.section(fit.shape), _warnings_section(fit.warnings)]
  _report(out, 'Overfitting scaling-law fit', sections)
  print(f'wrote {path}')
  return fit


def _load_law(path: str):
  from spt_jax.analysis import scaling  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  if not os.path.exists(path):
    raise ValueError(f'fit file {path} does not exist; make one with `python -m spt_jax.plan fit --out DIR`')
  with open(path) as f:
    return scaling.law_from_fit(json.load(f))


def forecast(fit: str, delta: list[float], tokens: list[float], out: str = '') -> None:
  """Predicted losses at each (δ, T) and where each δ starts to overfit."""
  from spt_jax.analysis import plots, scaling  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  law = _load_law(fit)
  lines = []
  for one_delta in delta:
    for budget in tokens:
      lines.append(scaling.forecast(law, one_delta, budget))
    onset, why = scaling.onset_with_reason(law, one_delta)
    lines.append({'delta': one_delta, 'overfitting_onset_tokens': onset, 'note': why})
  print('\n'.join(_dump(line) for line in lines))
  if out:
    os.makedirs(out, exist_ok=True)
    _write(out, 'forecast.jsonl', '\n'.join(_dump(line) for line in lines) + '\n')
    low = min(min(tokens), law.token_range[0] if law.token_range else min(tokens))
    plots.forecast_plot(law, delta, (low, max(tokens) * 1.5), os.path.join(out, 'forecast.png'))
    _report(
      out, 'Forecast', ['```\n' + '\n'.join(_dump(line) for line in lines) + '\n```', '![forecast](forecast.png)']
    )


def recommend(
  fit: str | None = None,
  tokens: list[float] | None = None,
  objective: str = 'post_ft',
  delta_max: float | None = None,
  candidates: list[float] | None = None,
  crossover: list[float] | None = None,
  pilots: list[str] | None = None,
  out: str = '',
):
  """The best δ for each budget, and where one δ overtakes another: a scaling.Recommendation from a fit; or,
  given pilot pipelines instead, the pilot δ with the lowest post-finetuning loss: a pilots.PilotPick."""
  if pilots:
    return _recommend_from_pilots(pilots, out)
  from spt_jax.analysis import plots, scaling  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  law = _load_law(fit)
  if objective == 'post_ft' and not law.finetune_delta:
    raise ValueError('the fit has no finetuning data (eq. 7); use --objective test, or refit with pipelines')
  result = scaling.recommend(law, tokens, objective, delta_max, candidates, crossover)
  lines = result.lines()
  print('\n'.join(_dump(line) for line in lines))
  if out:
    os.makedirs(out, exist_ok=True)
    _write(out, layout.RECOMMEND, '\n'.join(_dump(line) for line in lines) + '\n')
    budgets = np.geomspace(min(tokens), max(tokens), 25) if len(tokens) > 1 else tokens
    best = [scaling.best_delta(law, t, objective, delta_max)[0] for t in budgets]
    candidate_best = (
      [scaling.best_delta(law, t, objective, candidates=candidates)[0] for t in budgets] if candidates else None
    )
    plots.optimal_delta_plot(budgets, best, os.path.join(out, 'optimal_delta.png'), candidates, candidate_best)
    _report(
      out,
      'Recommended δ',
      ['```\n' + '\n'.join(_dump(line) for line in lines) + '\n```', '![optimal δ](optimal_delta.png)'],
    )
  return result


def _recommend_from_pilots(workdirs: list[str], out: str):
  from spt_jax.analysis import pilots  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  result = pilots.pick(pilots.read(workdirs))
  table = pilots.format_table(result)
  print(table)
  if out:
    os.makedirs(out, exist_ok=True)
    _write(out, layout.PILOTS, result.to_json())
    _report(out, 'Recommended δ from pilots', [table])
  return result


def cost(
  small: str = 'olmo-1b',
  large: str = 'olmo-3b',
  pretrain_tokens: float = 200e9,
  finetune_tokens: float = 1.5e9,
  seq_len: int = 2048,
  context: int = 2048,
  max_inference_tokens: float | None = None,
  out: str = '',
  format: str = 'text',
) -> None:
  """Compute of SPT on a small model against finetuning a larger one."""
  from spt_jax.analysis import cost as cost_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.analysis import plots  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  costs = cost_lib.strategy_costs(
    cost_lib.model_size(small), cost_lib.model_size(large), pretrain_tokens, finetune_tokens, seq_len, context
  )
  text = cost_lib.format_costs(costs)
  print(_dump(costs) if format == 'json' else text)
  _publish(
    out,
    'cost',
    costs,
    'Cost of the strategies',
    text,
    lambda path: plots.cost_plot(costs, path, max_inference_tokens),
    'total compute',
  )


def similarity(
  corpora: list[str],
  tokenizer: str = '',
  max_tokens: float = 1.5e6,
  embeddings: bool = False,
  segments: int = 200,
  seed: int = 0,
  out: str = '',
  format: str = 'text',
) -> None:
  """N-gram JSD (and C2ST, MAUVE) of corpora against the first one."""
  from spt_jax.analysis import plots  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.analysis import similarity as similarity_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  if len(corpora) < 2:
    raise ValueError('give a reference corpus and at least one other (e.g. builtin:english builtin:coq)')
  if embeddings:
    missing = similarity_lib.embedding_extra_missing()
    if missing:
      raise ValueError(missing)
  needs_tokenizer = tokenizer or embeddings or any(not c.endswith('.npy') for c in corpora)
  tokenizer = similarity_lib.load_tokenizer(tokenizer) if needs_tokenizer else None
  corpora = [similarity_lib.load_corpus(c, tokenizer, int(max_tokens), seed) for c in corpora]
  rows = similarity_lib.compare(corpora[0], corpora[1:], embeddings, tokenizer, segments, seed)
  table = similarity_lib.format_table(rows)
  print(_dump(rows) if format == 'json' else table)
  _publish(
    out,
    'similarity',
    rows,
    'Distribution similarity',
    table,
    lambda path: plots.similarity_plot(rows, path),
    'similarity',
  )


# The flags of each subcommand (absl flags, defined on their own FlagValues at each call of main); lists are
# comma-separated (--spt=W1,W2 --delta=0.02,0.05 --tokens=1e9,200B). Unset flags keep the function's default.
COMMANDS = {
  'gains': ('npt', 'spt', 'npt_large', 'out', 'format'),
  'fit': ('runs', 'csv', 'bootstrap', 'loss', 'huber', 'max_delta', 'max_tokens', 'seed', 'out'),
  'forecast': ('fit', 'delta', 'tokens', 'out'),
  'recommend': ('fit', 'tokens', 'objective', 'delta_max', 'candidates', 'crossover', 'pilots', 'out'),
  'cost': (
    'small',
    'large',
    'pretrain_tokens',
    'finetune_tokens',
    'seq_len',
    'context',
    'max_inference_tokens',
    'out',
    'format',
  ),
  'similarity': ('tokenizer', 'max_tokens', 'embeddings', 'segments', 'seed', 'out', 'format'),
}
_REQUIRED = {'gains': ('npt', 'spt'), 'forecast': ('fit', 'delta', 'tokens')}
_INPUTS = ('npt', 'spt', 'npt_large', 'runs', 'csv', 'fit', 'tokenizer', 'pilots')  # Paths that must exist.


def _model(text: str) -> str:
  """A model preset name or parameter count, checked (cost.model_size's one-line error otherwise)."""
  from spt_jax.analysis import cost as cost_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  cost_lib.model_size(text)
  return text


def _flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  define = {'flag_values': fv}
  flags.DEFINE_string('npt', None, 'gains: pipeline workdir of naive pretraining (δ = 0)', **define)
  flags.DEFINE_list('spt', None, 'gains: pipeline workdirs of SPT runs', **define)
  flags.DEFINE_string('npt_large', None, 'gains: pipeline workdir of a larger NPT model (gap closed)', **define)
  flags.DEFINE_list('runs', None, 'fit: run or pipeline workdirs at several δ', **define)
  flags.DEFINE_string('csv', None, 'fit: delta,tokens,domain_train_loss,domain_test_loss[,post_ft_...]', **define)
  flags.DEFINE_integer('bootstrap', 100, 'fit: bootstrap resamples for 95% CIs (0: none)', lower_bound=0, **define)
  flags.DEFINE_float('huber', 1e-2, 'fit: Huber scale on log-loss residuals (--loss=huber)', **define)
  flags.DEFINE_enum(
    'loss', 'mse', ['mse', 'huber'], "fit: the paper's mean squared error, or a robust Huber loss", **define
  )
  cli.define('max_delta', None, 'fit: fit only runs with δ ≤ this (forecast the rest)', _delta, **define)
  flags.DEFINE_integer('seed', 0, 'fit, similarity: random seed', lower_bound=0, **define)
  flags.DEFINE_string('fit', None, 'forecast, recommend: fit.json written by `plan fit`', **define)
  flags.DEFINE_list('pilots', None, 'recommend: pilot pipeline workdirs, one per δ (instead of --fit)', **define)
  cli.define_list('delta', None, 'forecast: δ values (fractions, or percentages with %)', _delta, **define)
  cli.define_list('tokens', None, 'forecast, recommend: token budgets (200e9, 200B, 1.5T)', _tokens, **define)
  flags.DEFINE_enum('objective', 'post_ft', ['post_ft', 'test'], 'recommend: the loss minimised', **define)
  cli.define('delta_max', None, 'recommend: largest δ searched (default: the largest fitted)', _delta, **define)
  cli.define_list('candidates', None, 'recommend: also pick the best of these δ', _delta, **define)
  cli.define_list(
    'crossover', None, 'recommend: two δ, DELTA_A,DELTA_B: where one overtakes the other', _delta, **define
  )
  cli.define('small', 'olmo-1b', 'cost: model preset name or parameter count', _model, **define)
  cli.define('large', 'olmo-3b', 'cost: model preset name or parameter count', _model, **define)
  cli.define('pretrain_tokens', '200e9', 'cost: pretraining tokens of the small model', _tokens, **define)
  cli.define('finetune_tokens', '1.5e9', 'cost: finetuning tokens (both strategies)', _tokens, **define)
  flags.DEFINE_integer('seq_len', 2048, 'cost: training sequence length', lower_bound=1, **define)
  flags.DEFINE_integer('context', 2048, 'cost: average attended context at inference', lower_bound=1, **define)
  cli.define('max_inference_tokens', None, 'cost: right end of the plot', _tokens, **define)
  flags.DEFINE_string('tokenizer', '', "similarity: tokenizers JSON (default for built-in corpora: OLMo's)", **define)
  cli.define(
    'max_tokens',
    None,
    'similarity: tokens sampled per corpus (default 1.5e6); fit: fit only evaluations at ≤ this many tokens',
    _tokens,
    **define,
  )
  flags.DEFINE_bool('embeddings', False, 'similarity: also C2ST AUC and MAUVE (needs the similarity extra)', **define)
  flags.DEFINE_integer('segments', 200, 'similarity: 256-token segments embedded per corpus', lower_bound=1, **define)
  flags.DEFINE_string('out', None, 'folder for plots, JSON and a report (fit: default .)', **define)
  flags.DEFINE_enum('format', 'text', ['text', 'json'], 'gains, cost, similarity: what is printed', **define)
  flags.register_validator('huber', lambda scale: scale > 0, 'the Huber scale must be positive', flag_values=fv)
  flags.register_validator(
    'crossover', lambda deltas: deltas is None or len(deltas) == 2, 'give two δ: DELTA_A,DELTA_B', flag_values=fv
  )
  return fv


def _arguments(fv: flags.FlagValues, rest: list[str]) -> tuple[str, dict]:
  """(subcommand, its keyword arguments) from the parsed flags and positional arguments; UsageError if wrong."""
  if not rest or rest[0] not in COMMANDS:
    raise cli.UsageError(f'give a subcommand first: one of {", ".join(COMMANDS)} (python -m spt_jax.plan fit ...)')
  command, positional = rest[0], rest[1:]
  given = [name for name in fv if fv[name].present]
  stray = [name for name in given if name not in COMMANDS[command]]
  if stray:
    raise cli.UsageError(
      f'--{stray[0]} is not a flag of `plan {command}`; its flags: '
      f'{", ".join("--" + name for name in COMMANDS[command])}'
    )
  missing = [name for name in _REQUIRED.get(command, ()) if name not in given]
  if missing:
    raise cli.UsageError(f'`plan {command}` needs --{missing[0]}')
  if command == 'fit' and ('runs' in given) == ('csv' in given):
    raise cli.UsageError('`plan fit` needs either --runs W1,W2,... or --csv FILE')
  if command == 'recommend':
    fit_flags = ('fit', 'tokens', 'delta_max', 'candidates', 'crossover', 'objective')
    from_fit = [name for name in fit_flags if name in given]
    if 'pilots' in given and from_fit:
      raise cli.UsageError(f'--pilots picks among the pilots themselves: drop --{from_fit[0]} (it belongs to --fit)')
    if 'pilots' not in given and ('fit' not in given or 'tokens' not in given):
      raise cli.UsageError('`plan recommend` needs --fit FIT.json with --tokens, or --pilots W1,W2,W3')
  if positional and command != 'similarity':
    raise cli.UsageError(f'`plan {command}` takes no positional arguments (got {positional[0]!r})')
  if command == 'similarity' and len(positional) < 2:
    raise cli.UsageError(
      '`plan similarity` compares a reference corpus with at least one other: give two or more '
      '(e.g. builtin:english builtin:coq)'
    )
  for name in set(given) & set(_INPUTS):
    value = fv[name].value
    for path in [value] if isinstance(value, str) else value:
      if path and not os.path.exists(path):
        raise cli.UsageError(f'--{name}: {path} does not exist')
  arguments = {name: fv[name].value for name in given}
  if command == 'similarity':
    arguments['corpora'] = positional
  return command, arguments


def _show_warning(message, category, filename, lineno, file=None, line=None):
  print(f'warning: {message}', file=sys.stderr)


def _subcommand(fv: flags.FlagValues):
  """The main of one parse of fv: runs the subcommand its positional arguments name."""

  def run(argv: list[str]) -> None:
    warnings.showwarning = _show_warning
    command, arguments = _arguments(fv, argv[1:])
    functions = {
      'gains': gains,
      'fit': fit,
      'forecast': forecast,
      'recommend': recommend,
      'cost': cost,
      'similarity': similarity,
    }
    functions[command](**arguments)

  return run


def main(argv: list[str] | None = None) -> int:
  """`python -m spt_jax.plan SUBCOMMAND --flag=value ...`: the exit status of spt_jax/cli.py's convention."""
  fv = _flags()
  return cli.status(_subcommand(fv), argv=None if argv is None else ['plan', *argv], flag_values=fv)


if __name__ == '__main__':
  _FLAGS = _flags()
  cli.run(_subcommand(_FLAGS), flag_values=_FLAGS)
