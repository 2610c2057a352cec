"""Conversion between our parameters and a Hugging Face `transformers` OLMo directory (OlmoForCausalLM).

The directory holds config.json (model_type 'olmo'), model.safetensors (or shards listed in
model.safetensors.index.json) and the tokenizer files. Import needs neither torch nor transformers: safetensors
files are read (memory-mapped) and written with the `safetensors` library's numpy API, which lays the same
tensors out as the same bytes (the round trip import -> export is bit-exact).
"""

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import safetensors
from safetensors import numpy as safetensors_numpy

from spt_jax.model import decoder as model_lib
from spt_jax.storage import layout

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
TOKENIZER_FILE = 'tokenizer.json'
# transformers' OlmoLayerNorm hard-codes this epsilon.
HF_LAYER_NORM_EPS = 1e-5
# Per-layer projections: HF stores each as an [out, in] matrix of our [in, out] kernel (heads flattened).
_ATTENTION = ('q', 'k', 'v')
_MLP_IN = ('gate', 'up')


class HfFormatError(ValueError):
  """A directory that is not a Hugging Face OLMo model we can convert (one-line message)."""


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a .safetensors file as a numpy array (the safetensors library, memory-mapped)."""
  try:
    return safetensors_numpy.load_file(path)
  except (safetensors.SafetensorError, OSError) as error:
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise HfFormatError(
      f'{path} cannot be read as safetensors ({first_line}): the file is truncated or corrupt, '
      'download or save it again.'
    ) from error


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
  """Writes tensors atomically with the safetensors library (same tensors, same bytes)."""
  arrays = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
  partial = f'{path}.tmp{os.getpid()}'
  safetensors_numpy.save_file(arrays, partial, metadata=dict(metadata) if metadata else None)
  os.replace(partial, path)


def read_weights(directory: str) -> dict[str, np.ndarray]:
  """All tensors of an HF model directory: model.safetensors or the shards of its index."""
  index_path = os.path.join(directory, INDEX_FILE)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f)['weight_map']
    tensors = {}
    for shard in sorted(set(weight_map.values())):
      tensors.update(read_safetensors(os.path.join(directory, shard)))
    return tensors
  path = os.path.join(directory, WEIGHTS_FILE)
  if not os.path.isfile(path):
    found = sorted(name for name in os.listdir(directory) if name.endswith(('.bin', '.pt', '.pth', '.ckpt')))
    hint = (
      f'it has {found[0]}: re-save it with save_pretrained(dir, safe_serialization=True)'
      if found
      else 'download the model with its safetensors weights'
    )
    raise HfFormatError(f'{directory} has no {WEIGHTS_FILE} or {INDEX_FILE}; {hint}.')
  return read_safetensors(path)


def is_hf_dir(path: str) -> bool:
  """Whether path is a directory with an HF config.json (a `model_type` key) and no run checkpoints."""
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path) or os.path.isdir(os.path.join(path, layout.CHECKPOINTS)):
    return False
  try:
    with open(config_path) as f:
      return 'model_type' in json.load(f)
  except (OSError, ValueError):
    return False


def read_hf_config(directory: str) -> dict:
  """config.json of an HF directory, checked to be an OLMo (v1) architecture we can represent."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise HfFormatError(f'{directory} has no {CONFIG_FILE}; point at a Hugging Face model directory.')
  with open(path) as f:
    hf = json.load(f)
  model_type = hf.get('model_type')
  if model_type != 'olmo':
    raise HfFormatError(
      f'{directory} holds a {model_type!r} model; only model_type "olmo" (OlmoForCausalLM: '
      'non-parametric LayerNorm, RoPE, SwiGLU) converts to this decoder.'
    )
  heads = hf['num_attention_heads']
  problems = []
  if hf.get('num_key_value_heads') not in (None, heads):
    problems.append(f'num_key_value_heads={hf["num_key_value_heads"]} (grouped-query attention)')
  if hf.get('hidden_act', 'silu') != 'silu':
    problems.append(f'hidden_act={hf["hidden_act"]!r}')
  if hf.get('attention_bias'):
    problems.append('attention_bias=true')
  if hf.get('clip_qkv') is not None:
    problems.append(f'clip_qkv={hf["clip_qkv"]}')
  rope_type = (
    (hf.get('rope_parameters') or {}).get('rope_type')
    or (hf.get('rope_scaling') or {}).get('rope_type')
    or (hf.get('rope_scaling') or {}).get('type')
    or 'default'
  )
  if rope_type != 'default':
    problems.append(f'rope_type={rope_type!r}')
  if hf['hidden_size'] % heads:
    problems.append(f'hidden_size {hf["hidden_size"]} not divisible by {heads} heads')
  if hf['vocab_size'] % 128:
    problems.append(f'vocab_size={hf["vocab_size"]} (this decoder pads the vocabulary to a multiple of 128)')
  if problems:
    raise HfFormatError(
      f'{directory}: this decoder cannot represent {", ".join(problems)}; convert a plain OLMo model.'
    )
  return hf


