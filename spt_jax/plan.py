"""Plans specialized pretraining from finished runs: `python -m spt_jax.plan <subcommand>`.

Subcommands: gains, fit, forecast, recommend, cost, similarity.

Every δ on the command line is a fraction (0.02 for 2%); token counts accept 200e9, 200B, 1.5T, 70M. With
--out DIR a subcommand also writes its PNG plots, a JSON result and a markdown report embedding the plots.
"""

import argparse
import json
import math
import os
import sys
import warnings

import numpy as np


def _delta(text: str) -> float:
  value = float(text.rstrip('%')) / (100.0 if text.endswith('%') else 1.0)
  if value > 1:
    raise argparse.ArgumentTypeError(f'δ={text} > 1: δ is a fraction (0.02 for 2%); write 0.02 or 2%')
  if value < 0:
    raise argparse.ArgumentTypeError(f'δ={text} is negative')
  return value


def _tokens(text: str) -> float:
  from spt_jax.analysis import cost  # pylint: disable=g-import-not-at-top
  value = cost.parse_count(text)
  if value is None or value <= 0 or not math.isfinite(value):
    raise argparse.ArgumentTypeError(f'{text!r} is not a token count; write e.g. 200e9 or 200B')
  return value


def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


def _dump(value) -> str:
  return json.dumps(value, default=_json_default, allow_nan=True)


def _write(out: str, name: str, value) -> str:
  path = os.path.join(out, name)
  with open(path, 'w') as f:
    f.write(value if isinstance(value, str) else json.dumps(value, indent=2, default=_json_default))
  return path


def _report(out: str, title: str, sections: list) -> None:
  _write(out, 'report.md', f'# {title}\n\n' + '\n\n'.join(sections) + '\n')


def _warnings_section(notes: list) -> str:
  return '## Warnings\n' + ('\n'.join(f'- {n}' for n in notes) if notes else 'none')


def cmd_gains(args) -> None:
  from spt_jax.analysis import gains, plots, runs  # pylint: disable=g-import-not-at-top
  result = gains.gains(runs.read(args.npt), [runs.read(w) for w in args.spt],
                       runs.read(args.npt_large) if args.npt_large else None)
  table = gains.format_table(result)
  print(_dump(result) if args.format == 'json' else table)
  if args.out:
    _write(args.out, 'gains.json', result)
    plots.gains_plot(result, os.path.join(args.out, 'gains.png'))
    _report(args.out, 'Headline metrics', [table, '![post-FT loss by budget](gains.png)'])


def cmd_fit(args) -> None:
  from spt_jax.analysis import plots, runs, scaling  # pylint: disable=g-import-not-at-top
  if bool(args.runs) == bool(args.csv):
    raise ValueError('give either --runs W1 W2 ... or --csv FILE')
  data = runs.read_csv(args.csv) if args.csv else runs.scaling_data([runs.read(w) for w in args.runs])
  fit = scaling.fit_joint(data, loss=args.loss, huber=args.huber, bootstrap=args.bootstrap, seed=args.seed,
                         max_delta=args.max_delta, max_tokens=args.max_tokens)
  law = scaling.law_from_fit(fit)
  lines = ['| parameter | value | 95% CI | meaning |', '|---|---|---|---|']
  for name, entry in fit['params'].items():
    ci = entry['ci95']
    ci_text = f'[{ci[0]:.4g}, {ci[1]:.4g}]' if ci else '—'
    lines.append(f'| {name} | {entry["value"]:.4g} | {ci_text} | {entry["meaning"]} |')
  residuals = fit['residuals']
  lines.append(f'\nResiduals (log loss, RMS): train {residuals["rms_log_train"]:.4f}, test '
               f'{residuals["rms_log_test"]:.4f}, max |r| {residuals["max_abs_log"]:.4f} over '
               f'{residuals["n_points"]} points; tokens unit {fit["tokens_unit"]:g}; δ in percent inside formulas.')
  table = '\n'.join(lines)
  print(table)
  for note in fit['warnings']:
    print(f'warning: {note}', file=sys.stderr)
  os.makedirs(args.out, exist_ok=True)
  path = _write(args.out, 'fit.json', fit)
  plots.fit_plot(data, law, os.path.join(args.out, 'fit.png'))
  _report(args.out, 'Overfitting scaling-law fit',
          [table, '![data vs fit](fit.png)', _warnings_section(fit['warnings'])])
  print(f'wrote {path}')


def _load_law(path: str):
  from spt_jax.analysis import scaling  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise ValueError(f'fit file {path} does not exist; make one with `python -m spt_jax.plan fit --out DIR`')
  with open(path) as f:
    return scaling.law_from_fit(json.load(f))


