"""The paper's reported values (The Finetuner's Fallacy, arXiv 2603.16177), each with its figure or section.

Reports put these beside our measurements in a "paper" column. The numbers are held here, not read from any file
at run time. Where the paper states a direction or a claim rather than a number, `value` is None and `claim`
says it. Unless noted the setting is OLMo-1B, 200B pretraining tokens, δ ∈ {0, 0.1, 1, 2, 5}%, best finetune
over the grid with early stopping; the text does not say at which δ each headline value is taken.

  from spt_jax.analysis import paper
  paper.value('relative_gain_pct', 'musicpile')   # 2.0
  paper.entry('forecast/onset_10pct_tokens').where  # 'Fig. 13(a), §5.3'
"""

import dataclasses

DOMAINS = ('musicpile', 'proofpile', 'chempile')


@dataclasses.dataclass(frozen=True)
class PaperValue:
  """One reported number (or claim): value in `unit`, where the paper gives it, and the setting."""

  value: float | None
  unit: str
  where: str
  setting: str = ''
  claim: str = ''


def _per_domain(name: str, values: dict, unit: str, where: str, setting: str = '') -> dict:
  return {f'{name}/{domain}': PaperValue(v, unit, where, setting) for domain, v in values.items()}


VALUES: dict[str, PaperValue] = {
  # §2.2, Fig. 4: the headline at 1B, 200B tokens.
  **_per_domain(
    'relative_gain_pct',
    {'musicpile': 2.0, 'proofpile': 1.5, 'chempile': 0.8},
    '%',
    'Fig. 4 (left), §2.2',
    'G = 100·(L_NPT→FT − L_SPT→FT)/L_NPT→FT, 1B, 200B tokens',
  ),
  **_per_domain(
    'compute_multiplier',
    {'musicpile': 1.75, 'proofpile': 1.56, 'chempile': 1.40},
    '×',
    'Fig. 4 (center), §2.2',
    'NPT tokens ÷ SPT tokens to reach the same post-FT domain loss',
  ),
  **_per_domain(
    'gap_closed_pct',
    {'musicpile': 81.0, 'proofpile': 133.0, 'chempile': 23.0},
    '%',
    'Fig. 4 (right), §2.2',
    '1B SPT against the 1B-to-3B NPT gap; > 100% beats the 3B NPT',
  ),
  'one_b_spt_beats_3b_npt/proofpile': PaperValue(
    None,
    '',
    '§2.2, Fig. 4 (right)',
    '1B SPT vs 3B NPT, 200B tokens',
    'on ProofPile the 1B SPT model surpasses the 3B NPT model (133% of the gap closed); MusicPile nearly '
    'matches it (81%), ChemPile closes 23%',
  ),
  # §2.3, Fig. 5: forgetting and downstream accuracy.
  'downstream/math_mcqa_points': PaperValue(
    6.0,
    'accuracy points (up to)',
    'Fig. 5(b), §2.3, §1',
    'δ = 2% SPT vs NPT after FT, 200B tokens, MATH as 4-choice MCQA',
  ),
  'downstream/musictheorybench_points': PaperValue(
    4.0, 'accuracy points (up to)', 'Fig. 5(b), §2.3, §1', 'δ = 2% SPT vs NPT after FT, 200B tokens'
  ),
  'downstream/chembench': PaperValue(
    None, '', 'Fig. 5(b), §2.3', 'general chemistry subset, δ = 2%', 'SPT better than NPT in most pretraining budgets'
  ),
  'forgetting': PaperValue(
    None,
    '',
    'Fig. 5(a), §2.3',
    'general (Dolma) loss during FT',
    'SPT forgets less general knowledge during finetuning than NPT',
  ),
  'finetune_overfit_epochs': PaperValue(
    5.0,
    'epochs (about)',
    'Fig. 1, §2.4',
    'both SPT→FT and NPT→FT',
    'domain test loss starts rising after roughly 5 finetuning epochs',
  ),
  'general_loss_max_harmless_delta_pct': PaperValue(
    5.0, '% δ', 'App. F, §2.3', 'Dolma loss after 200B', 'general loss barely moves up to δ = 5%; degrades at 10%'
  ),
  # §3.1.1, Fig. 7: the overlap study (English-Japanese).
  'overlap/gain_at_10pct_japanese': PaperValue(
    2.0, '% G (about)', 'Fig. 7, §3.1.1', '160M LLaMA, 20B tokens, JParaCrawl parallel data as domain'
  ),
  'overlap/gain_at_0.1pct_japanese': PaperValue(5.0, '% G (about)', 'Fig. 7, §3.1.1', 'as above'),
  'overlap/japanese_shares_pct': PaperValue(
    None, '%', 'App. E.2', 'monolingual Japanese share of pretraining', 'swept over 0, 0.001, 0.01, 0.1, 1 and 10%'
  ),
  'overlap/direction': PaperValue(
    None, '', 'Fig. 7, §3.1.1', '', 'G rises as the monolingual share of the domain language falls'
  ),
  # §3.1.2, App. E: similarity metrics.
  'similarity/best_proxy': PaperValue(
    None,
    '',
    '§3.1.2, App. E.3',
    'three domains against Dolma',
    'only the NPT post-FT domain loss ranks the domains like G; JSD, MAUVE and C2ST do not',
  ),
  'similarity/c2st_auc_musicpile': PaperValue(
    0.988, 'AUC', 'App. E.3', 'MusicPile against Dolma', 'lowest C2ST AUC of the domains although MusicPile gains most'
  ),
  # §3.2, Fig. 8 (left): domain-set size and SCPT.
  'data_size/sizes_tokens': PaperValue(
    None,
    'tokens',
    'Fig. 8 (left), §3.2',
    'MusicPile subsets',
    '3M, 30M and 300M tokens at 40B, 120B and 200B pretraining tokens',
  ),
  'data_size/at_40b': PaperValue(
    None, '', 'Fig. 8 (left), §3.2', '40B tokens', 'every size gains (max G over δ > 0); the 30M subset gains most'
  ),
  'data_size/later': PaperValue(
    None,
    '',
    'Fig. 8 (left), §3.2',
    '120B and 200B tokens',
    '300M keeps gaining with budget; 3M-30M gains shrink and can turn negative',
  ),
  'data_size/scpt': PaperValue(
    0.01,
    'δ of the late stage',
    'Fig. 8 (left), §3.2',
    'NPT to 180B tokens, then 20B tokens at δ = 1%',
    'SCPT beats SPT for the 30M subset; for 3M it still overfits',
  ),
  # §3.3, Fig. 8 (right): model size.
  'model_size/sizes': PaperValue(
    None,
    '',
    '§2.1, §3.3',
    '300M, 600M, 1B, 3B on MusicPile-300M',
    "3B doubles the 1B's layers; 300M/600M halve them and shrink the widths",
  ),
  'model_size/direction': PaperValue(
    None,
    '',
    'Fig. 8 (right), §3.3',
    'NPT vs SPT at several budgets',
    'the SPT-NPT gap in post-FT loss widens with model size; largest at 3B',
  ),
  # §3.4, Fig. 9: the best δ moves with the budget (MusicPile, δ ∈ {0, 2, 5, 10}%).
  'budget/best_delta_small_budget': PaperValue(0.10, 'δ', 'Fig. 9, §3.4', 'budgets under about 30B tokens'),
  'budget/delta_10pct_degrades_from_tokens': PaperValue(50e9, 'tokens (about)', 'Fig. 9, §3.4', 'δ = 10%'),
  'budget/best_delta_at_200b': PaperValue(
    None, 'δ', 'Fig. 9, §3.4', '200B tokens', 'smaller mixtures are best (the range is lost from the text)'
  ),
  'budget/spt_beats_npt': PaperValue(
    None, '', '§3.4', 'every budget', 'with a suitable δ, SPT beats NPT at every pretraining budget'
  ),
  # §4, Fig. 10: replay.
  'replay/rates_pct': PaperValue(None, '%', 'Fig. 10, §4', 'general replay during FT', '0, 10 and 20%'),
  'replay/direction': PaperValue(
    None,
    '',
    'Fig. 10, §4',
    'MusicPile',
    'SPT→FT beats NPT→FT at every replay rate; 10% replay helps NPT, which still falls short of SPT without replay',
  ),
  # §5, Figs. 11-13: scaling laws and forecasts.
  'scaling/free_parameters': PaperValue(12.0, 'parameters per domain', '§5.1, eqs. (1)-(6)'),
  'scaling/b_gap_below_one_up_to_delta': PaperValue(
    0.10, 'δ', '§5.1', 'fitted gap exponent', 'b_gap stays in (0, 1) up to δ = 10%: sublinear overfitting'
  ),
  'forecast/fit_max_delta': PaperValue(0.05, 'δ', 'Fig. 13(a), §5.3', 'fit on δ ∈ [0, 5]%'),
  'forecast/curve_10pct': PaperValue(
    None,
    '',
    'Fig. 13(a), §5.3',
    'fit on δ ≤ 5%, forecast of the 10% curve to 200B',
    'the fit on δ ≤ 5% predicts the whole 10% curve to 200B tokens (no error figure given)',
  ),
  'forecast/onset_10pct_tokens': PaperValue(
    70e9,
    'tokens (about)',
    'Fig. 13(a), §5.3',
    'fit on δ ≤ 5%, forecast of the 10% curve to 200B',
    'the forecast 10% curve starts to overfit near it',
  ),
  'forecast/post_ft_fit_max_tokens': PaperValue(
    120e9, 'tokens', 'Fig. 13(b), §5.3', 'post-FT loss extrapolated beyond 120B tokens'
  ),
  'forecast/crossover_2pct_over_5pct_tokens': PaperValue(
    280e9, 'tokens (about)', 'Fig. 13(b), §5.3', 'δ = 2% overtakes δ = 5% after finetuning'
  ),
  # §6, Fig. 3: cost.
  'cost/break_even_inference_tokens': PaperValue(
    1e12, 'tokens (about)', 'Fig. 3, §6', '1B SPT vs finetuning a 3B model', 'SPT is cheaper after it'
  ),
}