def _rope_theta(hf: dict) -> float:
  return float((hf.get('rope_parameters') or {}).get('rope_theta', hf.get('rope_theta', 10_000.0)))


def model_config_from_hf(hf: dict, vocab_size: int | None = None) -> model_lib.ModelConfig:
  """Our model config for an HF OLMo config; vocab_size: the tokenizer's (default: the embedding rows)."""
  rows = hf['vocab_size']
  cfg = model_lib.ModelConfig(
    vocab_size=vocab_size or rows,
    d_model=hf['hidden_size'],
    n_layers=hf['num_hidden_layers'],
    n_heads=hf['num_attention_heads'],
    mlp_dim=hf['intermediate_size'],
    rope_theta=_rope_theta(hf),
    layer_norm_eps=HF_LAYER_NORM_EPS,
    preset='hf',
    tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
    init_std=float(hf.get('initializer_range', 0.02)),
  )
  if model_lib.padded_vocab_size(cfg) != rows:
    cfg = dataclasses.replace(cfg, vocab_size=rows)
  for name, preset in model_lib.PRESETS.items():
    if all(getattr(cfg, key) == value for key, value in preset.items()):
      cfg = dataclasses.replace(cfg, preset=name)
  return cfg


def hf_config(model_cfg, tokenizer=None, max_position_embeddings: int = 2048) -> dict:
  """The config.json of an OlmoForCausalLM equivalent to model_cfg."""
  if abs(model_cfg.layer_norm_eps - HF_LAYER_NORM_EPS) > 1e-12:
    raise ValueError(
      f"layer_norm_eps={model_cfg.layer_norm_eps}, but transformers' OLMo fixes it at "
      f'{HF_LAYER_NORM_EPS}; only models with that epsilon export.'
    )
  eos = pad = None
  if tokenizer is not None:
    from spt_jax.data import tokenizer as tokenizer_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    eos = tokenizer_lib.eos_id(tokenizer)
    pad = tokenizer.token_to_id('<|padding|>')
  theta = float(model_cfg.rope_theta)
  return {
    'architectures': ['OlmoForCausalLM'],
    'attention_bias': False,
    'attention_dropout': 0.0,
    'bos_token_id': None,
    'clip_qkv': None,
    'eos_token_id': eos,
    'hidden_act': 'silu',
    'hidden_size': int(model_cfg.d_model),
    'initializer_range': float(model_cfg.init_std),
    'intermediate_size': int(model_cfg.mlp_dim),
    'max_position_embeddings': int(max_position_embeddings),
    'model_type': 'olmo',
    'num_attention_heads': int(model_cfg.n_heads),
    'num_hidden_layers': int(model_cfg.n_layers),
    'num_key_value_heads': int(model_cfg.n_heads),
    'pad_token_id': eos if pad is None else pad,
    # transformers >= 5 reads rope_parameters; older releases read rope_theta.
    'rope_parameters': {'rope_theta': theta, 'rope_type': 'default'},
    'rope_theta': theta,
    'tie_word_embeddings': bool(model_cfg.tie_embeddings),
    'torch_dtype': 'float32',
    'use_cache': True,
    'vocab_size': model_lib.padded_vocab_size(model_cfg),
  }


def _layers(params, n_layers: int) -> list[dict]:
  """Per-layer parameter dicts (numpy) from scanned ('blocks') or unrolled ('block_i') parameters."""
  if 'blocks' in params:
    blocks = jax.tree.map(np.asarray, params['blocks'])
    return [jax.tree.map(lambda x, i=i: x[i], blocks) for i in range(n_layers)]
  return [jax.tree.map(np.asarray, params[f'block_{i}']) for i in range(n_layers)]


def params_to_hf(params, model_cfg) -> dict[str, np.ndarray]:
  """Our parameter tree -> HF OLMo state dict (numpy, [out, in] weights)."""
  params = jax.device_get(params)
  d_model = model_cfg.d_model
  tensors = {'model.embed_tokens.weight': np.asarray(params['embed']['embedding'])}
  for i, layer in enumerate(_layers(params, model_cfg.n_layers)):
    prefix = f'model.layers.{i}.'
    for name in _ATTENTION:
      tensors[f'{prefix}self_attn.{name}_proj.weight'] = layer[name]['kernel'].reshape(d_model, -1).T
    tensors[f'{prefix}self_attn.o_proj.weight'] = layer['o']['kernel'].reshape(-1, d_model).T
    for name in _MLP_IN + ('down',):
      tensors[f'{prefix}mlp.{name}_proj.weight'] = layer[name]['kernel'].T
  if model_cfg.tie_embeddings and 'lm_head' in params:
    raise ValueError('the parameters have an untied lm_head but the model config is tied; set tie_embeddings=False.')
  if not model_cfg.tie_embeddings:
    if 'lm_head' not in params:
      raise ValueError(
        'the model config is untied but the parameters have no lm_head; untie them first '
        '(model.untie) or set tie_embeddings=True.'
      )
    tensors['lm_head.weight'] = np.asarray(params['lm_head']['kernel']).T
  return {name: np.ascontiguousarray(array) for name, array in tensors.items()}