def cmd_forecast(args) -> None:
  from spt_jax.analysis import plots, scaling  # pylint: disable=g-import-not-at-top
  law = _load_law(args.fit)
  lines = []
  for delta in args.delta:
    for tokens in args.tokens:
      lines.append(scaling.forecast(law, delta, tokens))
    onset = scaling.overfitting_onset(law, delta)
    lines.append({'delta': delta, 'overfitting_onset_tokens': onset,
                  'note': '' if onset else 'the law never overfits at this δ (gap exponent ≤ 0 or no gap)'})
  print('\n'.join(_dump(line) for line in lines))
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    _write(args.out, 'forecast.jsonl', '\n'.join(_dump(line) for line in lines) + '\n')
    low = min(min(args.tokens), law.token_range[0] if law.token_range else min(args.tokens))
    plots.forecast_plot(law, args.delta, (low, max(args.tokens) * 1.5), os.path.join(args.out, 'forecast.png'))
    _report(args.out, 'Forecast', ['```\n' + '\n'.join(_dump(line) for line in lines) + '\n```',
                                   '![forecast](forecast.png)'])


def cmd_recommend(args) -> None:
  from spt_jax.analysis import plots, scaling  # pylint: disable=g-import-not-at-top
  law = _load_law(args.fit)
  if args.objective == 'post_ft' and not law.finetune_delta:
    raise ValueError('the fit has no finetuning data (eq. 7); use --objective test, or refit with pipelines')
  delta_max = args.delta_max or max(law.fitted_deltas or (0.1,))
  lines = []
  if law.fitted_deltas and delta_max > max(law.fitted_deltas):
    lines.append({'note': f'--delta_max {delta_max:g} lies beyond the fitted δ up to {max(law.fitted_deltas):g}: '
                          'extrapolated'})
  for tokens in args.tokens:
    delta, loss = scaling.best_delta(law, tokens, args.objective, delta_max)
    line = {'tokens': tokens, 'objective': args.objective, 'best_delta': delta, 'loss': loss}
    notes = scaling.extrapolation_notes(law, tokens, loss)
    if notes:
      line['notes'] = notes
    if args.candidates:
      line['best_candidate'], line['candidate_loss'] = scaling.best_delta(law, tokens, args.objective,
                                                                           candidates=args.candidates)
    lines.append(line)
  span = (min(args.tokens) / 10, max(args.tokens) * 10)
  if args.crossover:
    for found in scaling.crossovers(law, args.crossover[0], args.crossover[1], span, args.objective):
      lines.append({'crossover': list(args.crossover), **found})
  print('\n'.join(_dump(line) for line in lines))
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    _write(args.out, 'recommend.jsonl', '\n'.join(_dump(line) for line in lines) + '\n')
    budgets = np.geomspace(min(args.tokens), max(args.tokens), 25) if len(args.tokens) > 1 else args.tokens
    best = [scaling.best_delta(law, t, args.objective, delta_max)[0] for t in budgets]
    candidate_best = ([scaling.best_delta(law, t, args.objective, candidates=args.candidates)[0] for t in budgets]
                      if args.candidates else None)
    plots.optimal_delta_plot(budgets, best, os.path.join(args.out, 'optimal_delta.png'), args.candidates,
                             candidate_best)
    _report(args.out, 'Recommended δ', ['```\n' + '\n'.join(_dump(line) for line in lines) + '\n```',
                                        '![optimal δ](optimal_delta.png)'])


def cmd_cost(args) -> None:
  from spt_jax.analysis import cost, plots  # pylint: disable=g-import-not-at-top
  costs = cost.strategy_costs(cost.model_size(args.small), cost.model_size(args.large), args.pretrain_tokens,
                              args.finetune_tokens, args.seq_len, args.context)
  text = cost.format_costs(costs)
  print(_dump(costs) if args.format == 'json' else text)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    _write(args.out, 'cost.json', costs)
    plots.cost_plot(costs, os.path.join(args.out, 'cost.png'), args.max_inference_tokens)
    _report(args.out, 'Cost of the strategies', [text, '![total compute](cost.png)'])


