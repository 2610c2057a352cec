"""Appendix E: how far each built-in domain is from the general text (n-gram JSD; C2ST and MAUVE with the
similarity extra installed and --embeddings).

  python -m experiments.similarity --workdir=runs/similarity
"""

from absl import flags

from experiments import common

_DOMAINS = flags.DEFINE_list('domains', 'builtin:coq,builtin:abc,builtin:moses', 'Domain source specs.')
_EMBEDDINGS = flags.DEFINE_bool('embeddings', False, 'Also the classifier two-sample test and MAUVE.')


def main(argv):
  del argv
  domains = [d if d.startswith('builtin:') or ':' in d else f'builtin:{d}' for d in _DOMAINS.value]
  common.analyse('similarity', corpora=['builtin:english', *domains], embeddings=_EMBEDDINGS.value)


if __name__ == '__main__':
  common.run(main)