def _expected_shapes(model_cfg) -> dict[str, tuple[int, ...]]:
  d, f, v = model_cfg.d_model, model_cfg.mlp_dim, model_lib.padded_vocab_size(model_cfg)
  shapes = {'model.embed_tokens.weight': (v, d)}
  for i in range(model_cfg.n_layers):
    prefix = f'model.layers.{i}.'
    shapes.update({f'{prefix}self_attn.{n}_proj.weight': (d, d) for n in _ATTENTION + ('o',)})
    shapes.update({f'{prefix}mlp.{n}_proj.weight': (f, d) for n in _MLP_IN})
    shapes[f'{prefix}mlp.down_proj.weight'] = (d, f)
  if not model_cfg.tie_embeddings:
    shapes['lm_head.weight'] = (v, d)
  return shapes


def check_hf_tensors(tensors: dict, model_cfg, where: str) -> None:
  """One-line error unless the state dict has exactly the shapes model_cfg needs (ignoring rotary buffers)."""
  expected = _expected_shapes(model_cfg)
  found = {k: tuple(v.shape) for k, v in tensors.items() if not k.endswith('rotary_emb.inv_freq')}
  if model_cfg.tie_embeddings and 'lm_head.weight' in found:
    # Some writers store the tied head anyway: accept it only if it is the embedding.
    if not np.array_equal(tensors['lm_head.weight'], tensors.get('model.embed_tokens.weight')):
      raise HfFormatError(
        f'{where}: tie_word_embeddings is true but lm_head.weight differs from the embedding; '
        'set tie_word_embeddings to false in config.json.'
      )
    found.pop('lm_head.weight')
  differences = model_lib.shape_differences(expected, found, 'safetensors file', limit=3)
  if differences:
    raise HfFormatError(
      f'{where}: weights do not match config.json ({differences}); '
      'the directory holds another architecture or a corrupt checkpoint.'
    )


def params_from_hf(tensors: dict, model_cfg, dtype=np.float32) -> dict:
  """HF OLMo state dict -> our parameter tree (scanned or unrolled as model_cfg.scan_layers), as numpy."""
  d, heads = model_cfg.d_model, model_cfg.n_heads
  head_dim = d // heads

  def cast(x):
    return np.asarray(x, dtype=dtype)

  layers = []
  for i in range(model_cfg.n_layers):
    prefix = f'model.layers.{i}.'
    layer = {
      name: {'kernel': cast(tensors[f'{prefix}self_attn.{name}_proj.weight'].T.reshape(d, heads, head_dim))}
      for name in _ATTENTION
    }
    layer['o'] = {'kernel': cast(tensors[f'{prefix}self_attn.o_proj.weight'].T.reshape(heads, head_dim, d))}
    for name in _MLP_IN + ('down',):
      layer[name] = {'kernel': cast(tensors[f'{prefix}mlp.{name}_proj.weight'].T)}
    layers.append(layer)
  params = {'embed': {'embedding': cast(tensors['model.embed_tokens.weight'])}}
  if model_cfg.scan_layers:
    params['blocks'] = jax.tree.map(lambda *x: np.stack(x), *layers)
  else:
    params.update({f'block_{i}': layer for i, layer in enumerate(layers)})
  if not model_cfg.tie_embeddings:
    params['lm_head'] = {'kernel': cast(tensors['lm_head.weight'].T)}
  return params


def load_tokenizer(directory: str):
  """The directory's tokenizer.json as a `tokenizers.Tokenizer` (None when absent)."""
  path = os.path.join(directory, TOKENIZER_FILE)
  if not os.path.isfile(path):
    return None
  import tokenizers  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  return tokenizers.Tokenizer.from_file(path)


def import_hf(directory: str, scan_layers: bool = True) -> tuple[dict, model_lib.ModelConfig]:
  """(params as float32 numpy, model config) of an HF OLMo directory; needs neither torch nor transformers."""
  directory = os.path.abspath(os.path.expanduser(directory))
  if not os.path.isdir(directory):
    raise HfFormatError(f'{directory} is not a directory; point at a Hugging Face model directory.')
  hf = read_hf_config(directory)
  tokenizer = load_tokenizer(directory)
  model_cfg = model_config_from_hf(hf, tokenizer.get_vocab_size() if tokenizer is not None else None)
  model_cfg = dataclasses.replace(model_cfg, scan_layers=scan_layers)
  tensors = read_weights(directory)
  check_hf_tensors(tensors, model_cfg, directory)
  return params_from_hf(tensors, model_cfg), model_cfg


