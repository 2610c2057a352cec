"""Export a run's checkpoint as a Hugging Face OLMo directory, and load any model this package can read.

CLI: python -m spt_jax.export --checkpoint C --out DIR
C: a run workdir (its latest checkpoint; a finetune run's best), its checkpoints/ folder, or one step folder.
The run's config.json gives the model config, the tokenizer and the context length.
"""

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import tokenizers
from absl import flags

from spt_jax import cli
from spt_jax.interop import hf
from spt_jax.model import decoder as model_lib
from spt_jax.storage import bucket, layout
from spt_jax.train import checkpoint as checkpoint_lib
from spt_jax.train import config as config_lib


@dataclasses.dataclass
class LoadedModel:
  params: Any
  model_cfg: model_lib.ModelConfig
  tokenizer: Any  # tokenizers.Tokenizer
  seq_len: int  # The context the model was trained at.
  source: str  # The step folder or HF directory read.


def find_run_config(path: str) -> tuple[str, dict]:
  """(workdir, its config.json) for a workdir, its checkpoints/ folder or a step folder inside it (local or in a
  store: gs://...)."""
  path = path if bucket.is_url(path) else os.path.abspath(os.path.expanduser(path))
  candidate = path
  for _ in range(3):
    config = checkpoint_lib.read_config(candidate)
    if config is not None and 'model' in config:
      return candidate, config
    candidate = os.path.dirname(candidate)
  raise ValueError(
    f'no run config.json at or above {path}; point --checkpoint at a run workdir (or a checkpoint '
    'inside one) or a Hugging Face OLMo directory.'
  )


def _abstract_params(model_cfg):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), nn.unbox(model_lib.abstract_params(model_cfg))
  )


def load_checkpoint(path: str, tokenizer_required: bool = True) -> LoadedModel:
  """Parameters, model config, tokenizer and context of a run checkpoint or a Hugging Face OLMo directory."""
  from spt_jax.data import tokenizer as tokenizer_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  if bucket.is_url(path):  # A run whose workdir is a bucket: its checkpoints and config are there.
    bucket.orbax_through_fsspec()
  else:
    path = os.path.abspath(os.path.expanduser(path))
  if not bucket.exists(path):
    raise ValueError(
      f'--checkpoint {path} does not exist; point it at a run workdir, a checkpoint folder or a '
      'Hugging Face OLMo directory.'
    )
  if hf.is_hf_dir(path):
    params, model_cfg = hf.import_hf(path)
    tokenizer = hf.load_tokenizer(path)
    if tokenizer is None and tokenizer_required:
      raise ValueError(f"{path} has no {hf.TOKENIZER_FILE}; add the model's tokenizer.json to the directory.")
    seq_len = int(hf.read_hf_config(path).get('max_position_embeddings', 2048))
    return LoadedModel(params, model_cfg, tokenizer, seq_len, path)
  workdir, config = find_run_config(path)
  config = config_lib.saved(config)
  model_cfg = config.model
  tokenizer = None
  if tokenizer_required:  # The run's own copy; else rebuild it from the config (a BPE needs its data here).
    saved = os.path.join(workdir, layout.TOKENIZER)
    if bucket.exists(saved):
      tokenizer = tokenizers.Tokenizer.from_str(bucket.read_text(saved))
    else:
      tokenizer = tokenizer_lib.load_tokenizer(config.data)
  if tokenizer is not None and tokenizer.get_vocab_size() > model_lib.padded_vocab_size(model_cfg):
    raise ValueError(
      f"the run's tokenizer has {tokenizer.get_vocab_size()} tokens but its model "
      f'{model_cfg.vocab_size}; check data.tokenizer in {workdir}/config.json.'
    )
  # One check of the step (a damaged one falls back to an older one) and one read of it.
  params, step_dir = checkpoint_lib.restore_params_from(path, _abstract_params(model_cfg))
  if not model_cfg.tie_embeddings and 'lm_head' not in params:
    params = model_lib.untie(params)
  return LoadedModel(params, model_cfg, tokenizer, int(config.data.seq_len), step_dir)


def export(checkpoint: str, out_dir: str) -> str:
  """Writes the checkpoint's model and tokenizer as an HF OLMo directory; returns out_dir."""
  loaded = load_checkpoint(checkpoint)
  if os.path.abspath(out_dir) == loaded.source:
    raise ValueError(f'--out {out_dir} is the checkpoint itself; choose another folder.')
  return hf.export_hf(
    loaded.params, loaded.model_cfg, loaded.tokenizer, out_dir, max_position_embeddings=loaded.seq_len
  )


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The CLI's flags (defined on use, so that importing this module as a library defines none)."""
  flags.DEFINE_string('checkpoint', None, 'Run workdir, checkpoints folder or step folder.', required=True)
  flags.DEFINE_string('out', None, 'Output Hugging Face model directory.', required=True)
  cli.must_exist('checkpoint', 'point it at a run workdir, a checkpoint folder or a Hugging Face OLMo directory')


def main(argv) -> None:
  del argv
  out = export(FLAGS.checkpoint, FLAGS.out)
  print(f'wrote {out} (load it with transformers.AutoModelForCausalLM.from_pretrained)')


def run() -> None:
  cli.run(main, _define_flags)


if __name__ == '__main__':
  run()