def cmd_similarity(args) -> None:
  from spt_jax.analysis import plots, similarity  # pylint: disable=g-import-not-at-top
  if len(args.corpora) < 2:
    raise ValueError('give a reference corpus and at least one other (e.g. builtin:english builtin:coq)')
  if args.embeddings:
    missing = similarity.embedding_extra_missing()
    if missing:
      raise ValueError(missing)
  needs_tokenizer = args.tokenizer or args.embeddings or any(not c.endswith('.npy') for c in args.corpora)
  tokenizer = similarity.load_tokenizer(args.tokenizer) if needs_tokenizer else None
  corpora = [similarity.load_corpus(c, tokenizer, args.max_tokens, args.seed) for c in args.corpora]
  rows = similarity.compare(corpora[0], corpora[1:], args.embeddings, tokenizer, args.segments, args.seed)
  table = similarity.format_table(rows)
  print(_dump(rows) if args.format == 'json' else table)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    _write(args.out, 'similarity.json', rows)
    plots.similarity_plot(rows, os.path.join(args.out, 'similarity.png'))
    _report(args.out, 'Distribution similarity', [table, '![similarity](similarity.png)'])


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m spt_jax.plan', description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest='command', required=True)
  g = sub.add_parser('gains', help='relative gain, compute multiplier, gap closed, forgetting')
  g.add_argument('--npt', required=True, help='pipeline workdir of naive pretraining (δ = 0)')
  g.add_argument('--spt', required=True, nargs='+', help='pipeline workdirs of SPT runs')
  g.add_argument('--npt_large', help='pipeline workdir of a larger NPT model (for gap closed)')
  f = sub.add_parser('fit', help='fit the overfitting scaling laws (1)-(9) and the finetuning delta (7)')
  f.add_argument('--runs', nargs='+', help='run or pipeline workdirs at several δ')
  f.add_argument('--csv', help='CSV: delta,tokens,domain_train_loss,domain_test_loss[,post_ft_domain_test_loss]')
  f.add_argument('--bootstrap', type=int, default=100, help='bootstrap resamples for 95%% CIs (0: none)')
  f.add_argument('--huber', type=float, default=1e-2, help='Huber scale on log-loss residuals (--loss huber)')
  f.add_argument('--loss', choices=('mse', 'huber'), default='mse', help="mse: the paper's; huber: robust")
  f.add_argument('--max_delta', type=_delta, help='fit only runs with δ ≤ this (forecast the rest)')
  f.add_argument('--max_tokens', type=_tokens, help='fit only evaluations at ≤ this many tokens')
  f.add_argument('--seed', type=int, default=0)
  fc = sub.add_parser('forecast', help='predicted losses at (δ, T) and where each δ starts to overfit')
  fc.add_argument('--fit', required=True, help='fit.json written by `plan fit`')
  fc.add_argument('--delta', required=True, nargs='+', type=_delta)
  fc.add_argument('--tokens', required=True, nargs='+', type=_tokens)
  r = sub.add_parser('recommend', help='best δ for budgets, and where one δ overtakes another')
  r.add_argument('--fit', required=True)
  r.add_argument('--tokens', required=True, nargs='+', type=_tokens, help='pretraining budgets')
  r.add_argument('--objective', choices=('post_ft', 'test'), default='post_ft')
  r.add_argument('--delta_max', type=_delta, help='largest δ searched (default: the largest fitted)')
  r.add_argument('--candidates', nargs='+', type=_delta, help='also pick the best of these δ (e.g. 0 0.02 0.05)')
  r.add_argument('--crossover', nargs=2, type=_delta, metavar=('DELTA_A', 'DELTA_B'))
  c = sub.add_parser('cost', help='compute of SPT on a small model against finetuning a larger one')
  c.add_argument('--small', default='olmo-1b', help='model preset name or parameter count')
  c.add_argument('--large', default='olmo-3b', help='model preset name or parameter count')
  c.add_argument('--pretrain_tokens', type=_tokens, default=200e9)
  c.add_argument('--finetune_tokens', type=_tokens, default=1.5e9, help='tokens of finetuning (both strategies)')
  c.add_argument('--seq_len', type=int, default=2048)
  c.add_argument('--context', type=int, default=2048, help='average attended context at inference')
  c.add_argument('--max_inference_tokens', type=_tokens)
  s = sub.add_parser('similarity', help='n-gram JSD (and C2ST, MAUVE) of corpora against the first one')
  s.add_argument('corpora', nargs='+', help='.npy token arrays or source specs (builtin:english, files:...)')
  s.add_argument('--tokenizer', default='', help="tokenizers JSON (default for built-in corpora: OLMo's)")
  s.add_argument('--max_tokens', type=_tokens, default=1.5e6, help='tokens sampled per corpus')
  s.add_argument('--embeddings', action='store_true', help='also C2ST AUC and MAUVE (needs the similarity extra)')
  s.add_argument('--segments', type=int, default=200, help='256-token segments embedded per corpus')
  s.add_argument('--seed', type=int, default=0)
  for command in (g, f, fc, r, c, s):
    command.add_argument('--out', default='' if command is not f else '.', help='folder for plots, JSON, report')
    if command in (g, c, s):
      command.add_argument('--format', choices=('text', 'json'), default='text')
  return p


def _show_warning(message, category, filename, lineno, file=None, line=None):
  print(f'warning: {message}', file=sys.stderr)


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  if getattr(args, 'out', ''):
    os.makedirs(args.out, exist_ok=True)
  if args.command == 'similarity':
    args.max_tokens = int(args.max_tokens)
  warnings.showwarning = _show_warning
  commands = {'gains': cmd_gains, 'fit': cmd_fit, 'forecast': cmd_forecast, 'recommend': cmd_recommend,
              'cost': cmd_cost, 'similarity': cmd_similarity}
  try:
    commands[args.command](args)
  except ValueError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