def _tokenizer_files(tokenizer, max_length: int) -> dict[str, dict | str]:
  """tokenizer.json plus the two small files transformers' PreTrainedTokenizerFast reads beside it."""
  from spt_jax.data import tokenizer as tokenizer_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  eos = tokenizer.id_to_token(tokenizer_lib.eos_id(tokenizer))
  pad = '<|padding|>' if tokenizer.token_to_id('<|padding|>') is not None else eos
  special = {'eos_token': eos, 'pad_token': pad}
  tokenizer_config = dict(
    special,
    add_bos_token=False,
    add_eos_token=False,
    bos_token=None,
    clean_up_tokenization_spaces=False,
    model_max_length=int(max_length),
    tokenizer_class='PreTrainedTokenizerFast',
    unk_token=None,
  )
  return {
    TOKENIZER_FILE: tokenizer.to_str(),
    'tokenizer_config.json': tokenizer_config,
    'special_tokens_map.json': special,
  }


def export_hf(params, model_cfg, tokenizer, out_dir: str, max_position_embeddings: int = 2048) -> str:
  """Writes an HF OLMo directory (config.json, model.safetensors, tokenizer files); returns out_dir.

  tokenizer: a `tokenizers.Tokenizer` (or None to write the model alone). max_position_embeddings: the context
  the model was trained at (RoPE has no hard limit; serving stacks read it as the maximum length).
  """
  if tokenizer is not None and tokenizer.get_vocab_size() > model_lib.padded_vocab_size(model_cfg):
    raise ValueError(
      f'the tokenizer has {tokenizer.get_vocab_size()} tokens but the model only '
      f"{model_lib.padded_vocab_size(model_cfg)} embeddings; export with the run's own tokenizer."
    )
  config = hf_config(model_cfg, tokenizer, max_position_embeddings)
  tensors = params_to_hf(params, model_cfg)
  check_hf_tensors(tensors, model_cfg, 'export')
  tensors = {name: array.astype(np.float32) for name, array in tensors.items()}
  os.makedirs(out_dir, exist_ok=True)
  files: dict[str, Any] = {CONFIG_FILE: config}
  if tokenizer is not None:
    files.update(_tokenizer_files(tokenizer, max_position_embeddings))
  for name, content in files.items():
    text = content if isinstance(content, str) else json.dumps(content, indent=2, sort_keys=True) + '\n'
    with open(os.path.join(out_dir, name), 'w', encoding='utf-8') as f:
      f.write(text)
  write_safetensors(os.path.join(out_dir, WEIGHTS_FILE), tensors, metadata={'format': 'pt'})
  if os.path.exists(os.path.join(out_dir, INDEX_FILE)):  # A stale shard index would shadow the new weights.
    os.remove(os.path.join(out_dir, INDEX_FILE))
  return out_dir


def load_for_init(directory: str, abstract_params) -> Any:
  """Parameters of an HF directory placed like abstract_params (ShapeDtypeStructs with shardings): for init_from.

  Shapes are checked against the model before any array is read; an untied model gets the head it needs from
  an untied HF model (or none from a tied one: the caller unties, as for our own checkpoints).
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  hf = read_hf_config(directory)
  model_cfg = dataclasses.replace(model_config_from_hf(hf), scan_layers='blocks' in abstract_params)
  tensors = read_weights(directory)
  check_hf_tensors(tensors, model_cfg, directory)
  params = params_from_hf(tensors, model_cfg)
  if 'lm_head' in params and 'lm_head' not in abstract_params:
    raise HfFormatError(
      f'init_from={directory} has an untied output head but the model is tied; set --config.model.tie_embeddings=False.'
    )
  wanted = {k: v for k, v in abstract_params.items() if k in params or k != 'lm_head'}
  model_shapes = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(wanted)}
  have_shapes = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
  if model_shapes != have_shapes:
    differing = sorted(k for k in set(model_shapes) | set(have_shapes) if model_shapes.get(k) != have_shapes.get(k))
    first = differing[0]
    raise HfFormatError(
      f'init_from={directory} holds a model of another shape ({first}: HF '
      f'{have_shapes.get(first)} vs model {model_shapes.get(first)}); set the model config to '
      'match its config.json.'
    )
  return jax.tree.map(lambda x, a: jax.device_put(x.astype(a.dtype), getattr(a, 'sharding', None)), params, wanted)