def entry(key: str, domain: str = '') -> PaperValue:
  """The PaperValue of key (or key/domain); a one-line error names the close keys."""
  full = f'{key}/{domain}' if domain else key
  if full not in VALUES:
    close = sorted(k for k in VALUES if k.split('/')[0] == full.split('/')[0]) or sorted(VALUES)[:8]
    raise KeyError(f'no paper value {full!r}; known: {", ".join(close)}')
  return VALUES[full]


def value(key: str, domain: str = '') -> float | None:
  """The number the paper reports for key (None where it states only a claim)."""
  return entry(key, domain).value


def beats_larger_model(domain: str) -> bool:
  """The 1B-vs-3B claim (§2.2): does the paper's 1B SPT beat its 3B NPT on this domain (gap closed > 100%)?"""
  return value('gap_closed_pct', domain) > 100.0


def cell(key: str, domain: str = '', digits: int = 3) -> str:
  """Markdown for a report's paper column: the number with its unit, the claim, and the source."""
  item = entry(key, domain)
  if item.value is None:
    return f'{item.claim} ({item.where})'
  unit = item.unit if item.unit in ('%', '×') else f' {item.unit}' if item.unit else ''
  claim = f': {item.claim}' if item.claim else ''
  return f'{item.value:.{digits}g}{unit}{claim} ({item.where})'
